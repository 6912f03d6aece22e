//! `idtrail export bloodhound`: the human → agent → credential → operation → resource chain of
//! `tests/scenarios/stitch/human_agent_delegation.yaml`, sent through a real collector over
//! OTLP/HTTP, comes out as BloodHound OpenGraph nodes and edges with namespaced kinds, with the
//! declared owners and grants attached, no raw secret anywhere, and `--since`/`--until`
//! narrowing what is exported.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::TestServer;
use common::scenario::{self, Names, name_fingerprints, wait_stitched};
use serde_json::Value;

const SCENARIO: &str = "tests/scenarios/stitch/human_agent_delegation.yaml";
const MARKER: &str = "# ---- expected (regenerate with IDTRAIL_BLESS=1) ----";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A stopped collector's directory holding the scenario, its raw secrets, and fingerprint →
/// secret name.
struct Played {
    dir: tempfile::TempDir,
    secrets: HashMap<String, String>,
    fingerprints: HashMap<String, String>,
}

impl Played {
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The fingerprint stored for the secret `name` of the scenario.
    fn fp(&self, name: &str) -> &str {
        self.fingerprints
            .iter()
            .find(|(_, n)| n.as_str() == format!("fp({name})"))
            .map(|(fp, _)| fp.as_str())
            .unwrap_or_else(|| panic!("no fingerprint for {name}"))
    }
}

async fn played() -> Played {
    let server = TestServer::start(&[
        ("stitcher.quiet_window", "300ms"),
        ("writer.max_file_age", "100ms"),
    ])
    .await;
    let (scenario, secrets) = scenario::load(&root().join(SCENARIO), Some(MARKER));
    let mut names = Names::default();
    scenario::play(&server, &scenario, &mut names, &secrets).await;
    wait_stitched(&server).await;
    let dir = server.stop().await;
    name_fingerprints(&dir.path().join("data"), &scenario, &mut names);
    let fingerprints = names
        .by_hex
        .into_iter()
        .filter(|(_, name)| name.starts_with("fp("))
        .collect();
    Played {
        dir,
        secrets,
        fingerprints,
    }
}

/// `idtrail export bloodhound ARGS`, outside any user config.
fn export(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idtrail"))
        .args(["export", "bloodhound"])
        .args(args)
        .env_remove("IDTRAIL_CONFIG")
        .env_remove("IDTRAIL_DATA_DIR")
        .output()
        .expect("run idtrail export")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "idtrail export failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("utf-8")
}

/// A config naming owners and grants files (the collector's `query` section).
fn declared_config(dir: &Path) -> PathBuf {
    let owners = dir.join("owners.yaml");
    std::fs::write(
        &owners,
        "owners:\n  - {kind: agent, id: agt_planner, owner: ai-platform@example.com, approved: true, \
         expires_at: '2027-01-01T00:00:00Z'}\n",
    )
    .expect("owners");
    let grants = dir.join("grants.csv");
    std::fs::write(
        &grants,
        "subject_kind,subject_id,target_kind,target_pattern\n\
         scope,orders:write,operation,* DELETE /orders/*\n\
         agent,agt_planner,resource,db:shop.*\n",
    )
    .expect("grants");
    let config = dir.join("idtrail.yaml");
    std::fs::write(
        &config,
        format!(
            "query:\n  owners_files: [{}]\n  grants_files: [{}]\n",
            serde_json::to_string(&owners.display().to_string()).expect("json"),
            serde_json::to_string(&grants.display().to_string()).expect("json"),
        ),
    )
    .expect("config");
    config
}

/// The graph of an export: nodes by id, and (start, kind, end) → edge properties.
struct Graph {
    doc: Value,
    nodes: BTreeMap<String, Value>,
    edges: BTreeMap<(String, String, String), Value>,
}

impl Graph {
    fn parse(text: &str) -> Graph {
        let doc: Value = serde_json::from_str(text).expect("the export is JSON");
        let mut nodes = BTreeMap::new();
        for node in doc["graph"]["nodes"].as_array().expect("graph.nodes") {
            let id = node["id"].as_str().expect("node id").to_string();
            assert!(
                nodes.insert(id.clone(), node.clone()).is_none(),
                "node {id} twice"
            );
        }
        let mut edges = BTreeMap::new();
        for edge in doc["graph"]["edges"].as_array().expect("graph.edges") {
            let end = |side: &str| {
                assert_eq!(edge[side]["match_by"], "id", "{edge}");
                edge[side]["value"].as_str().expect("edge end").to_string()
            };
            let key = (
                end("start"),
                edge["kind"].as_str().expect("edge kind").to_string(),
                end("end"),
            );
            assert!(
                edges
                    .insert(key.clone(), edge["properties"].clone())
                    .is_none(),
                "edge {key:?} twice"
            );
        }
        Graph { doc, nodes, edges }
    }

    fn edge(&self, start: &str, kind: &str, end: &str) -> &Value {
        self.edges
            .get(&(start.to_string(), kind.to_string(), end.to_string()))
            .unwrap_or_else(|| {
                panic!(
                    "no edge {start} -[{kind}]-> {end}; edges:\n{:#?}",
                    self.edges.keys().collect::<Vec<_>>()
                )
            })
    }
}

