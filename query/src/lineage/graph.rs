//! The lineage graph in memory: every edge of the `edges` table, aggregated over files and
//! partitions, with adjacency in both directions.
//!
//! Traversals need random access by node, which a SQL recursive join does badly at depth 6; so
//! the graph is read once from the edges files and kept until the set of files changes. A new
//! edges file (every writer flush) reloads it.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{TimestampNanosecondType, UInt64Type};
use chrono::{DateTime, Utc};
use datafusion::catalog::{Session, TableProvider};
use futures::{TryStreamExt, future};
use idtrail_schemas::{chains, edges, layout};
use object_store::path::Path as ObjectPath;

use super::scan_columns;
use crate::error::{QueryError, Result};
use crate::store::TableStore;

pub type NodeId = u32;

/// The relations of the edges table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Relation {
    Initiated,
    ActsFor,
    Presented,
    DerivedFrom,
    Invoked,
    Called,
    Affected,
}

impl Relation {
    pub fn parse(s: &str) -> Option<Relation> {
        Some(match s {
            "initiated" => Relation::Initiated,
            "acts_for" => Relation::ActsFor,
            "presented" => Relation::Presented,
            "derived_from" => Relation::DerivedFrom,
            "invoked" => Relation::Invoked,
            "called" => Relation::Called,
            "affected" => Relation::Affected,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Relation::Initiated => "initiated",
            Relation::ActsFor => "acts_for",
            Relation::Presented => "presented",
            Relation::DerivedFrom => "derived_from",
            Relation::Invoked => "invoked",
            Relation::Called => "called",
            Relation::Affected => "affected",
        }
    }

    /// Whether following this relation from `src` to `dst` moves *downstream*: from who acts
    /// towards what was affected. `acts_for` (agent → the user it serves) and `derived_from`
    /// (new token → the one it was exchanged from) point upstream, so blast radius follows them
    /// backwards and `upstream` forwards.
    pub fn points_downstream(self) -> bool {
        !matches!(self, Relation::ActsFor | Relation::DerivedFrom)
    }
}

#[derive(Debug, Clone)]
pub struct Edge {
    pub src: NodeId,
    pub dst: NodeId,
    pub relation: Relation,
    pub first_seen: i64,
    pub last_seen: i64,
    pub count: u64,
}

#[derive(Debug, Default)]
pub struct Graph {
    nodes: Vec<(Arc<str>, Arc<str>)>,
    /// kind → id → node. Two levels so that a lookup borrows the row's `&str`s: a tuple key
    /// allocated two `Arc`s per edge end, 5 million times at 2.6M edges (most of a 3.3 s load).
    index: HashMap<Arc<str>, HashMap<Arc<str>, NodeId>>,
    pub edges: Vec<Edge>,
    outgoing: Vec<Vec<u32>>,
    incoming: Vec<Vec<u32>>,
    /// Credentials whose tokens carried a scope (only loaded when a grant names a scope).
    scopes: HashMap<String, Vec<NodeId>>,
}

impl Graph {
    pub fn node(&self, id: NodeId) -> (&str, &str) {
        let (kind, name) = &self.nodes[id as usize];
        (kind, name)
    }

