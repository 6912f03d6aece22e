//! Golden tests of the stitcher: each file under `tests/scenarios/stitch/` holds the spans of a
//! scenario and, below a marker line, the exact chains and edges they must produce.
//!
//! The spans go through a real collector over OTLP/HTTP (extraction, secrets, WAL, trace buffer,
//! Parquet); the chains and edges are read back from the Parquet files. Ids and credential
//! fingerprints are shown by the names the scenario gave them, so the expectations read as
//! lineage rather than hex.
//!
//! Regenerate the expectations after an intended change with
//! `IDTRAIL_BLESS=1 cargo test --test stitch_golden`, then review the diff.

mod common;

use std::path::{Path, PathBuf};

use common::TestServer;
use common::scenario::{self, Names, name_fingerprints, rows, wait_stitched};
use serde::Deserialize;
use serde_json::Value;

const MARKER: &str = "# ---- expected (regenerate with IDTRAIL_BLESS=1) ----";

#[derive(serde::Serialize, Deserialize, PartialEq, Debug)]
struct Expected {
    chains: Vec<Value>,
    edges: Vec<Value>,
}

async fn run(path: &Path) -> Expected {
    let (scenario, secrets) = scenario::load(path, Some(MARKER));
    let server = TestServer::start(&[
        ("stitcher.quiet_window", "300ms"),
        ("writer.max_file_age", "100ms"),
    ])
    .await;
    let mut names = Names::default();
    scenario::play(&server, &scenario, &mut names, &secrets).await;
    wait_stitched(&server).await;
    let dir = server.stop().await;
    let data_dir = dir.path().join("data");
    name_fingerprints(&data_dir, &scenario, &mut names);

    let mut chains = rows(&common::read_table(&data_dir, "chains"));
    let mut edges = rows(&common::read_table(&data_dir, "edges"));
    for row in chains.iter_mut().chain(edges.iter_mut()) {
        names.symbolize(row);
    }
    let key = |row: &Value, cols: &[&str]| -> Vec<String> {
        cols.iter().map(|c| row[*c].to_string()).collect()
    };
    chains.sort_by_key(|r| key(r, &["trace_id", "effect_span_id", "revision"]));
    edges.sort_by_key(|r| {
        key(
            r,
            &[
                "relation",
                "src_kind",
                "src_id",
                "dst_kind",
                "dst_id",
                "first_seen",
            ],
        )
    });
    Expected { chains, edges }
}

fn scenarios() -> Vec<PathBuf> {
    scenario::files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/stitch"))
}

async fn check(name: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scenarios/stitch")
        .join(format!("{name}.yaml"));
    let actual = run(&path).await;
    let text = std::fs::read_to_string(&path).expect("scenario");
    let (input, expected) = match text.split_once(MARKER) {
        Some((input, expected)) => (input.to_string(), Some(expected.to_string())),
        None => (text.clone(), None),
    };
    if std::env::var_os("IDTRAIL_BLESS").is_some() {
        let rendered = serde_saphyr::to_string(&actual).expect("yaml");
        let input = input.trim_end();
        std::fs::write(&path, format!("{input}\n\n{MARKER}\n{rendered}")).expect("bless");
        return;
    }
    let expected: Expected = serde_saphyr::from_str(expected.as_deref().unwrap_or_else(|| {
        panic!(
            "{} has no expected section: run with IDTRAIL_BLESS=1",
            path.display()
        )
    }))
    .expect("expected section");
    if actual != expected {
        let rendered = serde_saphyr::to_string(&actual).unwrap_or_default();
        panic!(
            "{}: stitched output differs from the expected section.\n--- actual ---\n{rendered}",
            path.display()
        );
    }
}

#[test]
fn every_scenario_file_has_a_test() {
    let names: Vec<String> = scenarios()
        .iter()
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_string))
        .collect();
    let source = include_str!("stitch_golden.rs");
    for name in names {
        assert!(
            source.contains(&format!("check(\"{name}\")")),
            "tests/scenarios/stitch/{name}.yaml has no #[tokio::test] calling check(\"{name}\")"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_agent_subagent_tool_exchange_gateway_db_delete() {
    check("human_agent_delegation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_only_batch_job() {
    check("service_batch_job").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_run_with_no_human() {
    check("autonomous_agent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_parentage_is_stitched_as_far_as_the_spans_go() {
    check("broken_parentage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_consumer_takes_its_linked_producers_head() {
    check("queue_consumer_linked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_span_completes_a_chain_in_revision_2() {
    check("late_span_revision").await;
}