fn valid_kind(kind: &str) -> bool {
    kind.starts_with("IDT_") && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What OpenGraph requires of every node and edge: namespaced kinds (primary first, at most
/// three), lowercase property names with primitive values, and edge ends that are nodes.
fn assert_opengraph(graph: &Graph) {
    assert_eq!(graph.doc["metadata"]["source_kind"], "IDT_Base");
    for (id, node) in &graph.nodes {
        let kinds: Vec<&str> = node["kinds"]
            .as_array()
            .expect("kinds")
            .iter()
            .map(|k| k.as_str().expect("kind text"))
            .collect();
        assert!((1..=3).contains(&kinds.len()), "{id}: {kinds:?}");
        assert!(kinds.iter().all(|k| valid_kind(k)), "{id}: {kinds:?}");
        assert_eq!(kinds[1], "IDT_Base", "{id}");
        // Ids are prefixed with the primary kind, so kinds sharing an id string stay apart.
        assert!(id.starts_with(&format!("{}:", kinds[0])), "{id}");
        assert!(node["properties"]["name"].is_string(), "{id}");
        assert!(node["properties"]["displayname"].is_string(), "{id}");
        assert_primitive(&node["properties"], id);
    }
    for ((start, kind, end), properties) in &graph.edges {
        assert!(valid_kind(kind), "{kind}");
        assert!(graph.nodes.contains_key(start), "edge from unknown {start}");
        assert!(graph.nodes.contains_key(end), "edge to unknown {end}");
        assert_primitive(properties, kind);
    }
}

fn assert_primitive(properties: &Value, what: &str) {
    for (name, value) in properties.as_object().expect("properties object") {
        assert_eq!(name, &name.to_lowercase(), "{what}");
        assert!(
            value.is_string() || value.is_number() || value.is_boolean(),
            "{what}.{name} = {value}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delegation_chain_exports_as_opengraph() {
    let played = played().await;
    let data = played.data_dir();
    let config = declared_config(played.dir.path());
    let out = played.dir.path().join("opengraph.json");
    let output = export(&[
        "--data-dir",
        data.to_str().expect("utf-8 path"),
        "--config",
        config.to_str().expect("utf-8 path"),
        "--output",
        out.to_str().expect("utf-8 path"),
    ]);
    assert!(ok(&output).is_empty(), "--output leaves stdout empty");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("exported "), "{stderr}");
    let text = std::fs::read_to_string(&out).expect("output file");
    let graph = Graph::parse(&text);
    assert_opengraph(&graph);

    // No raw secret: not the tokens, nor any part of them but the shared JWT header.
    for (name, raw) in &played.secrets {
        assert!(!text.contains(raw.as_str()), "raw {name} in the export");
        for part in raw.split('.').skip(1) {
            assert!(!text.contains(part), "a part of {name} in the export");
        }
    }

    let alice_fp = played.fp("alice_token");
    let delegated_fp = played.fp("delegated_token");
    assert!(alice_fp.starts_with('k') && delegated_fp.starts_with('k'));
    let user = "IDT_User:alice@example.com";
    let planner = "IDT_Agent:agt_planner";
    let sub = "IDT_Agent:agt_orders_sub";
    let alice_cred = format!("IDT_Credential:{alice_fp}");
    let delegated = format!("IDT_Credential:{delegated_fp}");
    let gateway = "IDT_Operation:api-gateway DELETE /orders/{id}";
    let orders = "IDT_Operation:orders DELETE /orders/{id}";
    let table = "IDT_Resource:db:shop.orders";

    // Nodes: their kinds, and names as the tables have them.
    for (id, kind, name) in [
        (user, "IDT_User", "alice@example.com"),
        (planner, "IDT_Agent", "agt_planner"),
        (sub, "IDT_Agent", "agt_orders_sub"),
        (alice_cred.as_str(), "IDT_Credential", alice_fp),
        (delegated.as_str(), "IDT_Credential", delegated_fp),
        (gateway, "IDT_Operation", "api-gateway DELETE /orders/{id}"),
        (orders, "IDT_Operation", "orders DELETE /orders/{id}"),
        (table, "IDT_Resource", "db:shop.orders"),
        ("IDT_Workload:agent-portal", "IDT_Workload", "agent-portal"),
    ] {
        let node = graph
            .nodes
            .get(id)
            .unwrap_or_else(|| panic!("no node {id}"));
        assert_eq!(node["kinds"][0], kind, "{id}");
        assert_eq!(node["properties"]["name"], name, "{id}");
        assert_eq!(node["properties"]["displayname"], name, "{id}");
    }
    // 2026-11-22T10:00:00.010Z, the planner's span.
    assert_eq!(
        graph.nodes[planner]["properties"]["first_seen"],
        1_795_341_600
    );

    // The chain: human → agents → credential → operations → resource.
    let initiated = graph.edge(user, "IDT_Initiated", planner);
    assert_eq!(initiated["count"], 1);
    assert_eq!(initiated["relation"], "initiated");
    assert_eq!(initiated["first_seen_utc"], "2026-11-22T10:00:00.010Z");
    assert!(
        initiated["sample_trace_id"]
            .as_str()
            .is_some_and(|t| t.len() == 32)
    );
    assert_eq!(graph.edge(sub, "IDT_ActsFor", planner)["count"], 2);
    assert_eq!(graph.edge(planner, "IDT_ActsFor", user)["count"], 2);
    graph.edge(sub, "IDT_Presented", &delegated);
    graph.edge("IDT_Workload:agent-portal", "IDT_Presented", &alice_cred);
    graph.edge(&delegated, "IDT_DerivedFrom", &alice_cred);
    graph.edge(&delegated, "IDT_Invoked", gateway);
    graph.edge(gateway, "IDT_Called", orders);
    let affected = graph.edge(orders, "IDT_Affected", table);
    assert_eq!(affected["first_seen"], 1_795_341_600);
    assert_eq!(affected["last_seen_utc"], "2026-11-22T10:00:00.500Z");
    assert_eq!(
        graph
            .edges
            .keys()
            .filter(|(_, kind, _)| !matches!(
                kind.as_str(),
                "IDT_Owns" | "IDT_HasGrant" | "IDT_Permits" | "IDT_HasScope"
            ))
            .count(),
        17,
        "one OpenGraph edge per edge of the scenario's golden edges"
    );

    // Declared: the owner vouching for the planner, and the grants.
    let owns = graph.edge("IDT_Owner:ai-platform@example.com", "IDT_Owns", planner);
    assert_eq!(owns["approved"], true);
    assert_eq!(owns["expires_at_utc"], "2027-01-01T00:00:00.000Z");
    let by_scope = "IDT_Grant:scope:orders:write -> operation:* DELETE /orders/*";
    graph.edge("IDT_Scope:orders:write", "IDT_HasGrant", by_scope);
    graph.edge(by_scope, "IDT_Permits", gateway);
    graph.edge(by_scope, "IDT_Permits", orders);
    graph.edge(&delegated, "IDT_HasScope", "IDT_Scope:orders:write");
    let by_agent = "IDT_Grant:agent:agt_planner -> resource:db:shop.*";
    graph.edge(planner, "IDT_HasGrant", by_agent);
    graph.edge(by_agent, "IDT_Permits", table);

    // Standard output carries the same document.
    let stdout = ok(&export(&[
        "--data-dir",
        data.to_str().expect("utf-8 path"),
        "--config",
        config.to_str().expect("utf-8 path"),
    ]));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).expect("json"),
        graph.doc
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_and_until_narrow_the_export() {
    let played = played().await;
    let data = played.data_dir();
    let data = data.to_str().expect("utf-8 path");
    let run = |args: &[&str]| {
        let mut all = vec!["--data-dir", data];
        all.extend_from_slice(args);
        Graph::parse(&ok(&export(&all)))
    };

    let everything = run(&[]);
    assert!(everything.edges.len() >= 17);
    // The scenario's spans start at 10:00:00.000 and its edges end by 10:00:00.500.
    let inside = run(&[
        "--since",
        "2026-11-22T10:00:00.300Z",
        "--until",
        "2026-11-22T11:00:00Z",
    ]);
    let kept: BTreeSet<_> = inside.edges.keys().cloned().collect();
    assert!(!kept.is_empty() && kept.len() < everything.edges.len());
    assert!(kept.iter().all(|key| everything.edges.contains_key(key)));
    assert_opengraph(&inside);
    // last_seen 10:00:00.500 ≥ 10:00:00.300: kept; initiated was last seen at .010: not.
    assert!(kept.contains(&(
        "IDT_Operation:orders DELETE /orders/{id}".to_string(),
        "IDT_Affected".to_string(),
        "IDT_Resource:db:shop.orders".to_string()
    )));
    assert!(!kept.iter().any(|(_, kind, _)| kind == "IDT_Initiated"));

    for window in [
        ["--since", "2026-11-23T00:00:00Z"],
        ["--until", "2026-11-22T09:00:00+00:00"],
    ] {
        let empty = run(&window);
        assert!(
            empty.nodes.is_empty() && empty.edges.is_empty(),
            "{window:?}"
        );
        assert_eq!(empty.doc["metadata"]["source_kind"], "IDT_Base");
    }

    // Bad input fails on one line, leaving no output file.
    let out = played.dir.path().join("never.json");
    for args in [
        vec!["--since", "yesterday"],
        vec![
            "--since",
            "2026-11-23T00:00:00Z",
            "--until",
            "2026-11-22T00:00:00Z",
        ],
    ] {
        let mut all = vec!["--data-dir", data, "--output", out.to_str().expect("utf-8")];
        all.extend(args);
        let output = export(&all);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--since"), "{stderr}");
        assert!(!out.exists());
    }
    let missing = export(&["--data-dir", "/nonexistent/idtrail-data"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).starts_with("error: no data directory"));
}
