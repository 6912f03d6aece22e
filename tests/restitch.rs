//! `idtrail restitch`: chains and edges rebuilt from the spans files match what the live stitcher
//! builds, a second run replaces the first run's files instead of adding to them, and a running
//! collector keeps restitch out of its data directory.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use arrow::array::{Array, ArrayRef};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use common::{TestServer, hex, request, span, text};
use idtrail_collector::Config;
use idtrail_collector::stitch::rebuild::{self, Summary};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::Link;
use parquet::file::metadata::ParquetMetaDataReader;

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const INTERNAL: i32 = 1;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

const TRACE: [u8; 16] = [0x11; 16];
const PRODUCER_TRACE: [u8; 16] = [0x22; 16];
const CONSUMER_TRACE: [u8; 16] = [0x33; 16];

/// A span `offset_ms` after the first, of `kind`, under `parent`.
fn at(mut s: Span, offset_ms: u64, kind: i32, parent: Option<&[u8]>) -> Span {
    s.start_time_unix_nano += offset_ms * 1_000_000;
    s.end_time_unix_nano = s.start_time_unix_nano + 1_000_000;
    s.kind = kind;
    s.parent_span_id = parent.map(<[u8]>::to_vec).unwrap_or_default();
    s
}

/// alice → the planner agent → DELETE on shop.orders.
fn user_agent_delete() -> ExportTraceServiceRequest {
    let root = at(
        span(
            &TRACE,
            &[1; 8],
            "POST /cleanup",
            vec![text("user.id", "alice")],
        ),
        0,
        SERVER,
        None,
    );
    let agent = at(
        span(
            &TRACE,
            &[2; 8],
            "invoke_agent planner",
            vec![
                text("gen_ai.operation.name", "invoke_agent"),
                text("gen_ai.agent.id", "planner"),
            ],
        ),
        1,
        INTERNAL,
        Some(&[1; 8]),
    );
    let delete = at(
        span(
            &TRACE,
            &[3; 8],
            "DELETE orders",
            vec![
                text("db.system.name", "postgresql"),
                text("db.operation.name", "DELETE"),
                text("db.namespace", "shop"),
                text("db.collection.name", "orders"),
            ],
        ),
        2,
        CLIENT,
        Some(&[2; 8]),
    );
    request("shop-api", vec![root, agent, delete])
}

/// bob's agent publishes a message; a consumer in another trace, linked to the publish, writes.
fn producer_and_linked_consumer() -> ExportTraceServiceRequest {
    let root = at(
        span(
            &PRODUCER_TRACE,
            &[0x21; 8],
            "POST /refunds",
            vec![text("user.id", "bob"), text("session.id", "s-7")],
        ),
        0,
        SERVER,
        None,
    );
    let agent = at(
        span(
            &PRODUCER_TRACE,
            &[0x22; 8],
            "invoke_agent refunder",
            vec![
                text("gen_ai.operation.name", "invoke_agent"),
                text("gen_ai.agent.id", "refunder"),
            ],
        ),
        1,
        INTERNAL,
        Some(&[0x21; 8]),
    );
    let publish = at(
        span(
            &PRODUCER_TRACE,
            &[0x23; 8],
            "publish refunds",
            vec![
                text("messaging.system", "kafka"),
                text("messaging.operation.type", "send"),
                text("messaging.destination.name", "refunds"),
            ],
        ),
        2,
        PRODUCER,
        Some(&[0x22; 8]),
    );
    let mut consume = at(
        span(&CONSUMER_TRACE, &[0x31; 8], "process refunds", vec![]),
        5,
        CONSUMER,
        None,
    );
    consume.links = vec![Link {
        trace_id: PRODUCER_TRACE.to_vec(),
        span_id: vec![0x23; 8],
        ..Default::default()
    }];
    let write = at(
        span(
            &CONSUMER_TRACE,
            &[0x32; 8],
            "UPDATE payments",
            vec![
                text("db.system.name", "postgresql"),
                text("db.operation.name", "UPDATE"),
                text("db.namespace", "billing"),
                text("db.collection.name", "payments"),
            ],
        ),
        6,
        CLIENT,
        Some(&[0x31; 8]),
    );
    request("refund-worker", vec![root, agent, publish, consume, write])
}

async fn export(server: &TestServer, request: ExportTraceServiceRequest) {
    let mut client = TraceServiceClient::connect(server.grpc_url())
        .await
        .expect("connect");
    let response = client.export(request).await.expect("export").into_inner();
    assert!(
        response
            .partial_success
            .is_none_or(|p| p.rejected_spans == 0)
    );
}

fn config_for(data_dir: &Path) -> Config {
    Config::load(
        None,
        Vec::new(),
        &[("data_dir".into(), data_dir.display().to_string())],
    )
    .expect("config")
}

fn files(data_dir: &Path, table: &str) -> Vec<PathBuf> {
    idtrail_schemas::layout::published_files(data_dir, table, None).expect("list files")
}

