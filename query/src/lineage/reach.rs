//! `blast_radius` and `upstream`: breadth-first walks of the lineage graph, downstream (what an
//! identity reached, or could reach through its grants) and upstream (who stands behind it).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, ListBuilder, RecordBatch, StringBuilder, TimestampNanosecondBuilder,
    UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::graph::{Edge, Graph, NodeId};
use crate::declared::{Declared, glob_matches};
use crate::error::{QueryError, Result};

/// How a row was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The identity asked about.
    Start,
    /// Through edges: traces show it happened.
    Observed,
    /// Only through grants (and edges after a grant): allowed, never seen.
    Potential,
    /// An owner declared in the owners files.
    Declared,
}

impl Reach {
    fn name(self) -> &'static str {
        match self {
            Reach::Start => "start",
            Reach::Observed => "observed",
            Reach::Potential => "potential",
            Reach::Declared => "declared",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Node(NodeId),
    /// A grant pattern no known node matches, or an identity the graph has never seen.
    Named(String, String),
    /// The declared owner of the identity in row `.0`.
    Owner(usize, String),
}

struct Row {
    key: Key,
    depth: u32,
    parent: Option<usize>,
    relation: Option<&'static str>,
    reversed: Option<bool>,
    edge: Option<(i64, i64, u64)>,
    reach: Reach,
    /// blast_radius: a grant covers it; upstream: the owner vouches for it now.
    flag: Option<bool>,
}

impl Row {
    /// The identity asked about, at depth 0.
    fn start(key: Key, flag: Option<bool>) -> Row {
        Row {
            key,
            depth: 0,
            parent: None,
            relation: None,
            reversed: None,
            edge: None,
            reach: Reach::Start,
            flag,
        }
    }
}

struct Walk<'g> {
    graph: &'g Graph,
    rows: Vec<Row>,
    seen: HashMap<Key, usize>,
}