    pub fn lookup(&self, kind: &str, id: &str) -> Option<NodeId> {
        self.index.get(kind)?.get(id).copied()
    }

    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &str, &str)> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, (k, id))| (i as NodeId, &**k, &**id))
    }

    pub fn outgoing(&self, node: NodeId) -> impl Iterator<Item = &Edge> {
        self.outgoing[node as usize]
            .iter()
            .map(|&e| &self.edges[e as usize])
    }

    pub fn incoming(&self, node: NodeId) -> impl Iterator<Item = &Edge> {
        self.incoming[node as usize]
            .iter()
            .map(|&e| &self.edges[e as usize])
    }

    pub fn credentials_with_scope(&self, scope: &str) -> &[NodeId] {
        self.scopes.get(scope).map_or(&[], Vec::as_slice)
    }

    fn intern(&mut self, kind: &str, id: &str) -> NodeId {
        if let Some(&n) = self.index.get(kind).and_then(|ids| ids.get(id)) {
            return n;
        }
        let kind: Arc<str> = match self.index.get_key_value(kind) {
            Some((kind, _)) => kind.clone(),
            None => Arc::from(kind),
        };
        let id: Arc<str> = Arc::from(id);
        let n = self.nodes.len() as NodeId;
        self.nodes.push((kind.clone(), id.clone()));
        self.index.entry(kind).or_default().insert(id, n);
        self.outgoing.push(Vec::new());
        self.incoming.push(Vec::new());
        n
    }

    /// Builds the graph from edges batches, summing rows of one edge across flushes.
    fn from_batches(batches: &[RecordBatch]) -> Result<Graph> {
        let mut graph = Graph::default();
        let mut seen: HashMap<(NodeId, Relation, NodeId), u32> = HashMap::new();
        for batch in batches {
            let text = |name: &str| {
                batch
                    .column_by_name(name)
                    .and_then(|c| c.as_string_opt::<i32>())
                    .ok_or_else(|| {
                        QueryError::storage("reading edges", format!("column {name} missing"))
                    })
            };
            let (src_kind, src_id, relation, dst_kind, dst_id) = (
                text("src_kind")?,
                text("src_id")?,
                text("relation")?,
                text("dst_kind")?,
                text("dst_id")?,
            );
            let time = |name: &str| {
                batch
                    .column_by_name(name)
                    .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
                    .ok_or_else(|| {
                        QueryError::storage("reading edges", format!("column {name} missing"))
                    })
            };
            let (first_seen, last_seen) = (time("first_seen")?, time("last_seen")?);
            let count = batch
                .column_by_name("count")
                .and_then(|c| c.as_primitive_opt::<UInt64Type>())
                .ok_or_else(|| QueryError::storage("reading edges", "column count missing"))?;
            for row in 0..batch.num_rows() {
                let Some(rel) = Relation::parse(relation.value(row)) else {
                    continue;
                };
                let src = graph.intern(src_kind.value(row), src_id.value(row));
                let dst = graph.intern(dst_kind.value(row), dst_id.value(row));
                let (first, last, n) = (
                    first_seen.value(row),
                    last_seen.value(row),
                    count.value(row),
                );
                match seen.get(&(src, rel, dst)) {
                    Some(&e) => {
                        let edge = &mut graph.edges[e as usize];
                        edge.first_seen = edge.first_seen.min(first);
                        edge.last_seen = edge.last_seen.max(last);
                        edge.count += n;
                    }
                    None => {
                        let e = graph.edges.len() as u32;
                        seen.insert((src, rel, dst), e);
                        graph.edges.push(Edge {
                            src,
                            dst,
                            relation: rel,
                            first_seen: first,
                            last_seen: last,
                            count: n,
                        });
                        graph.outgoing[src as usize].push(e);
                        graph.incoming[dst as usize].push(e);
                    }
                }
            }
        }
        Ok(graph)
    }

    /// Adds `credential_fp → scopes` from chains batches.
    fn add_scopes(&mut self, batches: &[RecordBatch]) {
        let mut scopes: HashMap<String, Vec<NodeId>> = HashMap::new();
        for batch in batches {
            let (Some(fps), Some(lists)) = (
                batch
                    .column_by_name("credential_fp")
                    .and_then(|c| c.as_string_opt::<i32>()),
                batch
                    .column_by_name("token_scopes")
                    .and_then(|c| c.as_list_opt::<i32>()),
            ) else {
                continue;
            };
            for row in 0..batch.num_rows() {
                if fps.is_null(row) || lists.is_null(row) {
                    continue;
                }
                let Some(node) = self.lookup("credential", fps.value(row)) else {
                    continue;
                };
                let list = lists.value(row);
                let Some(values) = list.as_string_opt::<i32>() else {
                    continue;
                };
                for scope in values.iter().flatten() {
                    let holders = scopes.entry(scope.to_string()).or_default();
                    if !holders.contains(&node) {
                        holders.push(node);
                    }
                }
            }
        }
        self.scopes = scopes;
    }
}

/// The published files of the tables a graph was built from, with size and modification
/// time: the graph is rebuilt when this changes.
type Stamp = Vec<(ObjectPath, u64, DateTime<Utc>)>;

/// The graph of one store, reloaded when its edges (or chains) files change.
pub struct GraphCache {
    store: TableStore,
    edges: Arc<dyn TableProvider>,
    chains: Arc<dyn TableProvider>,
    cached: tokio::sync::Mutex<Option<(Stamp, bool, Arc<Graph>)>>,
}

