//! The lineage graph as a BloodHound OpenGraph file: the observed `edges` (aggregated over
//! flushes and partitions), the declared owners, and the grants, for teams that explore
//! identity paths in BloodHound (Community or Enterprise edition).
//!
//! The payload is `{"metadata": {"source_kind": "IDT_Base"}, "graph": {"nodes": […], "edges":
//! […]}}`. What the format asks, and how this file meets it:
//!
//! - Node and edge kinds match `^[A-Za-z0-9_]+$` and carry the `IDT_` prefix, so they never
//!   collide with built-in kinds (`User`, `MemberOf`) or another extension's; PascalCase.
//! - A node has at most three kinds, the first its primary (icon) kind: ours are the node's own
//!   kind and the source kind `IDT_Base`, which BloodHound also uses to delete one source's data.
//! - Node ids are unique across kinds: `IDT_Agent:planner` and `IDT_User:planner` are two nodes,
//!   as they are in `edges`. Ids are the table ids with that prefix, so the same identity has the
//!   same id in every export and a re-upload merges rather than duplicates.
//! - Properties are lowercase names with primitive values only ([`Prop`] cannot hold anything
//!   else); times are epoch seconds (numbers, comparable in Cypher) plus an RFC 3339 copy to read.
//!   Absent values are left out rather than written as null, which the schema does not allow.
//! - Edges name their ends by node id (`match_by: "id"`).
//!
//! The output is streamed: nodes as the query yields them, then edges batch by batch; only the
//! set of node keys is held, to attach owners and grants to nodes that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, UInt64Type};
use datafusion::common::ScalarValue;
use futures::StreamExt;
use serde::Serialize;

use super::TimeWindow;
use crate::QueryEngine;
use crate::declared::{Declared, DeclaredFiles, DeclaredKind, glob_matches};
use crate::error::{QueryError, Result};

/// `metadata.source_kind`, also the second kind of every node.
pub const SOURCE_KIND: &str = "IDT_Base";

/// Declared edge kinds. Every edge points from who holds something to what it reaches.
pub const OWNS: &str = "IDT_Owns";
pub const HAS_GRANT: &str = "IDT_HasGrant";
pub const PERMITS: &str = "IDT_Permits";
pub const HAS_SCOPE: &str = "IDT_HasScope";

/// The kinds of node in the export: the six of the `edges` table, then the declared ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeKind {
    User,
    Agent,
    Workload,
    Credential,
    Operation,
    Resource,
    /// Whoever an `owners` row names as answering for an identity (a person or a team).
    Owner,
    /// One `grants` row.
    Grant,
    /// A token scope that a grant names as its subject.
    Scope,
}

impl NodeKind {
    /// The node kinds of the `edges` table (`src_kind`, `dst_kind`); declared rows use the same
    /// names. Anything else is not a node of ours.
    pub fn parse(kind: &str) -> Option<NodeKind> {
        Some(match kind {
            "user" => NodeKind::User,
            "agent" => NodeKind::Agent,
            "workload" => NodeKind::Workload,
            "credential" => NodeKind::Credential,
            "operation" => NodeKind::Operation,
            "resource" => NodeKind::Resource,
            _ => return None,
        })
    }

    /// idtrail's own name of the kind (the `idtrail_kind` property).
    pub fn name(self) -> &'static str {
        match self {
            NodeKind::User => "user",
            NodeKind::Agent => "agent",
            NodeKind::Workload => "workload",
            NodeKind::Credential => "credential",
            NodeKind::Operation => "operation",
            NodeKind::Resource => "resource",
            NodeKind::Owner => "owner",
            NodeKind::Grant => "grant",
            NodeKind::Scope => "scope",
        }
    }

    /// The OpenGraph node kind.
    pub fn opengraph(self) -> &'static str {
        match self {
            NodeKind::User => "IDT_User",
            NodeKind::Agent => "IDT_Agent",
            NodeKind::Workload => "IDT_Workload",
            NodeKind::Credential => "IDT_Credential",
            NodeKind::Operation => "IDT_Operation",
            NodeKind::Resource => "IDT_Resource",
            NodeKind::Owner => "IDT_Owner",
            NodeKind::Grant => "IDT_Grant",
            NodeKind::Scope => "IDT_Scope",
        }
    }
}

