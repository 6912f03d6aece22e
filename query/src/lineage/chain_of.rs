//! `chain_of(trace_id, span_id)`: who stands behind one action. From the span up through its
//! parents to the root, then across span links into the producing trace, then from every
//! credential on the way to the credentials it was exchanged from (derived_from edges) and who
//! presented those, and finally the declared owner of each identity.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringBuilder, TimestampNanosecondBuilder, UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampNanosecondType};
use datafusion::catalog::{Session, TableProvider};
use datafusion::prelude::{col, lit};

use super::graph::{Graph, Relation};
use super::scan_columns;
use crate::declared::Declared;
use crate::error::{QueryError, Result};

/// Linked traces followed at most, so a cycle of links cannot loop.
const MAX_LINK_HOPS: usize = 8;
/// derived_from steps followed at most from one credential.
const MAX_DERIVATION_DEPTH: u32 = 6;

/// Columns: `depth` (0 = the span itself, growing towards the root and across links), `kind`
/// and `id` of the identity, `via` (span, parent, link, token, derived_from, presented,
/// owned_by), and the span it was found on (none for graph and owner rows).
pub fn schema() -> SchemaRef {
    let utf8 = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        Field::new("depth", DataType::UInt32, false),
        utf8("kind", false),
        utf8("id", false),
        utf8("via", false),
        utf8("trace_id", true),
        utf8("span_id", true),
        utf8("service_name", true),
        utf8("span_name", true),
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            true,
        ),
    ]))
}

const SPAN_COLUMNS: &[&str] = &[
    "trace_id",
    "span_id",
    "parent_span_id",
    "start_time",
    "service_name",
    "name",
    "kind",
    "user_id",
    "agent_id",
    "tool_name",
    "credential_fp",
    "token_sub",
    "token_client_id",
    "token_actors",
    "api_method",
    "api_route",
    "api_target",
    "effect_kind",
    "effect_target",
    "links",
];

/// The lineage facts of one span.
#[derive(Debug, Default, Clone)]
struct SpanFacts {
    trace_id: String,
    span_id: String,
    parent: Option<String>,
    time: Option<i64>,
    service: Option<String>,
    name: Option<String>,
    kind: Option<String>,
    user: Option<String>,
    agent: Option<String>,
    tool: Option<String>,
    credential: Option<String>,
    token_sub: Option<String>,
    token_client_id: Option<String>,
    actors: Vec<String>,
    api_method: Option<String>,
    api_route: Option<String>,
    api_target: Option<String>,
    effect_kind: Option<String>,
    effect_target: Option<String>,
    links: Vec<(String, String)>,
}

impl SpanFacts {
    /// `(kind, id, via-override)` in the order they stand behind the action: what it touched,
    /// through which operation and tool, with which credential, for which agents and user.
    fn identities(&self) -> Vec<(&'static str, String, Option<&'static str>)> {
        let mut out = Vec::new();
        if let Some(kind) = &self.effect_kind {
            out.push((
                "resource",
                format!("{kind}:{}", self.effect_target.as_deref().unwrap_or("")),
                None,
            ));
        }
        if self.api_method.is_some() || self.api_route.is_some() {
            let service = match (self.kind.as_deref(), &self.api_target) {
                (Some("client"), Some(target)) => Some(target.as_str()),
                _ => self.service.as_deref(),
            };
            let parts: Vec<&str> = [
                service,
                self.api_method.as_deref(),
                self.api_route.as_deref(),
            ]
            .into_iter()
            .flatten()
            .collect();
            out.push(("operation", parts.join(" "), None));
        }
        if let Some(tool) = &self.tool {
            out.push(("tool", tool.clone(), None));
        }
        if let Some(fp) = &self.credential {
            out.push(("credential", fp.clone(), None));
        }
        for actor in self.actors.iter().rev() {
            out.push(("agent", actor.clone(), Some("token")));
        }
        if let Some(agent) = &self.agent {
            out.push(("agent", agent.clone(), None));
        }
        if let Some(user) = &self.user {
            out.push(("user", user.clone(), None));
        }
        if let Some(sub) = &self.token_sub
            && self.token_client_id.as_ref() != Some(sub)
            && !self.actors.contains(sub)
        {
            out.push(("user", sub.clone(), Some("token")));
        }
        if let Some(service) = &self.service {
            out.push(("workload", service.clone(), None));
        }
        out
    }
}

