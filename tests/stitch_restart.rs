//! Chains survive SIGKILL exactly once: `idtrail serve` is killed while traces sit in the trace
//! buffer (and while stitched chains wait for publication), restarted, and finally allowed to
//! stitch everything. Every side effect stored in the spans table must have its chain, and no
//! chain row may appear twice.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::process::{KillOnDrop, Ports, metric, sigkill, sigterm, wait_until};

use arrow::array::{Array, RecordBatch, StringArray, UInt32Array};

// Traces stay open for 2 s: kills land while many sit in the buffer. Files every 300 ms: kills
// also land between publishing chains and checkpointing the WAL.
fn start_server(dir: &Path, ports: Ports, log_name: &str) -> KillOnDrop {
    common::process::start_server(
        dir,
        ports,
        log_name,
        &[
            "stitcher.quiet_window=2s",
            "writer.max_file_age=300ms",
            "wal.segment_bytes=200000",
        ],
    )
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> &'a StringArray {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .expect("string column")
}

#[test]
fn chains_survive_sigkill_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = Ports::free();
    let (grpc, http) = (ports.grpc, ports.http);
    let mut server = start_server(dir.path(), ports, "serve-0.log");
    let generator = Command::new(env!("CARGO_BIN_EXE_idtrail"))
        .args(["gen", "--quiet", "--seed", "11", "--rate", "3000"])
        .args([
            "--duration",
            "14",
            "--batch-spans",
            "100",
            "--concurrency",
            "4",
        ])
        .args(["--max-retry-secs", "60"])
        .args(["--endpoint", &format!("http://127.0.0.1:{grpc}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn idtrail gen");

    // The first kill lands while every trace is still open. Each later one lands as soon as
    // the restarted server has published chains: its replayed traces and newer ones are then
    // partly stitched and published, partly open, and the WAL still holds records of both.
    std::thread::sleep(Duration::from_millis(1500));
    sigkill(&mut server);
    for round in 1..=3 {
        server = start_server(dir.path(), ports, &format!("serve-{round}.log"));
        wait_until(http, "/metrics", Duration::from_secs(60), |_, body| {
            metric(body, "idtrail_files_written_total{table=\"chains\"}").is_some_and(|n| n > 0.0)
        });
        sigkill(&mut server);
    }
    server = start_server(dir.path(), ports, "serve-4.log");
    let output = generator.wait_with_output().expect("generator");
    assert!(output.status.success(), "generator failed");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).expect("summary");
    assert_eq!(summary["spans_failed"], 0, "{summary}");

    // A last kill with everything still open, then let the restarted server stitch it all.
    sigkill(&mut server);
    let mut server = start_server(dir.path(), ports, "serve-last.log");
    wait_until(http, "/metrics", Duration::from_secs(60), |_, body| {
        metric(body, "idtrail_stitch_buffer_spans") == Some(0.0)
            && metric(body, "idtrail_traces_stitched_total").is_some_and(|n| n > 0.0)
    });
    std::thread::sleep(Duration::from_millis(1500));
    sigterm(&mut server);

    let data_dir = dir.path().join("data");
    // Side effects as the stitcher counts them: db, messaging and MCP resource spans (HTTP
    // effects depend on whether the server side is traced, so they are left out here).
    let mut effects: HashSet<(String, String)> = HashSet::new();
    for batch in common::read_table(&data_dir, "spans") {
        let (traces, spans, kinds) = (
            strings(&batch, "trace_id"),
            strings(&batch, "span_id"),
            strings(&batch, "effect_kind"),
        );
        for i in 0..batch.num_rows() {
            if !kinds.is_null(i) && kinds.value(i) != "http" {
                effects.insert((traces.value(i).to_string(), spans.value(i).to_string()));
            }
        }
    }
    assert!(
        effects.len() > 1000,
        "too few side effects: {}",
        effects.len()
    );

    let mut rows: HashMap<(String, String, u32), usize> = HashMap::new();
    let mut chained: HashSet<(String, String)> = HashSet::new();
    for batch in common::read_table(&data_dir, "chains") {
        let (traces, spans) = (
            strings(&batch, "trace_id"),
            strings(&batch, "effect_span_id"),
        );
        let revisions = batch
            .column_by_name("revision")
            .and_then(|c| c.as_any().downcast_ref::<UInt32Array>())
            .expect("revision");
        for i in 0..batch.num_rows() {
            let key = (traces.value(i).to_string(), spans.value(i).to_string());
            chained.insert(key.clone());
            *rows.entry((key.0, key.1, revisions.value(i))).or_default() += 1;
        }
    }
    let twice: Vec<_> = rows.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "chain rows written twice: {twice:?}");
    let unchained: Vec<_> = effects.difference(&chained).take(5).collect();
    assert!(
        unchained.is_empty(),
        "{} side effects without a chain, e.g. {unchained:?}",
        effects.difference(&chained).count()
    );
}
