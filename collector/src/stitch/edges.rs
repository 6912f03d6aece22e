//! Edges: the observed lineage graph — which identity reached what, across all traffic (reads
//! and calls without side effects included), aggregated per flush.
//!
//! Each trace yields observations (one per span that evidences a relation); the aggregate keeps
//! per edge and hour partition the first and last time seen, the count and one sample trace.

use ahash::AHashMap as HashMap;

use idtrail_schemas::layout::Partition;

use super::span::{CredentialFacts, LineageSpan};
use super::trace::{Trace, is_token_endpoint, resource_id, token_user};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeKey {
    pub src_kind: &'static str,
    pub src_id: String,
    pub relation: &'static str,
    pub dst_kind: &'static str,
    pub dst_id: String,
}

impl EdgeKey {
    fn new(
        src: (&'static str, &str),
        relation: &'static str,
        dst: (&'static str, &str),
    ) -> EdgeKey {
        EdgeKey {
            src_kind: src.0,
            src_id: src.1.to_string(),
            relation,
            dst_kind: dst.0,
            dst_id: dst.1.to_string(),
        }
    }
}

/// One piece of evidence for an edge: the span's start time.
pub type Observation = (EdgeKey, i64);

/// The relations every span of `trace` evidences.
pub fn observe(trace: &Trace<'_>) -> Vec<Observation> {
    let spans = trace.spans;
    // Token endpoint calls, with the credential presented above them: the evidence of a token
    // exchange.
    let exchanges: Vec<(i64, &str)> = (0..spans.len())
        .filter(|&i| is_token_endpoint(&spans[i]))
        .filter_map(|i| {
            let ancestry = trace.ancestry(i).spans;
            let above = credential_above(trace, &ancestry, ancestry.len())?;
            Some((spans[i].start_time, above.fingerprint.as_str()))
        })
        .collect();

    let mut out = Vec::new();
    for i in (0..spans.len()).filter(|&i| trace.is_canonical(i)) {
        let span = &spans[i];
        let at = span.start_time;
        let ancestry = trace.ancestry(i).spans;
        let above = ancestry.len() - 1;
        let mut push = |key: EdgeKey| out.push((key, at));

        if let Some(agent) = span.agent()
            && agent_above(trace, &ancestry, above) != Some(agent)
        {
            match agent_above(trace, &ancestry, above) {
                Some(outer) => push(EdgeKey::new(("agent", agent), "acts_for", ("agent", outer))),
                None => {
                    if let Some(user) = user_at(trace, &ancestry) {
                        push(EdgeKey::new(("user", user), "initiated", ("agent", agent)));
                        push(EdgeKey::new(("agent", agent), "acts_for", ("user", user)));
                    }
                }
            }
        }

        if let Some(credential) = span.credential() {
            let outer = credential_above(trace, &ancestry, above);
            if outer.map(|c| c.fingerprint.as_str()) != Some(credential.fingerprint.as_str()) {
                let fp = credential.fingerprint.as_str();
                if let Some((kind, id)) = trace.presenter(&ancestry) {
                    push(EdgeKey::new((kind, &id), "presented", ("credential", fp)));
                }
                if let Some(outer) = outer
                    && derived(credential, outer, span, &exchanges)
                {
                    push(EdgeKey::new(
                        ("credential", fp),
                        "derived_from",
                        ("credential", &outer.fingerprint),
                    ));
                }
                for pair in credential.actors.windows(2) {
                    push(EdgeKey::new(
                        ("agent", &pair[0]),
                        "acts_for",
                        ("agent", &pair[1]),
                    ));
                }
                if let (Some(innermost), Some(user)) =
                    (credential.actors.last(), token_user(credential))
                {
                    push(EdgeKey::new(
                        ("agent", innermost),
                        "acts_for",
                        ("user", user),
                    ));
                }
            }
        }

        if trace.is_hop(i) {
            let operation = trace.operation_id(i);
            if let Some(credential) = trace
                .hop_credential(i)
                .or_else(|| credential_above(trace, &ancestry, above))
            {
                push(EdgeKey::new(
                    ("credential", &credential.fingerprint),
                    "invoked",
                    ("operation", &operation),
                ));
            }
            if let Some(&caller) = ancestry[..above].iter().rev().find(|&&j| trace.is_hop(j)) {
                let caller = trace.operation_id(caller);
                if caller != operation {
                    push(EdgeKey::new(
                        ("operation", &caller),
                        "called",
                        ("operation", &operation),
                    ));
                }
            }
        }

        if trace.is_side_effect(i)
            && let Some(resource) = resource_id(span)
            && let Some((_, operation)) = trace.operation_of(&ancestry)
        {
            push(EdgeKey::new(
                ("operation", &operation),
                "affected",
                ("resource", &resource),
            ));
        }
    }
    out
}

/// A credential seen after `outer` on the same path was obtained with it when the token says so
/// (an act chain, or the same subject) or a token endpoint was called with `outer` before it.
fn derived(
    credential: &CredentialFacts,
    outer: &CredentialFacts,
    span: &LineageSpan,
    exchanges: &[(i64, &str)],
) -> bool {
    let same_subject = credential.token_sub.is_some() && credential.token_sub == outer.token_sub;
    !credential.actors.is_empty()
        || same_subject
        || exchanges
            .iter()
            .any(|&(at, fp)| fp == outer.fingerprint && at <= span.start_time)
}

fn agent_above<'a>(trace: &Trace<'a>, ancestry: &[usize], end: usize) -> Option<&'a str> {
    let spans: &'a [LineageSpan] = trace.spans;
    ancestry[..end].iter().rev().find_map(|&j| spans[j].agent())
}