/// The OpenGraph edge kind of a relation of the `edges` table.
pub fn edge_kind(relation: &str) -> Option<&'static str> {
    Some(match relation {
        "initiated" => "IDT_Initiated",
        "acts_for" => "IDT_ActsFor",
        "presented" => "IDT_Presented",
        "derived_from" => "IDT_DerivedFrom",
        "invoked" => "IDT_Invoked",
        "called" => "IDT_Called",
        "affected" => "IDT_Affected",
        _ => return None,
    })
}

/// The OpenGraph id of a node: its kind, then idtrail's id. The kind keeps a user and an agent
/// that share an id string apart.
pub fn node_id(kind: NodeKind, id: &str) -> String {
    format!("{}:{id}", kind.opengraph())
}

/// A property value: primitives only, as OpenGraph requires.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Prop {
    Text(String),
    Int(i64),
    UInt(u64),
    Bool(bool),
}

pub type Props = BTreeMap<&'static str, Prop>;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub id: String,
    pub kinds: [&'static str; 2],
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub value: String,
    pub match_by: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edge {
    pub kind: &'static str,
    pub start: Endpoint,
    pub end: Endpoint,
    pub properties: Props,
}

#[derive(Serialize)]
struct Metadata {
    source_kind: &'static str,
}

/// What an export wrote, and what it left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub nodes: u64,
    pub edges: u64,
    /// Observed edges whose kind or relation this version does not know (a newer stitcher).
    pub skipped_edges: u64,
    /// Owner and grant rows naming a kind that is not a node kind (nor `scope` for a grant).
    pub skipped_declared: u64,
}

/// A node of the `edges` table, with the span of time its edges were seen in.
pub fn observed_node(kind: NodeKind, id: &str, first_seen: i64, last_seen: i64) -> Node {
    let mut properties = identity_props(kind, id);
    add_times(&mut properties, first_seen, last_seen);
    node(kind, id, properties)
}

/// One aggregated row of the `edges` table, or `None` for a kind or relation it does not know.
pub fn observed_edge(row: &EdgeRow) -> Option<Edge> {
    let kind = edge_kind(&row.relation)?;
    let src = NodeKind::parse(&row.src_kind)?;
    let dst = NodeKind::parse(&row.dst_kind)?;
    let mut properties = Props::new();
    properties.insert("relation", Prop::Text(row.relation.clone()));
    properties.insert("count", Prop::UInt(row.count));
    add_times(&mut properties, row.first_seen, row.last_seen);
    properties.insert("sample_trace_id", Prop::Text(row.sample_trace_id.clone()));
    Some(edge(kind, src, &row.src_id, dst, &row.dst_id, properties))
}

/// One row of the aggregated `edges` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeRow {
    pub src_kind: String,
    pub src_id: String,
    pub relation: String,
    pub dst_kind: String,
    pub dst_id: String,
    /// ns since the epoch.
    pub first_seen: i64,
    pub last_seen: i64,
    pub count: u64,
    pub sample_trace_id: String,
}

