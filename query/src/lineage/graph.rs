//! The lineage graph in memory: every edge of the `edges` table, aggregated over files and
//! partitions, with adjacency in both directions.
//!
//! Traversals need random access by node, which a SQL recursive join does badly at depth 6; so
//! the graph is read once from the edges files and kept until the set of files changes. A new
//! edges file (every writer flush) reloads it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{TimestampNanosecondType, UInt64Type};
use idtrail_schemas::layout::published_files;
use idtrail_schemas::{chains, edges};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{QueryError, Result};

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
    index: HashMap<(Arc<str>, Arc<str>), NodeId>,
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
        self.index.get(&(Arc::from(kind), Arc::from(id))).copied()
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
        if let Some(&n) = self.index.get(&(Arc::from(kind), Arc::from(id))) {
            return n;
        }
        let key: (Arc<str>, Arc<str>) = (Arc::from(kind), Arc::from(id));
        let n = self.nodes.len() as NodeId;
        self.nodes.push(key.clone());
        self.index.insert(key, n);
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

type Stamp = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The graph of one data directory, reloaded when its edges (or chains) files change.
#[derive(Debug)]
pub struct GraphCache {
    data_dir: PathBuf,
    cached: Mutex<Option<(Stamp, bool, Arc<Graph>)>>,
}

impl GraphCache {
    pub fn new(data_dir: PathBuf) -> GraphCache {
        GraphCache {
            data_dir,
            cached: Mutex::new(None),
        }
    }

    /// The current graph; `with_scopes` also loads which credential carried which scope.
    pub fn get(&self, with_scopes: bool) -> Result<Arc<Graph>> {
        let mut files = list(&self.data_dir, edges::TABLE)?;
        if with_scopes {
            files.extend(list(&self.data_dir, chains::TABLE)?);
        }
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((stamp, scoped, graph)) = cached.as_ref()
            && *stamp == files
            && (*scoped || !with_scopes)
        {
            return Ok(graph.clone());
        }
        let edge_files: Vec<&Path> = files
            .iter()
            .map(|(p, _, _)| p.as_path())
            .filter(|p| p.starts_with(self.data_dir.join(edges::TABLE)))
            .collect();
        let batches = read_columns(
            &edge_files,
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
        )?;
        let mut graph = Graph::from_batches(&batches)?;
        if with_scopes {
            let chain_files: Vec<&Path> = files
                .iter()
                .map(|(p, _, _)| p.as_path())
                .filter(|p| p.starts_with(self.data_dir.join(chains::TABLE)))
                .collect();
            graph.add_scopes(&read_columns(
                &chain_files,
                &["credential_fp", "token_scopes"],
            )?);
        }
        let graph = Arc::new(graph);
        *cached = Some((files, with_scopes, graph.clone()));
        Ok(graph)
    }
}

fn list(data_dir: &Path, table: &str) -> Result<Stamp> {
    let files = published_files(data_dir, table, None)
        .map_err(|e| QueryError::storage(format!("listing {table} files"), e))?;
    Ok(files
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let size = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (path, size, modified)
        })
        .collect())
}

/// Reads `columns` of every file, both cores decoding.
fn read_columns(files: &[&Path], columns: &[&str]) -> Result<Vec<RecordBatch>> {
    let read = |path: &Path| -> Result<Vec<RecordBatch>> {
        let context = || format!("reading {}", path.display());
        let file = std::fs::File::open(path).map_err(|e| QueryError::storage(context(), e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| QueryError::storage(context(), e))?;
        // Roots by the Arrow schema: a list column has one leaf but counts as one root.
        let arrow_schema = builder.schema().clone();
        let indices: Vec<usize> = columns
            .iter()
            .filter_map(|name| arrow_schema.index_of(name).ok())
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(64 * 1024)
            .build()
            .map_err(|e| QueryError::storage(context(), e))?;
        reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| QueryError::storage(context(), e))
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || -> Result<Vec<RecordBatch>> {
                    let mut out = Vec::new();
                    for path in part {
                        out.extend(read(path)?);
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            let part = handle.join().map_err(|_| {
                QueryError::storage("reading lineage files", "a reader thread panicked")
            })??;
            all.extend(part);
        }
        Ok(all)
    })
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