struct Found {
    depth: u32,
    kind: String,
    id: String,
    via: &'static str,
    span: Option<SpanFacts>,
}

/// Walks the action's ancestry; `spans` is the spans table.
pub async fn chain_of(
    session: &dyn Session,
    spans: &Arc<dyn TableProvider>,
    graph: &Graph,
    declared: &Declared,
    trace_id: &str,
    span_id: &str,
) -> Result<RecordBatch> {
    let mut found: Vec<Found> = Vec::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut record =
        |found: &mut Vec<Found>, depth, kind: &str, id: String, via, span: Option<&SpanFacts>| {
            if seen.insert((kind.to_string(), id.clone())) {
                found.push(Found {
                    depth,
                    kind: kind.to_string(),
                    id,
                    via,
                    span: span.cloned(),
                });
            }
        };

    let mut at = Some((trace_id.to_string(), span_id.to_string(), "span"));
    let mut depth = 0u32;
    let mut visited_traces = HashSet::new();
    while let Some((trace, first_span, entry_via)) = at.take() {
        if !visited_traces.insert(trace.clone()) || visited_traces.len() > MAX_LINK_HOPS {
            break;
        }
        let by_id = load_trace(session, spans, &trace).await?;
        let mut next = Some(first_span);
        let mut via = entry_via;
        let mut link = None;
        while let Some(id) = next.take() {
            let Some(span) = by_id.get(&id) else {
                record(
                    &mut found,
                    depth,
                    "missing",
                    format!("span:{id}"),
                    via,
                    None,
                );
                break;
            };
            for (kind, identity, how) in span.identities() {
                record(
                    &mut found,
                    depth,
                    kind,
                    identity,
                    how.unwrap_or(via),
                    Some(span),
                );
            }
            if link.is_none() {
                link = span.links.first().cloned();
            }
            next = span.parent.clone();
            via = "parent";
            depth += 1;
        }
        at = link.map(|(t, s)| (t, s, "link"));
    }

    // Credentials on the way: the tokens they were exchanged from, and who presented those.
    let credentials: Vec<(u32, String)> = found
        .iter()
        .filter(|f| f.kind == "credential")
        .map(|f| (f.depth, f.id.clone()))
        .collect();
    for (depth, fp) in credentials {
        let mut current = fp;
        for step in 1..=MAX_DERIVATION_DEPTH {
            let Some(node) = graph.lookup("credential", &current) else {
                break;
            };
            let Some(parent) = graph
                .outgoing(node)
                .find(|e| e.relation == Relation::DerivedFrom)
                .map(|e| e.dst)
            else {
                break;
            };
            let (_, parent_fp) = graph.node(parent);
            let parent_fp = parent_fp.to_string();
            record(
                &mut found,
                depth + step,
                "credential",
                parent_fp.clone(),
                "derived_from",
                None,
            );
            for presenter in graph
                .incoming(parent)
                .filter(|e| e.relation == Relation::Presented)
            {
                let (kind, id) = graph.node(presenter.src);
                record(
                    &mut found,
                    depth + step,
                    kind,
                    id.to_string(),
                    "presented",
                    None,
                );
            }
            current = parent_fp;
        }
    }

    // Declared owners of every identity found.
    let identities: Vec<(u32, String, String)> = found
        .iter()
        .map(|f| (f.depth, f.kind.clone(), f.id.clone()))
        .collect();
    for (depth, kind, id) in identities {
        for owner in declared
            .owners
            .iter()
            .filter(|o| o.kind == kind && o.id == id)
        {
            record(
                &mut found,
                depth,
                "owner",
                owner.owner.clone(),
                "owned_by",
                None,
            );
        }
    }
    to_batch(&found)
}

fn to_batch(found: &[Found]) -> Result<RecordBatch> {
    let mut depth = UInt32Builder::new();
    let mut kind = StringBuilder::new();
    let mut id = StringBuilder::new();
    let mut via = StringBuilder::new();
    let mut trace = StringBuilder::new();
    let mut span = StringBuilder::new();
    let mut service = StringBuilder::new();
    let mut name = StringBuilder::new();
    let mut time = TimestampNanosecondBuilder::new().with_timezone("UTC");
    for f in found {
        depth.append_value(f.depth);
        kind.append_value(&f.kind);
        id.append_value(&f.id);
        via.append_value(f.via);
        let s = f.span.as_ref();
        trace.append_option(s.map(|s| s.trace_id.as_str()));
        span.append_option(s.map(|s| s.span_id.as_str()));
        service.append_option(s.and_then(|s| s.service.as_deref()));
        name.append_option(s.and_then(|s| s.name.as_deref()));
        time.append_option(s.and_then(|s| s.time));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(depth.finish()),
        Arc::new(kind.finish()),
        Arc::new(id.finish()),
        Arc::new(via.finish()),
        Arc::new(trace.finish()),
        Arc::new(span.finish()),
        Arc::new(service.finish()),
        Arc::new(name.finish()),
        Arc::new(time.finish()),
    ];
    RecordBatch::try_new(schema(), columns).map_err(|e| QueryError::Execution(e.to_string()))
}