/// The nodes and edges owners and grants add to the observed nodes `known`: nodes that were
/// not observed come first (and are added to `known`), then the edges.
///
/// - owners: `IDT_Owner` → `IDT_Owns` → the identity (made a node if never observed).
/// - grants: the subject → `IDT_HasGrant` → an `IDT_Grant` node → `IDT_Permits` → each known
///   node of the target kind the pattern matches. A subject id with `*` matches known nodes;
///   one without names its node, as does a target pattern without `*`, observed or not, so a
///   grant that was never used still shows. A `scope` subject is an `IDT_Scope` node (the
///   credentials carrying it are linked by [`scope_edge`]).
pub fn declared_graph(
    known: &mut BTreeSet<(NodeKind, String)>,
    declared: &Declared,
    summary: &mut Summary,
) -> (Vec<Node>, Vec<Edge>) {
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    /// Adds `kind:id` unless it is known already.
    fn add_node(
        nodes: &mut Vec<Node>,
        known: &mut BTreeSet<(NodeKind, String)>,
        kind: NodeKind,
        id: &str,
    ) {
        if known.insert((kind, id.to_string())) {
            let mut properties = identity_props(kind, id);
            if kind != NodeKind::Owner && kind != NodeKind::Scope {
                // Named by configuration, never seen in traffic.
                properties.insert("declared_only", Prop::Bool(true));
            }
            nodes.push(node(kind, id, properties));
        }
    }

    for owner in &declared.owners {
        let Some(kind) = NodeKind::parse(&owner.kind) else {
            summary.skipped_declared += 1;
            continue;
        };
        add_node(&mut nodes, known, kind, &owner.id);
        add_node(&mut nodes, known, NodeKind::Owner, &owner.owner);
        let mut properties = Props::new();
        properties.insert("approved", Prop::Bool(owner.approved));
        if let Some(t) = owner.expires_at {
            add_time(&mut properties, "expires_at", t);
        }
        if let Some(t) = owner.revoked_at {
            add_time(&mut properties, "revoked_at", t);
        }
        edges.push(edge(
            OWNS,
            NodeKind::Owner,
            &owner.owner,
            kind,
            &owner.id,
            properties,
        ));
    }

    for grant in &declared.grants {
        let subject = if grant.subject_kind == "scope" {
            Some(NodeKind::Scope)
        } else {
            NodeKind::parse(&grant.subject_kind)
        };
        let (Some(subject), Some(target)) = (subject, NodeKind::parse(&grant.target_kind)) else {
            summary.skipped_declared += 1;
            continue;
        };
        let grant_id = format!(
            "{}:{} -> {}:{}",
            grant.subject_kind, grant.subject_id, grant.target_kind, grant.target_pattern
        );
        if known.contains(&(NodeKind::Grant, grant_id.clone())) {
            continue; // the same row twice
        }
        // Matched before the grant's own nodes are added, so a pattern matches observed nodes.
        let subjects = matching(known, subject, &grant.subject_id);
        let targets = matching(known, target, &grant.target_pattern);
        known.insert((NodeKind::Grant, grant_id.clone()));
        let mut properties = identity_props(NodeKind::Grant, &grant_id);
        properties.insert("subject_kind", Prop::Text(grant.subject_kind.clone()));
        properties.insert("subject_id", Prop::Text(grant.subject_id.clone()));
        properties.insert("target_kind", Prop::Text(grant.target_kind.clone()));
        properties.insert("target_pattern", Prop::Text(grant.target_pattern.clone()));
        nodes.push(node(NodeKind::Grant, &grant_id, properties));
        for id in subjects {
            add_node(&mut nodes, known, subject, &id);
            edges.push(edge(
                HAS_GRANT,
                subject,
                &id,
                NodeKind::Grant,
                &grant_id,
                Props::new(),
            ));
        }
        for id in targets {
            add_node(&mut nodes, known, target, &id);
            edges.push(edge(
                PERMITS,
                NodeKind::Grant,
                &grant_id,
                target,
                &id,
                Props::new(),
            ));
        }
    }
    (nodes, edges)
}

/// The ids a grant's pattern stands for: the known nodes of `kind` it matches, or, without a
/// `*`, the one node it names (a scope is always named).
fn matching(known: &BTreeSet<(NodeKind, String)>, kind: NodeKind, pattern: &str) -> Vec<String> {
    if kind == NodeKind::Scope || !pattern.contains('*') {
        return vec![pattern.to_string()];
    }
    known
        .range((kind, String::new())..)
        .take_while(|(k, _)| *k == kind)
        .filter(|(_, id)| glob_matches(pattern, id))
        .map(|(_, id)| id.clone())
        .collect()
}

/// A credential carrying a scope that a grant names.
pub fn scope_edge(credential: &str, scope: &str) -> Edge {
    edge(
        HAS_SCOPE,
        NodeKind::Credential,
        credential,
        NodeKind::Scope,
        scope,
        Props::new(),
    )
}

fn node(kind: NodeKind, id: &str, properties: Props) -> Node {
    Node {
        id: node_id(kind, id),
        kinds: [kind.opengraph(), SOURCE_KIND],
        properties,
    }
}

fn edge(
    kind: &'static str,
    src: NodeKind,
    src_id: &str,
    dst: NodeKind,
    dst_id: &str,
    properties: Props,
) -> Edge {
    let end = |kind, id| Endpoint {
        value: node_id(kind, id),
        match_by: "id",
    };
    Edge {
        kind,
        start: end(src, src_id),
        end: end(dst, dst_id),
        properties,
    }
}

/// `name` and `displayname` (what BloodHound shows and searches), and idtrail's own kind and
/// id, so a Cypher answer can be joined back to SQL.
fn identity_props(kind: NodeKind, id: &str) -> Props {
    let mut properties = Props::new();
    properties.insert("name", Prop::Text(id.to_string()));
    properties.insert("displayname", Prop::Text(id.to_string()));
    properties.insert("idtrail_kind", Prop::Text(kind.name().to_string()));
    properties.insert("idtrail_id", Prop::Text(id.to_string()));
    properties
}

