//! Chains: for one side-effect span, who caused it — user, agents, tool, credentials, API hops.
//!
//! A chain is a pure function of the trace's spans (and, for a linked consumer, of the producer
//! trace's), so stitching the same spans again gives the same rows: the basis of revisions and
//! of exactly-once after a restart.

use std::hash::{Hash, Hasher};

use super::span::{CredentialFacts, LineageSpan, SpanId, TraceId};
use super::trace::{Trace, resource_id, token_user};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApiHop {
    pub span_id: String,
    pub service: Option<String>,
    pub method: Option<String>,
    pub route: Option<String>,
    pub credential_fp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathNode {
    pub kind: &'static str,
    pub id: String,
    pub span_id: Option<String>,
}

/// One row of the `chains` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ChainRow {
    pub trace_id: String,
    pub effect_span_id: String,
    pub revision: u32,
    pub time: i64,
    pub effect_kind: &'static str,
    pub effect_operation: Option<String>,
    pub effect_target: Option<String>,
    pub effect_is_write: bool,
    pub effect_service: Option<String>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub agents: Vec<String>,
    pub tool_name: Option<String>,
    pub tool_call_id: Option<String>,
    pub credential_fp: Option<String>,
    pub credential_kind: Option<&'static str>,
    /// The other credentials on the path, outermost first: with `credential_fp`, every
    /// credential the chain went through, so one credential's chains are found by two scalar
    /// and narrow columns rather than by unnesting every path.
    pub upstream_credentials: Vec<String>,
    pub token_scopes: Vec<String>,
    pub token_actors: Vec<String>,
    pub api_hops: Vec<ApiHop>,
    pub path: Vec<PathNode>,
    pub consumer_class: &'static str,
    pub attributed: bool,
    pub missing: Vec<String>,
    pub linked_trace_ids: Vec<String>,
}

impl ChainRow {
    /// Hash of everything but the revision: a re-stitch writes a new revision only when this
    /// changes.
    pub fn content_hash(&self) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        let mut unrevised = self.clone();
        unrevised.revision = 0;
        unrevised.hash(&mut hasher);
        hasher.finish()
    }
}

/// Who stands at the head of a span's ancestry: what a linked consumer borrows from its
/// producer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Head {
    pub user: Option<(String, SpanId)>,
    pub session_id: Option<String>,
    /// Outermost first.
    pub agents: Vec<(String, SpanId)>,
}

impl Head {
    fn is_empty(&self) -> bool {
        self.user.is_none() && self.agents.is_empty()
    }
}

/// The head of the chain through `ancestry` (root-most first): the nearest user (from the spans,
/// else from the subject of a presented token), the outermost session, the agents outermost first
/// (from the spans, else from the act chain of the nearest token).
pub fn head_of(trace: &Trace<'_>, ancestry: &[usize]) -> Head {
    let spans = trace.spans;
    let nearest = |f: &dyn Fn(usize) -> Option<String>| {
        ancestry
            .iter()
            .rev()
            .find_map(|&j| f(j).map(|v| (v, spans[j].span_id)))
    };
    let token = nearest_credential(trace, ancestry);
    let user = nearest(&|j| spans[j].user_id().map(str::to_string)).or_else(|| {
        ancestry.iter().rev().find_map(|&j| {
            let user = token_user(spans[j].credential()?)?;
            Some((user.to_string(), spans[j].span_id))
        })
    });
    // The session of the initiating human: the outermost one (an MCP or agent conversation
    // nearer the effect is a session of the agents, not of the user).
    let session_id = ancestry
        .iter()
        .find_map(|&j| spans[j].facts()?.session_id.clone());
    let mut agents: Vec<(String, SpanId)> = Vec::new();
    for &j in ancestry {
        if let Some(agent) = spans[j].agent()
            && agents.last().is_none_or(|(last, _)| last != agent)
        {
            agents.push((agent.to_string(), spans[j].span_id));
        }
    }
    if agents.is_empty()
        && let Some((credential, span)) = token
    {
        agents = credential
            .actors
            .iter()
            .rev()
            .map(|a| (a.clone(), spans[span].span_id))
            .collect();
    }
    Head {
        user,
        session_id,
        agents,
    }
}

/// The credentials of `path` other than `nearest`, outermost first, each once.
fn upstream_credentials(path: &[PathNode], nearest: Option<&CredentialFacts>) -> Vec<String> {
    let nearest = nearest.map(|c| c.fingerprint.as_str());
    let mut upstream: Vec<String> = Vec::new();
    for node in path.iter().filter(|n| n.kind == "credential") {
        if Some(node.id.as_str()) != nearest && !upstream.contains(&node.id) {
            upstream.push(node.id.clone());
        }
    }
    upstream
}

/// The credential presented closest to the end of `ancestry`, with the span that carried it.
fn nearest_credential<'a>(
    trace: &Trace<'a>,
    ancestry: &[usize],
) -> Option<(&'a CredentialFacts, usize)> {
    let spans: &'a [LineageSpan] = trace.spans;
    ancestry
        .iter()
        .rev()
        .find_map(|&j| spans[j].credential().map(|c| (c, j)))
}

/// The head of span `span_id` in one trace's `spans`, if the span is among them: what a chain
/// linked to it takes.
pub fn head_of_span(trace_id: &TraceId, spans: &[LineageSpan], span_id: &SpanId) -> Option<Head> {
    let trace = Trace::new(*trace_id, spans);
    let at = trace.find(span_id)?;
    Some(head_of(&trace, &trace.ancestry(at).spans))
}

/// Looks up the head of a span in another trace (a span link's target), if that trace is known.
pub trait LinkResolver {
    fn head_of_linked(&self, trace_id: &TraceId, span_id: &SpanId) -> Option<Head>;
}