/// Every row of `table` as column → displayed value, sorted.
fn rows(data_dir: &Path, table: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    for batch in common::read_table(data_dir, table) {
        let schema = batch.schema();
        // Timestamps as ns: displaying the "UTC" zone needs chrono-tz.
        let columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Timestamp(..) => cast(c, &DataType::Int64).expect("cast"),
                _ => c.clone(),
            })
            .collect();
        let formatters: Vec<_> = columns
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default()).expect("fmt"))
            .collect();
        for i in 0..batch.num_rows() {
            out.push(
                schema
                    .fields()
                    .iter()
                    .zip(&formatters)
                    .map(|(f, v)| (f.name().clone(), v.value(i).to_string()))
                    .collect(),
            );
        }
    }
    out.sort();
    out
}

fn footer(path: &Path, key: &str) -> Option<String> {
    let file = std::fs::File::open(path).expect("open parquet");
    let metadata = ParquetMetaDataReader::new()
        .parse_and_finish(&file)
        .expect("footer");
    metadata
        .file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
}

fn restitch_binary(data_dir: &Path) -> Summary {
    let output = Command::new(env!("CARGO_BIN_EXE_idtrail"))
        .args(["restitch", "--quiet", "--data-dir"])
        .arg(data_dir)
        .env_remove("IDTRAIL_CONFIG")
        .output()
        .expect("run idtrail restitch");
    assert!(
        output.status.success(),
        "restitch failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON summary");
    Summary {
        partitions: json["partitions"].as_u64().expect("partitions") as usize,
        files_read: json["files_read"].as_u64().expect("files_read") as usize,
        bytes_read: json["bytes_read"].as_u64().expect("bytes_read"),
        spans_read: json["spans_read"].as_u64().expect("spans_read"),
        spans_skipped: json["spans_skipped"].as_u64().expect("spans_skipped"),
        traces: json["traces"].as_u64().expect("traces"),
        traces_split: json["traces_split"].as_u64().expect("traces_split"),
        chains: json["chains"].as_u64().expect("chains"),
        edges: json["edges"].as_u64().expect("edges"),
        files_written: json["files_written"].as_u64().expect("files_written") as usize,
        files_removed: json["files_removed"].as_u64().expect("files_removed") as usize,
        elapsed_ms: json["elapsed_ms"].as_u64().expect("elapsed_ms"),
    }
}

fn edge(rows: &[BTreeMap<String, String>], src: &str, relation: &str, dst: &str) -> bool {
    rows.iter().any(|r| {
        format!("{}:{}", r["src_kind"], r["src_id"]) == src
            && r["relation"] == relation
            && format!("{}:{}", r["dst_kind"], r["dst_id"]) == dst
    })
}

#[tokio::test]
async fn restitch_builds_chains_and_edges_from_spans_and_a_rerun_replaces_them() {
    let server = TestServer::start(&[("stitcher.enabled", "false")]).await;
    export(&server, user_agent_delete()).await;
    let dir = server.stop().await;
    let data = dir.path().join("data");
    assert!(
        files(&data, "chains").is_empty(),
        "the server stitched nothing"
    );

    let summary = restitch_binary(&data);
    assert_eq!(summary.spans_read, 3);
    assert_eq!(summary.traces, 1);
    assert_eq!(summary.chains, 1);
    assert_eq!(summary.files_written, 2, "one chains and one edges file");
    assert_eq!(summary.files_removed, 0);

    let chains = rows(&data, "chains");
    assert_eq!(chains.len(), 1);
    let chain = &chains[0];
    assert_eq!(chain["trace_id"], hex(&TRACE));
    assert_eq!(chain["effect_span_id"], hex(&[3; 8]));
    assert_eq!(chain["revision"], "1");
    assert_eq!(chain["user_id"], "alice");
    assert_eq!(chain["agents"], "[planner]");
    assert_eq!(chain["effect_kind"], "db");
    assert_eq!(chain["effect_operation"], "DELETE");
    assert_eq!(chain["effect_target"], "shop.orders");
    assert_eq!(chain["effect_is_write"], "true");
    assert_eq!(chain["effect_service"], "shop-api");
    assert_eq!(chain["consumer_class"], "ai_agent");
    assert_eq!(chain["attributed"], "true");

    let edges = rows(&data, "edges");
    assert!(edge(&edges, "user:alice", "initiated", "agent:planner"));
    assert!(edge(&edges, "agent:planner", "acts_for", "user:alice"));
    assert!(edge(
        &edges,
        "operation:shop-api POST /cleanup",
        "affected",
        "resource:db:shop.orders"
    ));
    for table in ["chains", "edges"] {
        let path = &files(&data, table)[0];
        assert_eq!(
            footer(path, "idtrail.schema_version"),
            Some(idtrail_schemas::SCHEMA_VERSION.to_string())
        );
        assert_eq!(footer(path, "idtrail.writer_id").as_deref(), Some("local"));
        assert!(footer(path, "idtrail.stitched_through").is_some());
    }

    // Again, through the library: the same rows, in new files that replace the old ones.
    let before = (files(&data, "chains"), files(&data, "edges"));
    let again = rebuild::rebuild(&config_for(&data), None, &mut ()).expect("second restitch");
    assert_eq!((again.chains, again.edges), (summary.chains, summary.edges));
    assert_eq!(again.files_removed, 2);
    assert_eq!(rows(&data, "chains"), chains, "replaced, not duplicated");
    assert_eq!(rows(&data, "edges"), edges);
    let after = (files(&data, "chains"), files(&data, "edges"));
    assert_eq!((after.0.len(), after.1.len()), (1, 1));
    assert_ne!(after, before, "new files");
}