fn add_times(properties: &mut Props, first_seen: i64, last_seen: i64) {
    add_time(properties, "first_seen", first_seen);
    add_time(properties, "last_seen", last_seen);
}

/// `name` as epoch seconds and `name_utc` as RFC 3339 (ms), from ns since the epoch.
fn add_time(properties: &mut Props, name: &'static str, ns: i64) {
    properties.insert(name, Prop::Int(ns.div_euclid(1_000_000_000)));
    let text = chrono::DateTime::from_timestamp_nanos(ns)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let utc: &'static str = match name {
        "first_seen" => "first_seen_utc",
        "last_seen" => "last_seen_utc",
        "expires_at" => "expires_at_utc",
        "revoked_at" => "revoked_at_utc",
        _ => return,
    };
    properties.insert(utc, Prop::Text(text));
}

/// `WHERE` conditions for the window on `first`/`last` time columns, numbering parameters
/// from `$1` in `params`. Values are bound, never spliced into the SQL.
pub fn window_filter(
    window: TimeWindow,
    first: &str,
    last: &str,
    params: &mut Vec<ScalarValue>,
) -> Vec<String> {
    let mut conditions = Vec::new();
    let mut bind = |value: i64| {
        params.push(ScalarValue::TimestampNanosecond(
            Some(value),
            Some("UTC".into()),
        ));
        format!("${}", params.len())
    };
    if let Some(since) = window.since {
        conditions.push(format!("{last} >= {}", bind(since)));
    }
    if let Some(until) = window.until {
        conditions.push(format!("{first} < {}", bind(until)));
    }
    conditions
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    }
}