/// Every span of `trace_id`, by span id. The filter reaches the Parquet scan, where the bloom
/// filter on `trace_id` skips row groups that cannot hold it.
async fn load_trace(
    session: &dyn Session,
    spans: &Arc<dyn TableProvider>,
    trace_id: &str,
) -> Result<HashMap<String, SpanFacts>> {
    // Planned and optimised like a query, not scanned directly: the optimiser pushes the
    // trace filter into the Parquet scan, where bloom filters and statistics skip the row
    // groups without the trace (a bare `scan` with the filter read every file: 20 s warm over
    // 10M spans instead of milliseconds).
    let batches = scan_columns(
        session,
        spans,
        "spans",
        SPAN_COLUMNS,
        Some(col("trace_id").eq(lit(trace_id))),
    )
    .await?;
    let mut by_id = HashMap::new();
    for batch in &batches {
        for facts in span_facts(batch) {
            if facts.trace_id == trace_id {
                by_id.insert(facts.span_id.clone(), facts);
            }
        }
    }
    Ok(by_id)
}

fn span_facts(batch: &RecordBatch) -> Vec<SpanFacts> {
    let text = |name: &str, row: usize| -> Option<String> {
        let column = batch.column_by_name(name)?;
        let strings = column.as_string_opt::<i32>()?;
        (!strings.is_null(row)).then(|| strings.value(row).to_string())
    };
    let list = |name: &str, row: usize| -> Vec<String> {
        let Some(lists) = batch
            .column_by_name(name)
            .and_then(|c| c.as_list_opt::<i32>())
        else {
            return Vec::new();
        };
        if lists.is_null(row) {
            return Vec::new();
        }
        let values = lists.value(row);
        values
            .as_string_opt::<i32>()
            .map(|s| s.iter().flatten().map(str::to_string).collect())
            .unwrap_or_default()
    };
    let links = |row: usize| -> Vec<(String, String)> {
        let Some(lists) = batch
            .column_by_name("links")
            .and_then(|c| c.as_list_opt::<i32>())
        else {
            return Vec::new();
        };
        if lists.is_null(row) {
            return Vec::new();
        }
        let values = lists.value(row);
        let Some(structs) = values.as_struct_opt() else {
            return Vec::new();
        };
        let (Some(traces), Some(spans)) = (
            structs
                .column_by_name("trace_id")
                .and_then(|c| c.as_string_opt::<i32>()),
            structs
                .column_by_name("span_id")
                .and_then(|c| c.as_string_opt::<i32>()),
        ) else {
            return Vec::new();
        };
        (0..structs.len())
            .filter(|&i| !traces.is_null(i) && !spans.is_null(i))
            .map(|i| (traces.value(i).to_string(), spans.value(i).to_string()))
            .collect()
    };
    let times = batch
        .column_by_name("start_time")
        .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>());
    (0..batch.num_rows())
        .map(|row| SpanFacts {
            trace_id: text("trace_id", row).unwrap_or_default(),
            span_id: text("span_id", row).unwrap_or_default(),
            parent: text("parent_span_id", row).filter(|p| !p.is_empty()),
            time: times.filter(|t| !t.is_null(row)).map(|t| t.value(row)),
            service: text("service_name", row),
            name: text("name", row),
            kind: text("kind", row),
            user: text("user_id", row),
            agent: text("agent_id", row),
            tool: text("tool_name", row),
            credential: text("credential_fp", row),
            token_sub: text("token_sub", row),
            token_client_id: text("token_client_id", row),
            actors: list("token_actors", row),
            api_method: text("api_method", row),
            api_route: text("api_route", row),
            api_target: text("api_target", row),
            effect_kind: text("effect_kind", row),
            effect_target: text("effect_target", row),
            links: links(row),
        })
        .collect()
}
