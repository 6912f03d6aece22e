//! The lineage graph in memory: every edge of the `edges` table, aggregated over files and
//! partitions, with adjacency in both directions.
//!
//! Traversals need random access by node, which a SQL recursive join does badly at depth 6; so
//! the graph is read once from the edges files and kept. New edges files (a flush every few
//! seconds) are read into it as they appear, and compacted files that hold what it already has
//! are recognised as such ([`super::graph_files`]); anything else reads every file again.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{TimestampNanosecondType, UInt64Type};
use chrono::{DateTime, Utc};
use futures::{TryStreamExt, future};
use idtrail_schemas::{chains, edges, layout};
use object_store::path::Path as ObjectPath;

use super::graph_files;
use crate::error::{QueryError, Result};
use crate::store::TableStore;

/// foldhash rather than std's SipHash: node ids and edge keys come from our own files, not from
/// a client that could aim collisions at them, and SipHash was a tenth of a graph's load
/// (BENCHMARKS.md, "One copy of the scope's chains").
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

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

/// Cloned only when new files arrive while a query still holds the previous graph.
#[derive(Debug, Default, Clone)]
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
        // Sized up front: growing these a doubling at a time copied them over and over, and
        // the kernel zeroing fresh pages for each copy was the largest part of a load.
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        graph.edges.reserve(rows);
        let mut seen = HashMap::with_capacity_and_hasher(rows, Default::default());
        graph.add_edges(batches, Some(&mut seen))?;
        Ok(graph)
    }

    /// The edge `src -[relation]-> dst`, looked up through the shorter adjacency list (for a few
    /// new rows, cheaper than keeping a map of every edge alive beside the graph).
    fn edge_between(&self, src: NodeId, relation: Relation, dst: NodeId) -> Option<u32> {
        let (out, inc) = (&self.outgoing[src as usize], &self.incoming[dst as usize]);
        let candidates = if out.len() <= inc.len() { out } else { inc };
        candidates.iter().copied().find(|&e| {
            let edge = &self.edges[e as usize];
            edge.src == src && edge.dst == dst && edge.relation == relation
        })
    }

    /// Adds edges rows, summing them into edges already present. `seen` indexes the edges when
    /// many rows are added at once (a full load); without it each row searches the adjacency.
    fn add_edges(
        &mut self,
        batches: &[RecordBatch],
        mut seen: Option<&mut HashMap<(NodeId, Relation, NodeId), u32>>,
    ) -> Result<()> {
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
                let src = self.intern(src_kind.value(row), src_id.value(row));
                let dst = self.intern(dst_kind.value(row), dst_id.value(row));
                let (first, last, n) = (
                    first_seen.value(row),
                    last_seen.value(row),
                    count.value(row),
                );
                let existing = match seen.as_deref() {
                    Some(seen) => seen.get(&(src, rel, dst)).copied(),
                    None => self.edge_between(src, rel, dst),
                };
                match existing {
                    Some(e) => {
                        let edge = &mut self.edges[e as usize];
                        edge.first_seen = edge.first_seen.min(first);
                        edge.last_seen = edge.last_seen.max(last);
                        edge.count += n;
                    }
                    None => {
                        let e = self.edges.len() as u32;
                        if let Some(seen) = seen.as_deref_mut() {
                            seen.insert((src, rel, dst), e);
                        }
                        self.edges.push(Edge {
                            src,
                            dst,
                            relation: rel,
                            first_seen: first,
                            last_seen: last,
                            count: n,
                        });
                        self.outgoing[src as usize].push(e);
                        self.incoming[dst as usize].push(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds `credential_fp → scopes` from chains batches.
    fn add_scopes(&mut self, batches: &[RecordBatch]) {
        let mut scopes = std::mem::take(&mut self.scopes);
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

/// The published Parquet files of the tables a graph was built from, with size and modification
/// time: what changed since is read into the graph ([`super::graph_files`]).
pub(super) type Stamp = Vec<(ObjectPath, u64, DateTime<Utc>)>;

/// Columns of `edges` the graph holds.
const EDGE_COLUMNS: [&str; 8] = [
    "src_kind",
    "src_id",
    "relation",
    "dst_kind",
    "dst_id",
    "first_seen",
    "last_seen",
    "count",
];
/// Columns of `chains` behind [`Graph::credentials_with_scope`].
const SCOPE_COLUMNS: [&str; 2] = ["credential_fp", "token_scopes"];

/// A graph and exactly the files it was built from.
struct Loaded {
    edges: Stamp,
    /// The chains files its scopes came from, when they were loaded.
    chains: Option<Stamp>,
    graph: Arc<Graph>,
}

/// The graph of one store, kept up to date with its edges (and chains) files.
pub struct GraphCache {
    store: TableStore,
    cached: tokio::sync::Mutex<Option<Loaded>>,
}

impl std::fmt::Debug for GraphCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphCache").finish_non_exhaustive()
    }
}

impl GraphCache {
    /// The graph of the `edges` table (and the scopes of `chains`) of `store`.
    pub fn new(store: TableStore) -> GraphCache {
        GraphCache {
            store,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The current graph; `with_scopes` also loads which credential carried which scope.
    /// Concurrent callers wait for one load rather than each reading every file. Files
    /// published since the last call are added to the graph (a collector publishes every few
    /// seconds, and a full load takes seconds at millions of edges); only a change that adding
    /// cannot express (a file removed other than by compaction) reads everything again.
    pub async fn get(&self, with_scopes: bool) -> Result<Arc<Graph>> {
        let edges_now = self.list(edges::TABLE).await?;
        let chains_now = match with_scopes {
            true => Some(self.list(chains::TABLE).await?),
            false => None,
        };
        let mut cached = self.cached.lock().await;
        if let Some(loaded) = cached.take() {
            match self.update(loaded, &edges_now, chains_now.as_ref()).await? {
                Ok(updated) => {
                    let graph = updated.graph.clone();
                    *cached = Some(updated);
                    return Ok(graph);
                }
                Err(stale) => drop(stale),
            }
        }
        // Exactly the listed files are read (not a fresh listing), so the next update's
        // difference is exactly what this graph lacks.
        let paths = |stamp: &Stamp| stamp.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
        let batches =
            graph_files::read_columns(&self.store, &paths(&edges_now), &EDGE_COLUMNS).await?;
        let scopes = match &chains_now {
            Some(chains) => {
                Some(graph_files::read_columns(&self.store, &paths(chains), &SCOPE_COLUMNS).await?)
            }
            None => None,
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
        tracing::debug!(
            files = edges_now.len(),
            edges = graph.edges.len(),
            "lineage graph loaded"
        );
        let graph = Arc::new(graph);
        *cached = Some(Loaded {
            edges: edges_now,
            chains: chains_now,
            graph: graph.clone(),
        });
        Ok(graph)
    }

    /// `loaded` brought up to the files listed now by reading only the new ones; `Err` gives
    /// it back when that cannot be done (or scopes are wanted and were never loaded).
    async fn update(
        &self,
        loaded: Loaded,
        edges_now: &Stamp,
        chains_now: Option<&Stamp>,
    ) -> Result<std::result::Result<Loaded, Loaded>> {
        if chains_now.is_some() && loaded.chains.is_none() {
            return Ok(Err(loaded));
        }
        let Some(new_edges) =
            graph_files::files_to_add(&self.store, &loaded.edges, edges_now).await?
        else {
            return Ok(Err(loaded));
        };
        let new_chains = match (&loaded.chains, chains_now) {
            (Some(then), Some(now)) => {
                match graph_files::files_to_add(&self.store, then, now).await? {
                    Some(files) => files,
                    None => return Ok(Err(loaded)),
                }
            }
            _ => Vec::new(),
        };
        let mut graph = loaded.graph;
        if !new_edges.is_empty() || !new_chains.is_empty() {
            let edges = graph_files::read_columns(&self.store, &new_edges, &EDGE_COLUMNS).await?;
            let scopes =
                graph_files::read_columns(&self.store, &new_chains, &SCOPE_COLUMNS).await?;
            graph = tokio::task::spawn_blocking(move || -> Result<Arc<Graph>> {
                // In place unless a query still holds this graph; then on a copy.
                let updating = Arc::make_mut(&mut graph);
                updating.add_edges(&edges, None)?;
                updating.add_scopes(&scopes);
                Ok(graph)
            })
            .await
            .map_err(|e| QueryError::Execution(format!("updating the lineage graph: {e}")))??;
            tracing::debug!(
                edges_files = new_edges.len(),
                chains_files = new_chains.len(),
                "lineage graph updated with new files"
            );
        }
        Ok(Ok(Loaded {
            edges: edges_now.clone(),
            chains: chains_now.cloned().or(loaded.chains),
            graph,
        }))
    }

    /// The published Parquet files of `table`, in a stable order. Hidden files (a writer's
    /// temporary ones) are not published yet, and the store's listing leaves out files a
    /// compacted one supersedes.
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
