//! Compaction: an hour's files of every table merge into one file per table, sorted as the
//! sources declare; every reader (the layout's own listing, the query
//! engine) sees each row exactly once before, after, and with a crash's leftovers in place; a
//! collector restarted on the compacted directory publishes into that hour beside the compacted
//! file and replays nothing twice.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampNanosecondType;
use common::{TestServer, hex, request, span, stored_ids, text};
use idtrail_collector::Config;
use idtrail_collector::compact;
use idtrail_query::{QueryEngine, QueryOptions};
use idtrail_schemas::layout;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::Span;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const HOURS_AGO: u64 = 3;
const BATCHES: u8 = 4;
const SPANS_PER_BATCH: u8 = 6;

/// A span `HOURS_AGO` hours back (so its hour partition is closed), presenting one of three
/// bearer tokens, with a write effect so the stitcher writes chains and edges for it.
fn old_span(batch: u8, i: u8) -> Span {
    let mut s = span(
        &[batch + 1; 16],
        &[batch + 1, i + 1, 0, 0, 0, 0, 0, 1],
        "DELETE /orders",
        vec![
            text("user.id", &format!("user-{i}")),
            text(
                "http.request.header.authorization",
                &format!("Bearer token-number-{}-abcdefghijkl", (batch + i) % 3),
            ),
            text("db.system.name", "postgresql"),
            text("db.operation.name", "DELETE"),
            text("db.collection.name", "orders"),
        ],
    );
    let back = HOURS_AGO * 3600 * 1_000_000_000;
    s.start_time_unix_nano -= back - u64::from(batch) * 1_000_000 - u64::from(i) * 1_000;
    s.end_time_unix_nano = s.start_time_unix_nano + 1_000;
    s.kind = 3; // client: the database call
    s
}

fn files_of(data_dir: &Path, table: &str) -> Vec<std::path::PathBuf> {
    layout::published_files(data_dir, table, None).expect("list files")
}