/// Writes the OpenGraph file for the edges of `window`, with the owners and grants of the
/// engine's `query.owners_files` / `query.grants_files`, to `out`.
pub async fn export(engine: &QueryEngine, window: TimeWindow, out: impl Write) -> Result<Summary> {
    let options = engine.options();
    let owners = DeclaredFiles::new(DeclaredKind::Owners, options.owners_files.clone()).load()?;
    let grants = DeclaredFiles::new(DeclaredKind::Grants, options.grants_files.clone()).load()?;
    let declared = Declared {
        owners: owners.owners.clone(),
        grants: grants.grants.clone(),
    };
    let mut summary = Summary::default();
    let mut json = JsonWriter::new(out);
    json.raw(b"{\"metadata\":")?;
    json.value(&Metadata {
        source_kind: SOURCE_KIND,
    })?;
    json.raw(b",\"graph\":{\"nodes\":[\n")?;

    // Nodes: every end of an edge in the window, with the span its edges were seen in.
    let mut params = Vec::new();
    let filter = where_clause(&window_filter(
        window,
        "first_seen",
        "last_seen",
        &mut params,
    ));
    let sql = format!(
        "SELECT kind, id, min(first_seen) AS first_seen, max(last_seen) AS last_seen FROM ( \
           SELECT src_kind AS kind, src_id AS id, first_seen, last_seen FROM edges {filter} \
           UNION ALL \
           SELECT dst_kind AS kind, dst_id AS id, first_seen, last_seen FROM edges {filter} \
         ) GROUP BY kind, id ORDER BY kind, id"
    );
    let mut known: BTreeSet<(NodeKind, String)> = BTreeSet::new();
    let mut first = true;
    let mut stream = engine
        .execute(engine.prepare(&sql).await?, params.clone())
        .await?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let (kinds, ids) = (text(&batch, "kind")?, text(&batch, "id")?);
        let (firsts, lasts) = (int(&batch, "first_seen")?, int(&batch, "last_seen")?);
        for row in 0..batch.num_rows() {
            // Unknown kinds are counted with their edges below.
            let Some(kind) = NodeKind::parse(kinds.value(row)) else {
                continue;
            };
            let id = ids.value(row);
            json.element(
                &mut first,
                &observed_node(kind, id, firsts.value(row), lasts.value(row)),
            )?;
            summary.nodes += 1;
            known.insert((kind, id.to_string()));
        }
    }
    let (declared_nodes, declared_edges) = declared_graph(&mut known, &declared, &mut summary);
    for node in &declared_nodes {
        json.element(&mut first, node)?;
        summary.nodes += 1;
    }
    json.raw(b"\n],\"edges\":[\n")?;

    // Edges: one per (src, relation, dst), summed over flushes and partitions; the sample
    // trace is the one of the latest row.
    let sql = format!(
        "SELECT src_kind, src_id, relation, dst_kind, dst_id, \
           min(first_seen) AS first_seen, max(last_seen) AS last_seen, \
           sum(count) AS count, \
           first_value(sample_trace_id ORDER BY last_seen DESC) AS sample_trace_id \
         FROM edges {filter} \
         GROUP BY src_kind, src_id, relation, dst_kind, dst_id \
         ORDER BY src_kind, src_id, relation, dst_kind, dst_id"
    );
    let mut first = true;
    let mut stream = engine.execute(engine.prepare(&sql).await?, params).await?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let columns = [
            text(&batch, "src_kind")?,
            text(&batch, "src_id")?,
            text(&batch, "relation")?,
            text(&batch, "dst_kind")?,
            text(&batch, "dst_id")?,
            text(&batch, "sample_trace_id")?,
        ];
        let (firsts, lasts) = (int(&batch, "first_seen")?, int(&batch, "last_seen")?);
        let counts = column(&batch, "count", &DataType::UInt64)?;
        let counts = counts.as_primitive::<UInt64Type>();
        for row in 0..batch.num_rows() {
            let value = |i: usize| columns[i].value(row).to_string();
            let row = EdgeRow {
                src_kind: value(0),
                src_id: value(1),
                relation: value(2),
                dst_kind: value(3),
                dst_id: value(4),
                first_seen: firsts.value(row),
                last_seen: lasts.value(row),
                count: counts.value(row),
                sample_trace_id: value(5),
            };
            match observed_edge(&row) {
                Some(edge) => {
                    json.element(&mut first, &edge)?;
                    summary.edges += 1;
                }
                None => summary.skipped_edges += 1,
            }
        }
    }
    for edge in &declared_edges {
        json.element(&mut first, edge)?;
        summary.edges += 1;
    }

    // Which credentials carried the scopes grants name (from chains, as blast_radius does).
    let scopes: BTreeSet<&str> = declared
        .grants
        .iter()
        .filter(|g| g.subject_kind == "scope")
        .map(|g| g.subject_id.as_str())
        .collect();
    if !scopes.is_empty() {
        let mut params = Vec::new();
        let mut conditions = window_filter(window, "time", "time", &mut params);
        conditions.push("credential_fp IS NOT NULL".to_string());
        let sql = format!(
            "SELECT DISTINCT credential_fp, scope FROM ( \
               SELECT credential_fp, unnest(token_scopes) AS scope FROM chains {} \
             ) ORDER BY credential_fp, scope",
            where_clause(&conditions)
        );
        let mut stream = engine.execute(engine.prepare(&sql).await?, params).await?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let (credentials, scope_names) =
                (text(&batch, "credential_fp")?, text(&batch, "scope")?);
            for row in 0..batch.num_rows() {
                if credentials.is_null(row) || scope_names.is_null(row) {
                    continue;
                }
                let (credential, scope) = (credentials.value(row), scope_names.value(row));
                if scopes.contains(scope)
                    && known.contains(&(NodeKind::Credential, credential.to_string()))
                {
                    json.element(&mut first, &scope_edge(credential, scope))?;
                    summary.edges += 1;
                }
            }
        }
    }
    json.raw(b"\n]}}\n")?;
    json.flush()?;
    Ok(summary)
}

/// `name` of `batch`, cast to `to` (DataFusion may answer strings as views, sums as other
/// integer widths).
fn column(batch: &RecordBatch, name: &str, to: &DataType) -> Result<ArrayRef> {
    let array = batch
        .column_by_name(name)
        .ok_or_else(|| QueryError::storage("exporting the lineage graph", format!("no {name}")))?;
    cast(array, to).map_err(|e| QueryError::storage(format!("reading {name}"), e))
}

fn text(batch: &RecordBatch, name: &str) -> Result<arrow::array::StringArray> {
    Ok(column(batch, name, &DataType::Utf8)?
        .as_string::<i32>()
        .clone())
}

