//! One trace's spans, indexed for walking parentage: what the chain builder and the edge
//! observer both read.

use ahash::AHashMap as HashMap;

use super::span::{CredentialFacts, LineageSpan, SpanId, TraceId};
use crate::record::SpanKind;

/// Parent walks stop after this many steps: a cycle or an absurdly deep trace must not hang the
/// stitcher.
const MAX_DEPTH: usize = 512;

pub struct Trace<'a> {
    pub trace_id: TraceId,
    pub spans: &'a [LineageSpan],
    index: HashMap<SpanId, usize>,
    /// The client span's call is represented by its server child (same call, callee's view).
    answered_by_server: Vec<bool>,
}

/// Where a parent walk ended.
pub struct Ancestry {
    /// Span indexes, root-most first, ending with the span the walk started from.
    pub spans: Vec<usize>,
    /// The parent the root-most span names but the trace does not hold: a gap, never guessed.
    pub missing_parent: Option<SpanId>,
}

impl<'a> Trace<'a> {
    /// Indexes `spans`; a span id seen twice keeps its first span.
    pub fn new(trace_id: TraceId, spans: &'a [LineageSpan]) -> Trace<'a> {
        let mut index = HashMap::with_capacity(spans.len());
        for (i, span) in spans.iter().enumerate() {
            index.entry(span.span_id).or_insert(i);
        }
        let mut answered_by_server = vec![false; spans.len()];
        for span in spans {
            if span.kind == SpanKind::Server
                && span.api().is_some()
                && let Some(parent) = span.parent_span_id.and_then(|p| index.get(&p))
                && spans[*parent].kind == SpanKind::Client
            {
                answered_by_server[*parent] = true;
            }
        }
        Trace {
            trace_id,
            spans,
            index,
            answered_by_server,
        }
    }

    pub fn find(&self, span_id: &SpanId) -> Option<usize> {
        self.index.get(span_id).copied()
    }

    pub fn parent(&self, i: usize) -> Option<usize> {
        let parent = self.spans[i].parent_span_id?;
        self.find(&parent).filter(|&p| p != i)
    }

    /// Spans whose index appears twice (same id sent twice) are skipped by callers through this.
    pub fn is_canonical(&self, i: usize) -> bool {
        self.find(&self.spans[i].span_id) == Some(i)
    }

    pub fn ancestry(&self, i: usize) -> Ancestry {
        let mut spans = vec![i];
        let mut at = i;
        let mut missing_parent = None;
        while spans.len() < MAX_DEPTH {
            let Some(parent_id) = self.spans[at].parent_span_id else {
                break;
            };
            match self.find(&parent_id) {
                Some(p) if !spans.contains(&p) => {
                    spans.push(p);
                    at = p;
                }
                Some(_) => break,
                None => {
                    missing_parent = Some(parent_id);
                    break;
                }
            }
        }
        spans.reverse();
        Ancestry {
            spans,
            missing_parent,
        }
    }

    /// An API call as the chain counts it: a span with API fields, except a client span whose
    /// server side is in the trace (that one call is counted once, at the server).
    pub fn is_hop(&self, i: usize) -> bool {
        self.spans[i].api().is_some() && !self.answered_by_server[i]
    }

    /// A side effect as chains count it. An unsafe HTTP call whose server side is in the trace
    /// is not one: what it caused is traced further down, where the effect really happens.
    pub fn is_side_effect(&self, i: usize) -> bool {
        self.spans[i]
            .effect()
            .is_some_and(|e| !(e.kind == "http" && self.answered_by_server[i]))
    }

    /// The credential presented on a hop: its own, or the one its client side presented.
    pub fn hop_credential(&self, i: usize) -> Option<&'a CredentialFacts> {
        let spans: &'a [LineageSpan] = self.spans;
        spans[i].credential().or_else(|| {
            let parent = self.parent(i)?;
            (spans[i].kind == SpanKind::Server && spans[parent].kind == SpanKind::Client)
                .then(|| spans[parent].credential())
                .flatten()
        })
    }

    /// The `operation` node id of a hop: `service method route`. A call whose server side is not
    /// traced is named after its target host rather than the caller.
    pub fn operation_id(&self, i: usize) -> String {
        let span = &self.spans[i];
        let api = span.api();
        let service = match (span.kind, api.and_then(|a| a.target.as_deref())) {
            (SpanKind::Client, Some(target)) => Some(target),
            _ => span.service.as_deref(),
        };
        let method = api.and_then(|a| a.method.as_deref());
        let route = api.and_then(|a| a.route.as_deref());
        let name = if api.is_some() { None } else { span.name() };
        join_present(&[service, method, route, name])
    }

    /// The operation a side effect at `i` is charged to: the nearest API hop at or above it,
    /// else the nearest entry point (server, consumer or root span), named `service span-name`.
    pub fn operation_of(&self, ancestry: &[usize]) -> Option<(usize, String)> {
        if let Some(&hop) = ancestry.iter().rev().find(|&&j| self.is_hop(j)) {
            return Some((hop, self.operation_id(hop)));
        }
        let entry = ancestry.iter().rev().copied().find(|&j| {
            let s = &self.spans[j];
            matches!(s.kind, SpanKind::Server | SpanKind::Consumer) || s.parent_span_id.is_none()
        })?;
        Some((entry, self.operation_id(entry)))
    }

    /// Who presents a credential first seen at `i`: the acting agent if one stands above, else
    /// the calling workload (the client side's service for a server span).
    pub fn presenter(&self, ancestry: &[usize]) -> Option<(&'static str, String)> {
        if let Some(agent) = ancestry.iter().rev().find_map(|&j| self.spans[j].agent()) {
            return Some(("agent", agent.to_string()));
        }
        let &i = ancestry.last()?;
        let caller = match (self.spans[i].kind, self.parent(i)) {
            (SpanKind::Server, Some(p)) if self.spans[p].kind == SpanKind::Client => p,
            _ => i,
        };
        let span = &self.spans[caller];
        span.facts()
            .and_then(|f| f.workload_id.clone())
            .or_else(|| span.service.as_deref().map(str::to_string))
            .map(|id| ("workload", id))
    }
}

/// `resource` node id of a side effect: `effect_kind:target`.
pub fn resource_id(span: &LineageSpan) -> Option<String> {
    let effect = span.effect()?;
    Some(format!(
        "{}:{}",
        effect.kind,
        effect.target.as_deref().unwrap_or("")
    ))
}

/// A human subject behind a token: its `sub` when that is not the client itself (a
/// client-credentials token's `sub` is the client).
pub fn token_user(credential: &CredentialFacts) -> Option<&str> {
    let sub = credential.token_sub.as_deref()?;
    (credential.token_client_id.as_deref() != Some(sub)
        && !credential.actors.iter().any(|a| a == sub))
    .then_some(sub)
}

/// An OAuth token endpoint call (token exchange, refresh): the evidence that a credential seen
/// after it on the same path was obtained with the one presented before it.
pub fn is_token_endpoint(span: &LineageSpan) -> bool {
    let Some(api) = span.api() else {
        return false;
    };
    let path = api.route.as_deref().unwrap_or("");
    let path = path.split(['?', '#']).next().unwrap_or(path);
    path.trim_end_matches('/').ends_with("/token")
}

fn join_present(parts: &[Option<&str>]) -> String {
    parts
        .iter()
        .flatten()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}