impl LinkResolver for () {
    fn head_of_linked(&self, _: &TraceId, _: &SpanId) -> Option<Head> {
        None
    }
}

/// Builds the chain of every side-effect span in the trace, in span order.
pub fn build_chains(trace: &Trace<'_>, links: &dyn LinkResolver) -> Vec<ChainRow> {
    (0..trace.spans.len())
        .filter(|&i| trace.is_canonical(i) && trace.is_side_effect(i))
        .filter_map(|i| build_chain(trace, i, links))
        .collect()
}

fn build_chain(trace: &Trace<'_>, i: usize, links: &dyn LinkResolver) -> Option<ChainRow> {
    let spans = trace.spans;
    let effect_span = &spans[i];
    let effect = effect_span.effect()?;
    let ancestry = trace.ancestry(i);
    let path_spans = &ancestry.spans;
    let hex_id = |id: &SpanId| hex::encode(id);

    let mut linked_trace_ids: Vec<String> = Vec::new();
    let mut first_link = None;
    for &j in path_spans {
        for (linked_trace, linked_span) in spans[j].facts().map_or(&[][..], |f| &f.links[..]) {
            if linked_trace != &trace.trace_id {
                first_link.get_or_insert((*linked_trace, *linked_span));
                linked_trace_ids.push(hex::encode(linked_trace));
            }
        }
    }
    linked_trace_ids.sort();
    linked_trace_ids.dedup();

    let mut head = head_of(trace, path_spans);
    if head.is_empty()
        && let Some((t, s)) = first_link
        && let Some(linked) = links.head_of_linked(&t, &s)
    {
        head = linked;
    }
    let credential = nearest_credential(trace, path_spans);

    let tool = path_spans
        .iter()
        .rev()
        .find_map(|&j| spans[j].facts()?.tool_name.clone());
    let tool_call_id = path_spans
        .iter()
        .rev()
        .find_map(|&j| spans[j].facts()?.tool_call_id.clone());

    let mut path = Vec::new();
    if let Some((user, span)) = &head.user {
        path.push(PathNode {
            kind: "user",
            id: user.clone(),
            span_id: Some(hex_id(span)),
        });
    }
    for (agent, span) in &head.agents {
        path.push(PathNode {
            kind: "agent",
            id: agent.clone(),
            span_id: Some(hex_id(span)),
        });
    }
    let mut api_hops = Vec::new();
    let mut last_credential: Option<&str> = None;
    for &j in path_spans {
        let span = &spans[j];
        if let Some(c) = span.credential()
            && last_credential != Some(c.fingerprint.as_str())
        {
            last_credential = Some(&c.fingerprint);
            path.push(PathNode {
                kind: "credential",
                id: c.fingerprint.clone(),
                span_id: Some(hex_id(&span.span_id)),
            });
        }
        if j != i && trace.is_hop(j) {
            let api = span.api();
            api_hops.push(ApiHop {
                span_id: hex_id(&span.span_id),
                service: span.service.as_deref().map(str::to_string),
                method: api.and_then(|a| a.method.clone()),
                route: api.and_then(|a| a.route.clone()),
                credential_fp: trace.hop_credential(j).map(|c| c.fingerprint.clone()),
            });
            path.push(PathNode {
                kind: "operation",
                id: trace.operation_id(j),
                span_id: Some(hex_id(&span.span_id)),
            });
        }
    }
    if let Some(resource) = resource_id(effect_span) {
        path.push(PathNode {
            kind: "resource",
            id: resource,
            span_id: Some(hex_id(&effect_span.span_id)),
        });
    }

    let workload = path_spans
        .iter()
        .any(|&j| spans[j].facts().is_some_and(|f| f.workload_id.is_some()));
    let consumer_class = if !head.agents.is_empty() {
        "ai_agent"
    } else if head.user.is_some() {
        "human"
    } else if workload {
        "workload"
    } else if credential.is_some() || !api_hops.is_empty() {
        "service"
    } else {
        "unknown"
    };
    let mut missing = Vec::new();
    for (absent, name) in [
        (head.user.is_none(), "user"),
        (head.agents.is_empty(), "agent"),
        (credential.is_none(), "credential"),
        (api_hops.is_empty(), "api"),
    ] {
        if absent {
            missing.push(name.to_string());
        }
    }
    if let Some(gap) = ancestry.missing_parent {
        missing.push(format!("parent:{}", hex::encode(gap)));
    }

    Some(ChainRow {
        trace_id: hex::encode(trace.trace_id),
        effect_span_id: hex_id(&effect_span.span_id),
        revision: 1,
        time: effect_span.start_time,
        effect_kind: effect.kind,
        effect_operation: effect.operation.clone(),
        effect_target: effect.target.clone(),
        effect_is_write: effect.is_write,
        effect_service: effect_span.service.as_deref().map(str::to_string),
        attributed: head.user.is_some(),
        user_id: head.user.map(|(u, _)| u),
        session_id: head.session_id,
        agents: head.agents.into_iter().map(|(a, _)| a).collect(),
        tool_name: tool,
        tool_call_id,
        upstream_credentials: upstream_credentials(&path, credential.map(|(c, _)| c)),
        credential_fp: credential.map(|(c, _)| c.fingerprint.clone()),
        credential_kind: credential.map(|(c, _)| c.kind),
        token_scopes: credential
            .map(|(c, _)| c.scopes.clone())
            .unwrap_or_default(),
        token_actors: credential
            .map(|(c, _)| c.actors.clone())
            .unwrap_or_default(),
        api_hops,
        path,
        consumer_class,
        missing,
        linked_trace_ids,
    })
}