impl std::fmt::Debug for GraphCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphCache").finish_non_exhaustive()
    }
}

impl GraphCache {
    /// The graph of the `edges` table (and the scopes of `chains`) of `store`.
    pub fn new(
        store: TableStore,
        edges: Arc<dyn TableProvider>,
        chains: Arc<dyn TableProvider>,
    ) -> GraphCache {
        GraphCache {
            store,
            edges,
            chains,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The current graph; `with_scopes` also loads which credential carried which scope.
    /// Concurrent callers wait for one load rather than each reading every file.
    pub async fn get(&self, session: &dyn Session, with_scopes: bool) -> Result<Arc<Graph>> {
        let mut stamp = self.list(edges::TABLE).await?;
        if with_scopes {
            stamp.extend(self.list(chains::TABLE).await?);
        }
        let mut cached = self.cached.lock().await;
        if let Some((cached_stamp, scoped, graph)) = cached.as_ref()
            && *cached_stamp == stamp
            && (*scoped || !with_scopes)
        {
            return Ok(graph.clone());
        }
        // Read through the same listing tables as every query (any store, both cores); the
        // stamp was taken first, so a file published meanwhile at worst triggers one more load.
        let batches = scan_columns(
            session,
            &self.edges,
            edges::TABLE,
            &[
                "src_kind",
                "src_id",
                "relation",
                "dst_kind",
                "dst_id",
                "first_seen",
                "last_seen",
                "count",
            ],
            None,
        )
        .await?;
        let scopes = match with_scopes {
            true => Some(
                scan_columns(
                    session,
                    &self.chains,
                    chains::TABLE,
                    &["credential_fp", "token_scopes"],
                    None,
                )
                .await?,
            ),
            false => None,
        };
        // Building the adjacency takes seconds at millions of edges: off the async workers.
        let graph = tokio::task::spawn_blocking(move || -> Result<Graph> {
            let mut graph = Graph::from_batches(&batches)?;
            if let Some(scopes) = scopes {
                graph.add_scopes(&scopes);
            }
            Ok(graph)
        })
        .await
        .map_err(|e| QueryError::Execution(format!("building the lineage graph: {e}")))??;
        let graph = Arc::new(graph);
        *cached = Some((stamp, with_scopes, graph.clone()));
        Ok(graph)
    }

    /// The published Parquet files of `table`, in a stable order. Hidden files (a writer's
    /// temporary ones) are not published yet.
    async fn list(&self, table: &str) -> Result<Stamp> {
        let prefix = self.store.table_prefix(table);
        let mut files: Stamp = self
            .store
            .store()
            .list(Some(&prefix))
            .try_filter(|meta| {
                let name = meta.location.filename().unwrap_or_default();
                future::ready(layout::is_published_name(name))
            })
            .map_ok(|meta| (meta.location, meta.size, meta.last_modified))
            .try_collect()
            .await
            .map_err(|e| QueryError::storage(format!("listing {table} files"), e))?;
        files.sort();
        Ok(files)
    }
}

#[cfg(test)]
impl Graph {
    /// A graph of `(src_kind, src_id, relation, dst_kind, dst_id)` edges, each seen once at
    /// time 1000.
    pub fn of_edges(rows: &[(&str, &str, &str, &str, &str)]) -> Graph {
        use arrow::array::{StringArray, TimestampNanosecondArray, UInt64Array};
        let column = |i: usize| -> Arc<dyn Array> {
            Arc::new(StringArray::from(
                rows.iter()
                    .map(|r| [r.0, r.1, r.2, r.3, r.4][i])
                    .collect::<Vec<_>>(),
            ))
        };
        let times = || -> Arc<dyn Array> {
            Arc::new(TimestampNanosecondArray::from(vec![1000; rows.len()]).with_timezone("UTC"))
        };
        let batch = RecordBatch::try_new(
            edges::schema(),
            vec![
                column(0),
                column(1),
                column(2),
                column(3),
                column(4),
                times(),
                times(),
                Arc::new(UInt64Array::from(vec![1; rows.len()])),
                column(1),
            ],
        )
        .expect("edges batch");
        Graph::from_batches(&[batch]).expect("graph")
    }
}