impl<'g> Walk<'g> {
    /// A walk from `start`: a node of `graph`, or an identity it has never seen.
    fn new(graph: &'g Graph, start: Key, flag: Option<bool>) -> Walk<'g> {
        let mut walk = Walk {
            graph,
            rows: Vec::new(),
            seen: HashMap::new(),
        };
        walk.push(Row::start(start, flag));
        walk
    }

    /// Adds a row unless its key was reached already; returns its index if new.
    fn push(&mut self, row: Row) -> Option<usize> {
        if self.seen.contains_key(&row.key) {
            return None;
        }
        let i = self.rows.len();
        self.seen.insert(row.key.clone(), i);
        self.rows.push(row);
        Some(i)
    }

    /// Follows edges from row `i`, `downstream` or not, adding new rows with `reach`.
    fn expand(
        &mut self,
        i: usize,
        downstream: bool,
        since: Option<i64>,
        reach: Reach,
    ) -> Vec<usize> {
        let Key::Node(node) = self.rows[i].key else {
            return Vec::new();
        };
        let depth = self.rows[i].depth + 1;
        let graph = self.graph;
        let forward = graph
            .outgoing(node)
            .filter(|e| e.relation.points_downstream() == downstream)
            .map(|e| (e, e.dst, false));
        let backward = graph
            .incoming(node)
            .filter(|e| e.relation.points_downstream() != downstream)
            .map(|e| (e, e.src, true));
        let steps: Vec<(&Edge, NodeId, bool)> = forward
            .chain(backward)
            .filter(|(e, _, _)| since.is_none_or(|t| e.last_seen >= t))
            .collect();
        let mut added = Vec::new();
        for (edge, next, reversed) in steps {
            let row = Row {
                key: Key::Node(next),
                depth,
                parent: Some(i),
                relation: Some(edge.relation.name()),
                reversed: Some(reversed),
                edge: Some((edge.first_seen, edge.last_seen, edge.count)),
                reach,
                flag: None,
            };
            added.extend(self.push(row));
        }
        added
    }

    fn breadth_first(
        &mut self,
        from: Vec<usize>,
        downstream: bool,
        max_depth: u32,
        since: Option<i64>,
        reach: Reach,
    ) {
        let mut queue: VecDeque<usize> = from.into();
        while let Some(i) = queue.pop_front() {
            if self.rows[i].depth < max_depth {
                queue.extend(self.expand(i, downstream, since, reach));
            }
        }
    }

    fn name(&self, key: &Key) -> (String, String) {
        match key {
            Key::Node(n) => {
                let (kind, id) = self.graph.node(*n);
                (kind.to_string(), id.to_string())
            }
            Key::Named(kind, id) => (kind.clone(), id.clone()),
            Key::Owner(_, owner) => ("owner".to_string(), owner.clone()),
        }
    }

    fn into_batch(self, schema: SchemaRef) -> Result<RecordBatch> {
        let mut kind = StringBuilder::new();
        let mut id = StringBuilder::new();
        let mut depth = UInt32Builder::new();
        let mut path = ListBuilder::new(StringBuilder::new());
        let mut relation = StringBuilder::new();
        let mut reversed = BooleanBuilder::new();
        let mut reach = StringBuilder::new();
        let mut flag = BooleanBuilder::new();
        let mut first_seen = TimestampNanosecondBuilder::new().with_timezone("UTC");
        let mut last_seen = TimestampNanosecondBuilder::new().with_timezone("UTC");
        let mut count = UInt64Builder::new();
        let names: Vec<(String, String)> = self.rows.iter().map(|r| self.name(&r.key)).collect();
        for (i, row) in self.rows.iter().enumerate() {
            kind.append_value(&names[i].0);
            id.append_value(&names[i].1);
            depth.append_value(row.depth);
            let mut chain = vec![i];
            let mut at = row.parent;
            while let Some(p) = at {
                chain.push(p);
                at = self.rows[p].parent;
            }
            for &p in chain.iter().rev() {
                path.values()
                    .append_value(format!("{}:{}", names[p].0, names[p].1));
            }
            path.append(true);
            relation.append_option(row.relation);
            reversed.append_option(row.reversed);
            reach.append_value(row.reach.name());
            flag.append_option(row.flag);
            first_seen.append_option(row.edge.map(|e| e.0));
            last_seen.append_option(row.edge.map(|e| e.1));
            count.append_option(row.edge.map(|e| e.2));
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(kind.finish()),
            Arc::new(id.finish()),
            Arc::new(depth.finish()),
            Arc::new(path.finish()),
            Arc::new(relation.finish()),
            Arc::new(reversed.finish()),
            Arc::new(reach.finish()),
            Arc::new(flag.finish()),
            Arc::new(first_seen.finish()),
            Arc::new(last_seen.finish()),
            Arc::new(count.finish()),
        ];
        RecordBatch::try_new(schema, columns).map_err(|e| QueryError::Execution(e.to_string()))
    }
}

fn schema(flag: &str) -> SchemaRef {
    let ts = |name: &str| {
        Field::new(
            name,
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            true,
        )
    };
    Arc::new(Schema::new(vec![
        Field::new("kind", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("depth", DataType::UInt32, false),
        Field::new(
            "path",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new("relation", DataType::Utf8, true),
        Field::new("reversed", DataType::Boolean, true),
        Field::new("reach", DataType::Utf8, false),
        Field::new(flag, DataType::Boolean, true),
        ts("first_seen"),
        ts("last_seen"),
        Field::new("count", DataType::UInt64, true),
    ]))
}

/// Columns of `blast_radius`: node, depth, path from the start (`kind:id` each), the relation
/// that reached it (`reversed` when walked against its direction, as `acts_for` is), `reach`
/// (start, observed, potential), `granted` (a grant of something reached covers it), and the
/// reaching edge's first_seen, last_seen and count.
pub fn blast_radius_schema() -> SchemaRef {
    schema("granted")
}

/// Columns of `upstream`: as [`blast_radius_schema`], with `reach` = declared for owners and
/// `approved` = the owner vouches for that identity now (approved, not expired nor revoked).
pub fn upstream_schema() -> SchemaRef {
    schema("approved")
}

/// Everything reachable from `start` within `max_depth` hops: observed through edges seen since
/// `since`, then potential through the grants of every reached identity.
pub fn blast_radius(
    graph: &Graph,
    declared: &Declared,
    start: (&str, &str),
    max_depth: u32,
    since: Option<i64>,
) -> Result<RecordBatch> {
    let Some(node) = graph.lookup(start.0, start.1) else {
        return empty(blast_radius_schema(), start);
    };
    let mut walk = Walk::new(graph, Key::Node(node), None);
    walk.breadth_first(vec![0], true, max_depth, since, Reach::Observed);

    // Grants: every reached identity's grants extend the radius; what they add is potential.
    let mut targets: HashMap<usize, Vec<NodeId>> = HashMap::new();
    let mut queue: VecDeque<usize> = (0..walk.rows.len()).collect();
    while let Some(i) = queue.pop_front() {
        if walk.rows[i].depth >= max_depth {
            continue;
        }
        let Key::Node(subject) = walk.rows[i].key else {
            continue;
        };
        let (kind, id) = graph.node(subject);
        for (g, grant) in declared.grants.iter().enumerate() {
            let applies = (grant.subject_kind == kind && glob_matches(&grant.subject_id, id))
                || (grant.subject_kind == "scope"
                    && kind == "credential"
                    && graph
                        .credentials_with_scope(&grant.subject_id)
                        .contains(&subject));
            if !applies {
                continue;
            }
            let matched = targets.entry(g).or_insert_with(|| {
                graph
                    .nodes()
                    .filter(|(_, k, n)| *k == grant.target_kind && grant.permits(n))
                    .map(|(n, _, _)| n)
                    .collect()
            });
            let keys: Vec<Key> = if matched.is_empty() {
                vec![Key::Named(
                    grant.target_kind.clone(),
                    grant.target_pattern.clone(),
                )]
            } else {
                matched.iter().map(|&n| Key::Node(n)).collect()
            };
            for key in keys {
                if let Some(&existing) = walk.seen.get(&key) {
                    walk.rows[existing].flag = Some(true);
                    continue;
                }
                let row = Row {
                    key,
                    depth: walk.rows[i].depth + 1,
                    parent: Some(i),
                    relation: Some("granted"),
                    reversed: Some(false),
                    edge: None,
                    reach: Reach::Potential,
                    flag: Some(true),
                };
                if let Some(added) = walk.push(row) {
                    queue.push_back(added);
                    let further = walk.expand_potential(added, max_depth);
                    queue.extend(further);
                }
            }
        }
    }
    for row in &mut walk.rows {
        row.flag.get_or_insert(false);
    }
    walk.into_batch(blast_radius_schema())
}

impl Walk<'_> {
    /// Edges below a potential node are potential too; returns the rows added.
    fn expand_potential(&mut self, from: usize, max_depth: u32) -> Vec<usize> {
        let mut added = Vec::new();
        let mut queue = VecDeque::from([from]);
        while let Some(i) = queue.pop_front() {
            if self.rows[i].depth < max_depth {
                let new = self.expand(i, true, None, Reach::Potential);
                added.extend(new.iter().copied());
                queue.extend(new);
            }
        }
        added
    }
}

/// Who stands behind `start`: the users, agents and presenters upstream within `max_depth`
/// hops, the credentials its tokens were exchanged from, and the declared owner of each.
pub fn upstream(
    graph: &Graph,
    declared: &Declared,
    start: (&str, &str),
    max_depth: u32,
    now: i64,
) -> Result<RecordBatch> {
    let Some(node) = graph.lookup(start.0, start.1) else {
        let unseen = Key::Named(start.0.to_string(), start.1.to_string());
        let mut walk = Walk::new(graph, unseen, None);
        add_owners(&mut walk, declared, now);
        return walk.into_batch(upstream_schema());
    };
    let mut walk = Walk::new(graph, Key::Node(node), None);
    walk.breadth_first(vec![0], false, max_depth, None, Reach::Observed);
    add_owners(&mut walk, declared, now);
    walk.into_batch(upstream_schema())
}

fn add_owners(walk: &mut Walk<'_>, declared: &Declared, now: i64) {
    for i in 0..walk.rows.len() {
        let (kind, id) = walk.name(&walk.rows[i].key);
        for owner in declared
            .owners
            .iter()
            .filter(|o| o.kind == kind && o.id == id)
        {
            let row = Row {
                key: Key::Owner(i, owner.owner.clone()),
                depth: walk.rows[i].depth + 1,
                parent: Some(i),
                relation: Some("owned_by"),
                reversed: Some(false),
                edge: None,
                reach: Reach::Declared,
                flag: Some(owner.vouches_at(now)),
            };
            walk.push(row);
        }
    }
}

/// An identity the graph has never seen: one `start` row, so the answer says so plainly.
fn empty(schema: SchemaRef, start: (&str, &str)) -> Result<RecordBatch> {
    let graph = Graph::default();
    let unseen = Key::Named(start.0.to_string(), start.1.to_string());
    Walk::new(&graph, unseen, Some(false)).into_batch(schema)
}

#[cfg(test)]
mod tests {
    use arrow::array::AsArray;

    use super::*;
    use crate::declared::{Grant, Owner};

    fn graph() -> Graph {
        Graph::of_edges(&[
            ("user", "alice", "initiated", "agent", "planner"),
            ("agent", "planner", "acts_for", "user", "alice"),
            ("agent", "sub", "acts_for", "agent", "planner"),
            ("agent", "sub", "presented", "credential", "tok-delegated"),
            (
                "credential",
                "tok-delegated",
                "derived_from",
                "credential",
                "tok-alice",
            ),
            ("agent", "planner", "presented", "credential", "tok-alice"),
            (
                "credential",
                "tok-delegated",
                "invoked",
                "operation",
                "gw DELETE /orders",
            ),
            (
                "operation",
                "gw DELETE /orders",
                "called",
                "operation",
                "orders DELETE /orders",
            ),
            (
                "operation",
                "orders DELETE /orders",
                "affected",
                "resource",
                "db:shop.orders",
            ),
            (
                "operation",
                "billing GET /x",
                "affected",
                "resource",
                "db:billing.x",
            ),
        ])
    }

    fn rows(batch: &RecordBatch) -> Vec<(String, u32, String)> {
        let kind = batch.column(0).as_string::<i32>();
        let id = batch.column(1).as_string::<i32>();
        let depth = batch
            .column(2)
            .as_primitive::<arrow::datatypes::UInt32Type>();
        let reach = batch.column(6).as_string::<i32>();
        (0..batch.num_rows())
            .map(|i| {
                (
                    format!("{}:{}", kind.value(i), id.value(i)),
                    depth.value(i),
                    reach.value(i).to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn blast_radius_follows_delegation_down_to_the_resource() {
        let batch =
            blast_radius(&graph(), &Declared::default(), ("user", "alice"), 6, None).unwrap();
        let reached: Vec<String> = rows(&batch).into_iter().map(|r| r.0).collect();
        assert_eq!(
            reached,
            [
                "user:alice",
                "agent:planner",
                "credential:tok-alice",
                "agent:sub",
                "credential:tok-delegated",
                "operation:gw DELETE /orders",
                "operation:orders DELETE /orders",
                "resource:db:shop.orders",
            ]
        );
        // Depth limits the walk.
        let shallow =
            blast_radius(&graph(), &Declared::default(), ("user", "alice"), 2, None).unwrap();
        assert!(rows(&shallow).iter().all(|r| r.1 <= 2));
        assert_eq!(shallow.num_rows(), 4);
        // Edges last seen before `since` are not followed.
        let later = blast_radius(
            &graph(),
            &Declared::default(),
            ("user", "alice"),
            6,
            Some(2000),
        )
        .unwrap();
        assert_eq!(later.num_rows(), 1);
    }

    #[test]
    fn grants_add_potential_reach_and_mark_what_was_also_observed() {
        let declared = Declared {
            owners: Vec::new(),
            grants: vec![
                Grant {
                    subject_kind: "agent".into(),
                    subject_id: "sub".into(),
                    target_kind: "resource".into(),
                    target_pattern: "db:*".into(),
                },
                Grant {
                    subject_kind: "agent".into(),
                    subject_id: "sub".into(),
                    target_kind: "resource".into(),
                    target_pattern: "s3:backups/*".into(),
                },
            ],
        };
        let batch = blast_radius(&graph(), &declared, ("agent", "sub"), 6, None).unwrap();
        let all = rows(&batch);
        let granted = batch.column(7).as_boolean();
        let find = |name: &str| all.iter().position(|r| r.0 == name).unwrap();
        let shop = find("resource:db:shop.orders");
        assert_eq!(all[shop].2, "observed");
        assert!(granted.value(shop));
        let billing = find("resource:db:billing.x");
        assert_eq!(all[billing].2, "potential");
        // A pattern matching nothing seen is itself the potential reach.
        let pattern = find("resource:s3:backups/*");
        assert_eq!(all[pattern].2, "potential");
        assert!(!granted.value(find("credential:tok-delegated")));
    }

    #[test]
    fn upstream_finds_the_human_and_the_owner() {
        let declared = Declared {
            owners: vec![Owner {
                kind: "agent".into(),
                id: "planner".into(),
                owner: "platform-team".into(),
                approved: true,
                expires_at: Some(5000),
                revoked_at: None,
            }],
            grants: Vec::new(),
        };
        let batch = upstream(
            &graph(),
            &declared,
            ("credential", "tok-delegated"),
            6,
            1000,
        )
        .unwrap();
        let all = rows(&batch);
        let names: Vec<&str> = all.iter().map(|r| r.0.as_str()).collect();
        for expected in [
            "agent:sub",
            "credential:tok-alice",
            "agent:planner",
            "user:alice",
            "owner:platform-team",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }
        let approved = batch.column(7).as_boolean();
        let owner = names
            .iter()
            .position(|n| *n == "owner:platform-team")
            .unwrap();
        assert!(approved.value(owner));
        // Past its expiry the owner no longer vouches.
        let later = upstream(
            &graph(),
            &declared,
            ("credential", "tok-delegated"),
            6,
            6000,
        )
        .unwrap();
        let owner_row = rows(&later)
            .iter()
            .position(|r| r.0 == "owner:platform-team")
            .unwrap();
        assert!(!later.column(7).as_boolean().value(owner_row));
    }
}