#[tokio::test]
async fn restitch_reproduces_the_live_stitcher_links_included() {
    let server = TestServer::start(&[
        ("stitcher.quiet_window", "200ms"),
        ("writer.max_file_age", "100ms"),
    ])
    .await;
    export(&server, user_agent_delete()).await;
    export(&server, producer_and_linked_consumer()).await;
    // Quiet, stitched, published.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while rows(&server.data_dir(), "chains").len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "live chains never came"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir = server.stop().await;
    let data = dir.path().join("data");
    let live_chains = rows(&data, "chains");
    let live_edges = edge_totals(&rows(&data, "edges"));

    let consumer = live_chains
        .iter()
        .find(|c| c["trace_id"] == hex(&CONSUMER_TRACE))
        .expect("consumer chain");
    assert_eq!(
        consumer["user_id"], "bob",
        "the head comes from the producer"
    );
    assert_eq!(consumer["agents"], "[refunder]");

    let summary = rebuild::rebuild(&config_for(&data), None, &mut ()).expect("restitch");
    assert_eq!(summary.traces, 3);
    assert_eq!(rows(&data, "chains"), live_chains);
    assert_eq!(edge_totals(&rows(&data, "edges")), live_edges);
}

/// Edges summed over rows (the live stitcher may spread an edge over flushes), without the
/// sample trace (which trace an aggregate saw first depends on stitching order).
fn edge_totals(rows: &[BTreeMap<String, String>]) -> BTreeMap<String, (u64, String, String)> {
    let mut totals: BTreeMap<String, (u64, String, String)> = BTreeMap::new();
    for r in rows {
        let key = format!(
            "{}:{} {} {}:{}",
            r["src_kind"], r["src_id"], r["relation"], r["dst_kind"], r["dst_id"]
        );
        let count: u64 = r["count"].parse().expect("count");
        let entry =
            totals
                .entry(key)
                .or_insert((0, r["first_seen"].clone(), r["last_seen"].clone()));
        entry.0 += count;
        entry.1 = entry.1.clone().min(r["first_seen"].clone());
        entry.2 = entry.2.clone().max(r["last_seen"].clone());
    }
    totals
}

#[tokio::test]
async fn restitch_refuses_while_a_collector_holds_the_data_directory() {
    let server = TestServer::start(&[("stitcher.enabled", "false")]).await;
    export(&server, user_agent_delete()).await;
    let refused = rebuild::rebuild(&config_for(&server.data_dir()), None, &mut ())
        .expect_err("restitch must not run beside serve");
    assert!(refused.to_string().contains("in use"), "{refused}");
    let dir = server.stop().await;
    assert!(files(&dir.path().join("data"), "chains").is_empty());

    let missing = rebuild::rebuild(&config_for(&dir.path().join("nope")), None, &mut ())
        .expect_err("no data directory");
    assert!(
        missing.to_string().contains("no data directory"),
        "{missing}"
    );
    assert!(!dir.path().join("nope").exists(), "not created");
}

#[test]
fn restitch_with_a_range_leaves_other_partitions_alone() {
    // No spans in the range: nothing is read, written or removed.
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let old = data.join("chains/date=2020-01-01/hour=00/local-000000000001.parquet");
    std::fs::create_dir_all(old.parent().expect("parent")).expect("mkdir");
    std::fs::write(&old, b"old").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_idtrail"))
        .args(["restitch", "--quiet", "--from", "2026-01-01T00:00:00Z"])
        .args(["--to", "2026-01-01T01:00:00+00:00", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run idtrail restitch");
    assert!(output.status.success(), "{output:?}");
    assert!(old.exists());
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON summary");
    assert_eq!(json["files_written"], 0);

    let backwards = Command::new(env!("CARGO_BIN_EXE_idtrail"))
        .args(["restitch", "--from", "2026-01-02T00:00:00Z"])
        .args(["--to", "2026-01-01T00:00:00Z", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run idtrail restitch");
    assert!(!backwards.status.success());
}