fn credential_above<'a>(
    trace: &Trace<'a>,
    ancestry: &[usize],
    end: usize,
) -> Option<&'a CredentialFacts> {
    let spans: &'a [LineageSpan] = trace.spans;
    ancestry[..end]
        .iter()
        .rev()
        .find_map(|&j| spans[j].credential())
}

fn user_at<'a>(trace: &Trace<'a>, ancestry: &[usize]) -> Option<&'a str> {
    let spans: &'a [LineageSpan] = trace.spans;
    ancestry
        .iter()
        .rev()
        .find_map(|&j| spans[j].user_id())
        .or_else(|| {
            ancestry
                .iter()
                .rev()
                .find_map(|&j| token_user(spans[j].credential()?))
        })
}

/// Counts observations per (edge, distinct trace): a re-stitched trace adds only what is new.
pub fn count(observations: &[Observation]) -> HashMap<EdgeKey, (u64, i64, i64)> {
    let mut counts: HashMap<EdgeKey, (u64, i64, i64)> = HashMap::new();
    for (key, at) in observations {
        let entry = counts.entry(key.clone()).or_insert((0, *at, *at));
        entry.0 += 1;
        entry.1 = entry.1.min(*at);
        entry.2 = entry.2.max(*at);
    }
    counts
}

/// One row of the `edges` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeRow {
    pub key: EdgeKey,
    pub first_seen: i64,
    pub last_seen: i64,
    pub count: u64,
    pub sample_trace_id: String,
}

/// Edges observed since the last flush, per hour partition of when they were seen.
#[derive(Default)]
pub struct EdgeAggregate {
    rows: HashMap<(Partition, EdgeKey), EdgeRow>,
}

impl EdgeAggregate {
    pub fn add(&mut self, key: EdgeKey, count: u64, first: i64, last: i64, trace_id: &str) {
        let partition = Partition::of_nanos(first);
        let row = self
            .rows
            .entry((partition, key.clone()))
            .or_insert_with(|| EdgeRow {
                key,
                first_seen: first,
                last_seen: last,
                count: 0,
                sample_trace_id: trace_id.to_string(),
            });
        row.first_seen = row.first_seen.min(first);
        row.last_seen = row.last_seen.max(last);
        row.count += count;
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// The rows per partition, sorted by first_seen then key (files are sorted by time).
    pub fn take(&mut self) -> std::collections::BTreeMap<Partition, Vec<EdgeRow>> {
        let mut out: std::collections::BTreeMap<Partition, Vec<EdgeRow>> = Default::default();
        for ((partition, _), row) in self.rows.drain() {
            out.entry(partition).or_default().push(row);
        }
        for rows in out.values_mut() {
            rows.sort_by(|a, b| (a.first_seen, &a.key).cmp(&(b.first_seen, &b.key)));
        }
        out
    }
}