/// Every row of `table` as its columns' display strings, sorted (a multiset of rows).
fn rows_of(data_dir: &Path, table: &str) -> Vec<String> {
    let mut rows: Vec<String> = common::read_table(data_dir, table)
        .iter()
        .flat_map(|batch| {
            let formatters: Vec<_> = batch
                .columns()
                .iter()
                .map(|c| {
                    arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &Default::default())
                        .expect("formatter")
                })
                .collect();
            (0..batch.num_rows())
                .map(|row| {
                    formatters
                        .iter()
                        .map(|f| f.value(row).to_string())
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect::<Vec<_>>()
        })
        .collect();
    rows.sort();
    rows
}

fn config_for(data_dir: &Path) -> Config {
    Config::load(
        None,
        Vec::new(),
        &[("data_dir".to_string(), data_dir.display().to_string())],
    )
    .expect("config")
}

async fn engine_for(data_dir: &Path) -> QueryEngine {
    QueryEngine::new(QueryOptions {
        data_dir: data_dir.to_path_buf(),
        memory_limit_bytes: 256 << 20,
        timeout: Duration::from_secs(60),
        owners_files: Vec::new(),
        grants_files: Vec::new(),
        rules_dirs: Vec::new(),
    })
    .await
    .expect("engine")
}

/// What the `orders-api` workload reaches through the lineage graph, with how often each edge
/// was seen.
async fn reach_of(engine: &QueryEngine) -> Vec<String> {
    let (_, batches) = engine
        .sql(
            "SELECT kind, id, depth, count FROM blast_radius('workload', 'orders-api', 6) \
             ORDER BY kind, id, depth",
            Vec::new(),
        )
        .await
        .expect("blast_radius");
    arrow::util::pretty::pretty_format_batches(&batches)
        .expect("format")
        .to_string()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn count_through_sql(data_dir: &Path) -> Vec<i64> {
    let engine = engine_for(data_dir).await;
    let (_, batches) = engine
        .sql(
            "SELECT (SELECT count(*) FROM spans) AS s, (SELECT count(DISTINCT span_id) FROM spans) \
             AS d, (SELECT count(*) FROM chains) AS c, (SELECT count(*) FROM edges) AS e",
            Vec::new(),
        )
        .await
        .expect("counts");
    (0..4)
        .map(|i| {
            batches[0]
                .column(i)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_compacts_into_one_sorted_file_per_table_and_every_row_stays_once() {
    let overrides = [
        ("writer.max_file_age", "100ms"),
        ("stitcher.quiet_window", "200ms"),
        ("compaction.enabled", "false"),
    ];
    let server = TestServer::start(&overrides).await;
    let data = server.data_dir();
    let mut client = TraceServiceClient::connect(server.grpc_url())
        .await
        .expect("connect");
    for batch in 0..BATCHES {
        let spans = (0..SPANS_PER_BATCH).map(|i| old_span(batch, i)).collect();
        client
            .export(request("orders-api", spans))
            .await
            .expect("export");
        // Each batch in files of its own: wait for its spans, chains and edges to be published.
        let want = usize::from(batch + 1) * usize::from(SPANS_PER_BATCH);
        for _ in 0..200 {
            if stored_ids(&data).len() == want
                && files_of(&data, "edges").len() > usize::from(batch)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let dir = server.stop().await;
    let data = dir.path().join("data");
    for table in ["spans", "chains", "edges"] {
        assert!(
            files_of(&data, table).len() >= 2,
            "{table}: the test needs several files to merge"
        );
    }
    let before: BTreeMap<&str, Vec<String>> = ["spans", "chains", "edges"]
        .into_iter()
        .map(|t| (t, rows_of(&data, t)))
        .collect();
    let counts_before = count_through_sql(&data).await;
    assert_eq!(
        counts_before[0],
        i64::from(BATCHES) * i64::from(SPANS_PER_BATCH)
    );

    // One engine lives through compaction and the restart below: its lineage graph follows
    // the files (the compacted ones add nothing it lacks; the late file adds an edge).
    let engine = engine_for(&data).await;
    let reach_before = reach_of(&engine).await;
    assert!(
        reach_before.len() > 4,
        "user-0 reaches something: {reach_before:?}"
    );

    // Files published less than `min_age` ago are left alone (these are seconds old).
    let mut config = config_for(&data);
    config.compaction.min_age = Duration::from_secs(60);
    let untouched = compact::compact(&config, SystemTime::now()).expect("compact");
    assert_eq!(untouched.files_written, 0);

    config.compaction.min_age = Duration::ZERO;
    let summary = compact::compact(&config, SystemTime::now()).expect("compact");
    assert_eq!(summary.files_written, 3, "{summary:?}");
    assert_eq!(summary.runs_skipped, 0);
    for table in ["spans", "chains", "edges"] {
        let files = files_of(&data, table);
        assert_eq!(files.len(), 1, "{table}: {files:?}");
        let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            layout::parse_file_name(&name).is_some_and(|f| f.is_compacted()),
            "{name}"
        );
        assert_eq!(rows_of(&data, table), before[table], "{table} rows changed");
    }
    assert_eq!(count_through_sql(&data).await, counts_before);
    assert_eq!(reach_of(&engine).await, reach_before);
    assert_eq!(reach_of(&engine_for(&data).await).await, reach_before);

    // The spans file is ordered by credential (spans without one last), then start time, and
    // says so; the newest source's WAL position travels with it.
    let path = &files_of(&data, "spans")[0];
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .expect("footer");
    let metadata = reader.metadata().clone();
    let sorting = metadata.row_group(0).sorting_columns().expect("sorting");
    assert_eq!(sorting.len(), 2);
    assert!(
        metadata
            .file_metadata()
            .key_value_metadata()
            .is_some_and(|kv| kv.iter().any(|e| e.key == "idtrail.wal_end")),
        "the WAL position of the newest source is kept"
    );
    let keys: Vec<(Option<String>, i64)> = reader
        .build()
        .expect("reader")
        .flat_map(|b| {
            let b = b.expect("batch");
            let fp = arrow::compute::cast(
                b.column_by_name("credential_fp").unwrap(),
                &arrow::datatypes::DataType::Utf8,
            )
            .expect("credential_fp as text");
            let fp = fp.as_string::<i32>();
            let start = b
                .column_by_name("start_time")
                .unwrap()
                .as_primitive::<TimestampNanosecondType>();
            (0..b.num_rows())
                .map(|i| {
                    (
                        (!fp.is_null(i)).then(|| fp.value(i).to_string()),
                        start.value(i),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| match (&a.0, &b.0) {
        (Some(x), Some(y)) => (x, a.1).cmp(&(y, b.1)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.1.cmp(&b.1),
    });
    assert_eq!(keys, sorted);
    assert!(keys.iter().filter(|k| k.0.is_some()).count() > 0);

    // A crash after the rename leaves the sources: put one back. Every reader skips it, and the
    // next pass deletes it.
    let compacted_name = path.file_name().unwrap().to_string_lossy().into_owned();
    let seqs = layout::parse_file_name(&compacted_name).expect("name");
    let leftover = path.with_file_name(layout::file_name(seqs.writer_id, seqs.first));
    std::fs::copy(path, &leftover).expect("copy");
    assert_eq!(files_of(&data, "spans").len(), 1);
    assert_eq!(count_through_sql(&data).await, counts_before);
    let again = compact::compact(&config, SystemTime::now()).expect("compact");
    assert_eq!((again.leftovers_deleted, again.files_written), (1, 0));
    assert!(!leftover.exists());

    // A collector restarted on the compacted directory replays nothing twice, and a late span
    // of that hour lands in a file of its own, numbered above the compacted one, and is seen.
    let server = TestServer::start_in(dir, &overrides).await;
    let mut client = TraceServiceClient::connect(server.grpc_url())
        .await
        .expect("connect");
    let late = old_span(BATCHES, 0);
    let late_id = hex(&late.span_id);
    client
        .export(request("orders-api", vec![late]))
        .await
        .expect("export");
    // Its trace goes quiet and is stitched: a second edges file appears beside the compacted one.
    for _ in 0..200 {
        if files_of(&server.data_dir(), "edges").len() > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let dir = server.stop().await;
    let data = dir.path().join("data");
    assert_eq!(files_of(&data, "edges").len(), 2);
    let ids = stored_ids(&data);
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(ids.len(), unique.len(), "no span stored twice");
    assert_eq!(ids.len(), before["spans"].len() + 1);
    assert!(ids.iter().any(|(_, span)| *span == late_id));
    let spans_files = files_of(&data, "spans");
    let newest = spans_files
        .iter()
        .filter_map(|p| layout::parse_file_seq("local", &p.file_name()?.to_string_lossy()))
        .max();
    assert!(newest > Some(seqs.last), "the late file is numbered above");
    assert_eq!(count_through_sql(&data).await[0], counts_before[0] + 1);
    // The late span's edges are counted once in the engine that followed the files, as in a
    // fresh one.
    let reach_late = reach_of(&engine).await;
    assert_ne!(
        reach_late, reach_before,
        "the late span's edges are in the graph"
    );
    assert_eq!(reach_late, reach_of(&engine_for(&data).await).await);
}

#[test]
fn one_compaction_runs_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_for(dir.path());
    let _held = compact::lock(dir.path()).expect("lock");
    let error = compact::compact(&config, SystemTime::now()).expect_err("refused");
    assert!(error.to_string().contains("another compaction"), "{error}");
}

/// `idtrail compact` leaves files younger than `--min-age` alone, merges the current hour's
/// too, and says what it did as JSON on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compact_command_merges_files_once_they_are_old_enough() {
    let server = TestServer::start(&[
        ("writer.max_file_age", "100ms"),
        ("stitcher.enabled", "false"),
        ("compaction.enabled", "false"),
    ])
    .await;
    let data = server.data_dir();
    let mut client = TraceServiceClient::connect(server.grpc_url())
        .await
        .expect("connect");
    for batch in 0..3u8 {
        let spans = (0..4u8)
            .map(|i| {
                span(
                    &[batch + 1; 16],
                    &[batch + 1, i + 1, 0, 0, 0, 0, 0, 1],
                    "GET /",
                    vec![],
                )
            })
            .collect();
        client.export(request("web", spans)).await.expect("export");
        for _ in 0..200 {
            if files_of(&data, "spans").len() > usize::from(batch) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let dir = server.stop().await;
    let data = dir.path().join("data");
    let files_before = files_of(&data, "spans").len();
    assert!(files_before >= 2);
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_idtrail"))
            .arg("compact")
            .arg("--quiet")
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .output()
            .expect("run idtrail compact");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON summary")
    };
    // Files published seconds ago, in the hour still being written: younger than the default
    // `compaction.min_age`, then taken with `--min-age 0s`.
    assert_eq!(run(&[])["files_written"], 0);
    assert_eq!(files_of(&data, "spans").len(), files_before);
    let summary = run(&["--min-age", "0s"]);
    assert_eq!(summary["files_written"], 1, "{summary}");
    assert_eq!(summary["rows"], 12);
    assert_eq!(files_of(&data, "spans").len(), 1);
    assert_eq!(stored_ids(&data).len(), 12);
}