/// A timestamp column as ns since the epoch.
fn int(batch: &RecordBatch, name: &str) -> Result<arrow::array::Int64Array> {
    Ok(column(batch, name, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

/// Streams JSON: the structure is written as fixed punctuation, every value by serde_json.
struct JsonWriter<W: Write> {
    out: std::io::BufWriter<W>,
}

impl<W: Write> JsonWriter<W> {
    fn new(out: W) -> JsonWriter<W> {
        JsonWriter {
            out: std::io::BufWriter::with_capacity(1 << 16, out),
        }
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(write_error)
    }

    fn value<T: Serialize>(&mut self, value: &T) -> Result<()> {
        serde_json::to_writer(&mut self.out, value).map_err(write_error)
    }

    /// One array element, one per line, with the comma before all but the first.
    fn element<T: Serialize>(&mut self, first: &mut bool, value: &T) -> Result<()> {
        if !std::mem::replace(first, false) {
            self.raw(b",\n")?;
        }
        self.value(value)
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(write_error)
    }
}

fn write_error(e: impl ToString) -> QueryError {
    QueryError::storage("writing the BloodHound export", e)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{StringArray, TimestampNanosecondArray, UInt64Array};
    use serde_json::{Value, json};

    use super::*;
    use crate::QueryOptions;
    use crate::declared::{Grant, Owner};

    const T0: i64 = 1_795_341_600_000_000_000; // 2026-11-22T10:00:00Z

    fn row(src: (&str, &str), relation: &str, dst: (&str, &str)) -> EdgeRow {
        EdgeRow {
            src_kind: src.0.into(),
            src_id: src.1.into(),
            relation: relation.into(),
            dst_kind: dst.0.into(),
            dst_id: dst.1.into(),
            first_seen: T0 + 10_000_000,
            last_seen: T0 + 1_500_000_000,
            count: 3,
            sample_trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        }
    }

    /// Kinds and property names as OpenGraph accepts them.
    fn assert_valid_kind(kind: &str) {
        assert!(kind.starts_with("IDT_"), "{kind}");
        assert!(
            kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{kind}"
        );
    }

    fn assert_primitive_properties(value: &Value) {
        for (name, v) in value["properties"].as_object().expect("properties") {
            assert_eq!(name, &name.to_lowercase());
            assert!(
                v.is_string() || v.is_number() || v.is_boolean(),
                "{name}: {v}"
            );
        }
    }

    #[test]
    fn every_relation_and_kind_is_namespaced() {
        for relation in idtrail_schemas::edges::RELATIONS {
            assert_valid_kind(edge_kind(relation).expect(relation));
        }
        for kind in idtrail_schemas::edges::NODE_KINDS {
            let parsed = NodeKind::parse(kind).expect(kind);
            assert_eq!(parsed.name(), kind);
            assert_valid_kind(parsed.opengraph());
        }
        for kind in [NodeKind::Owner, NodeKind::Grant, NodeKind::Scope] {
            assert_valid_kind(kind.opengraph());
        }
        for kind in [OWNS, HAS_GRANT, PERMITS, HAS_SCOPE, SOURCE_KIND] {
            assert_valid_kind(kind);
        }
        assert_eq!(edge_kind("befriended"), None);
        assert_eq!(NodeKind::parse("scope"), None);
    }

    #[test]
    fn an_edge_row_maps_to_an_opengraph_edge() {
        let edge = observed_edge(&row(
            ("credential", "k1:00ff"),
            "invoked",
            ("operation", "orders DELETE /orders/{id}"),
        ))
        .expect("known relation");
        let value = serde_json::to_value(&edge).expect("json");
        assert_eq!(
            value,
            json!({
                "kind": "IDT_Invoked",
                "start": {"value": "IDT_Credential:k1:00ff", "match_by": "id"},
                "end": {"value": "IDT_Operation:orders DELETE /orders/{id}", "match_by": "id"},
                "properties": {
                    "relation": "invoked",
                    "count": 3,
                    "first_seen": 1_795_341_600,
                    "first_seen_utc": "2026-11-22T10:00:00.010Z",
                    "last_seen": 1_795_341_601,
                    "last_seen_utc": "2026-11-22T10:00:01.500Z",
                    "sample_trace_id": "0af7651916cd43dd8448eb211c80319c",
                }
            })
        );
        assert_primitive_properties(&value);
        assert!(observed_edge(&row(("user", "a"), "befriended", ("agent", "b"))).is_none());
        assert!(observed_edge(&row(("robot", "a"), "initiated", ("agent", "b"))).is_none());
    }

    #[test]
    fn a_user_and_an_agent_sharing_an_id_are_two_nodes() {
        let user = observed_node(NodeKind::User, "planner", T0, T0);
        let agent = observed_node(NodeKind::Agent, "planner", T0, T0);
        assert_ne!(user.id, agent.id);
        assert_eq!(agent.kinds, ["IDT_Agent", "IDT_Base"]);
        let value = serde_json::to_value(&agent).expect("json");
        assert_eq!(value["properties"]["name"], "planner");
        assert_eq!(value["properties"]["displayname"], "planner");
        assert_eq!(value["properties"]["idtrail_kind"], "agent");
        assert_primitive_properties(&value);
    }

    #[test]
    fn times_before_1970_round_down_to_whole_seconds() {
        let mut properties = Props::new();
        add_time(&mut properties, "first_seen", -1);
        assert_eq!(properties["first_seen"], Prop::Int(-1));
        assert_eq!(
            properties["first_seen_utc"],
            Prop::Text("1969-12-31T23:59:59.999Z".into())
        );
    }

    #[test]
    fn owners_and_grants_attach_to_known_nodes() {
        let mut known: BTreeSet<(NodeKind, String)> = [
            (NodeKind::Agent, "agt_planner".to_string()),
            (NodeKind::Resource, "db:shop.orders".to_string()),
            (NodeKind::Resource, "db:shop.items".to_string()),
            (NodeKind::Resource, "db:billing.payments".to_string()),
        ]
        .into_iter()
        .collect();
        let grant = |sk: &str, sid: &str, tk: &str, tp: &str| Grant {
            subject_kind: sk.into(),
            subject_id: sid.into(),
            target_kind: tk.into(),
            target_pattern: tp.into(),
        };
        let declared = Declared {
            owners: vec![
                Owner {
                    kind: "agent".into(),
                    id: "agt_planner".into(),
                    owner: "alice@example.com".into(),
                    approved: true,
                    expires_at: Some(T0),
                    revoked_at: None,
                },
                Owner {
                    kind: "robot".into(),
                    id: "r2".into(),
                    owner: "x".into(),
                    approved: false,
                    expires_at: None,
                    revoked_at: None,
                },
            ],
            grants: vec![
                grant("agent", "agt_planner", "resource", "db:shop.*"),
                grant("agent", "agt_planner", "resource", "db:shop.*"),
                grant("scope", "orders:write", "resource", "db:never.seen"),
                grant("agent", "agt_*", "nothing", "x"),
            ],
        };
        let mut summary = Summary::default();
        let (nodes, edges) = declared_graph(&mut known, &declared, &mut summary);
        assert_eq!(summary.skipped_declared, 2);
        let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "IDT_Owner:alice@example.com",
                "IDT_Grant:agent:agt_planner -> resource:db:shop.*",
                "IDT_Grant:scope:orders:write -> resource:db:never.seen",
                "IDT_Scope:orders:write",
                "IDT_Resource:db:never.seen",
            ]
        );
        let declared_only = serde_json::to_value(&nodes[4]).expect("json");
        assert_eq!(declared_only["properties"]["declared_only"], true);
        let edges: Vec<(String, &str, String)> = edges
            .iter()
            .map(|e| (e.start.value.clone(), e.kind, e.end.value.clone()))
            .collect();
        let e = |a: &str, k, b: &str| (a.to_string(), k, b.to_string());
        assert_eq!(
            edges,
            [
                e("IDT_Owner:alice@example.com", OWNS, "IDT_Agent:agt_planner"),
                e(
                    "IDT_Agent:agt_planner",
                    HAS_GRANT,
                    "IDT_Grant:agent:agt_planner -> resource:db:shop.*"
                ),
                e(
                    "IDT_Grant:agent:agt_planner -> resource:db:shop.*",
                    PERMITS,
                    "IDT_Resource:db:shop.items"
                ),
                e(
                    "IDT_Grant:agent:agt_planner -> resource:db:shop.*",
                    PERMITS,
                    "IDT_Resource:db:shop.orders"
                ),
                e(
                    "IDT_Scope:orders:write",
                    HAS_GRANT,
                    "IDT_Grant:scope:orders:write -> resource:db:never.seen"
                ),
                e(
                    "IDT_Grant:scope:orders:write -> resource:db:never.seen",
                    PERMITS,
                    "IDT_Resource:db:never.seen"
                ),
            ]
        );
    }

    #[test]
    fn the_window_binds_its_ends_as_parameters() {
        let mut params = Vec::new();
        let conditions = window_filter(
            TimeWindow {
                since: Some(5),
                until: Some(9),
            },
            "first_seen",
            "last_seen",
            &mut params,
        );
        assert_eq!(conditions, ["last_seen >= $1", "first_seen < $2"]);
        assert_eq!(
            params,
            [
                ScalarValue::TimestampNanosecond(Some(5), Some("UTC".into())),
                ScalarValue::TimestampNanosecond(Some(9), Some("UTC".into())),
            ]
        );
        assert_eq!(where_clause(&[]), "");
    }

    /// Writes edges rows (two flushes of one edge, and a user and an agent sharing an id) as a
    /// published edges file, as the stitcher would.
    fn write_edges(data_dir: &std::path::Path, rows: &[(EdgeRow, i64, i64)]) {
        let dir = data_dir.join("edges/date=2026-11-22/hour=10");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let strings = |f: fn(&EdgeRow) -> &str| -> ArrayRef {
            Arc::new(StringArray::from(
                rows.iter().map(|(r, _, _)| f(r)).collect::<Vec<_>>(),
            ))
        };
        let times = |f: fn(&(EdgeRow, i64, i64)) -> i64| -> ArrayRef {
            Arc::new(
                TimestampNanosecondArray::from(rows.iter().map(f).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            )
        };
        let batch = RecordBatch::try_new(
            idtrail_schemas::edges::schema(),
            vec![
                strings(|r| &r.src_kind),
                strings(|r| &r.src_id),
                strings(|r| &r.relation),
                strings(|r| &r.dst_kind),
                strings(|r| &r.dst_id),
                times(|r| r.1),
                times(|r| r.2),
                Arc::new(UInt64Array::from(
                    rows.iter().map(|(r, _, _)| r.count).collect::<Vec<_>>(),
                )),
                strings(|r| &r.sample_trace_id),
            ],
        )
        .expect("batch");
        let file = std::fs::File::create(dir.join("w-1.parquet")).expect("create");
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");
    }

    async fn export_of(data_dir: &std::path::Path, window: TimeWindow) -> (Value, Summary) {
        let mut options = QueryOptions::from_config(
            data_dir.to_path_buf(),
            &idtrail_collector::config::QueryConfig::default(),
        );
        options.memory_limit_bytes = 64 << 20;
        let engine = QueryEngine::new(options).await.expect("engine");
        let mut out = Vec::new();
        let summary = export(&engine, window, &mut out).await.expect("export");
        (serde_json::from_slice(&out).expect("valid JSON"), summary)
    }

    #[tokio::test]
    async fn flushes_of_one_edge_become_one_edge_and_the_window_narrows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let initiated = row(("user", "planner"), "initiated", ("agent", "planner"));
        let mut later = initiated.clone();
        later.count = 4;
        later.sample_trace_id = "ffffffffffffffffffffffffffffffff".into();
        let s = 1_000_000_000;
        write_edges(
            dir.path(),
            &[
                (initiated.clone(), T0, T0 + s),
                (later, T0 + 60 * s, T0 + 120 * s),
            ],
        );

        let (doc, summary) = export_of(dir.path(), TimeWindow::default()).await;
        assert_eq!(doc["metadata"]["source_kind"], "IDT_Base");
        assert_eq!(summary.nodes, 2);
        assert_eq!(summary.edges, 1);
        let nodes = doc["graph"]["nodes"].as_array().expect("nodes");
        let ids: Vec<&str> = nodes.iter().filter_map(|n| n["id"].as_str()).collect();
        assert_eq!(ids, ["IDT_Agent:planner", "IDT_User:planner"]);
        let edge = &doc["graph"]["edges"][0];
        assert_eq!(edge["kind"], "IDT_Initiated");
        assert_eq!(edge["start"]["value"], "IDT_User:planner");
        assert_eq!(edge["end"]["value"], "IDT_Agent:planner");
        assert_eq!(edge["properties"]["count"], 7);
        assert_eq!(edge["properties"]["first_seen"], T0 / s);
        assert_eq!(edge["properties"]["last_seen"], T0 / s + 120);
        assert_eq!(
            edge["properties"]["sample_trace_id"],
            "ffffffffffffffffffffffffffffffff"
        );

        // Only the second flush was seen after T0 + 30 s.
        let (doc, _) = export_of(
            dir.path(),
            TimeWindow {
                since: Some(T0 + 30 * s),
                until: None,
            },
        )
        .await;
        assert_eq!(doc["graph"]["edges"][0]["properties"]["count"], 4);
        // Nothing began before T0.
        let (doc, summary) = export_of(
            dir.path(),
            TimeWindow {
                since: None,
                until: Some(T0),
            },
        )
        .await;
        assert_eq!(summary, Summary::default());
        assert_eq!(doc["graph"], json!({"nodes": [], "edges": []}));
    }
}
