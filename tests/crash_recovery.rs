//! Acknowledged data survives SIGKILL: `idtrail serve` is killed repeatedly while `idtrail gen`
//! exports to it (retrying as OpenTelemetry exporters do), then restarted. Every span the
//! generator saw acknowledged must be in Parquet exactly once, and no span may be stored twice.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Ports {
    grpc: u16,
    http: u16,
}

fn start_server(dir: &Path, ports: &Ports, log_name: &str) -> Child {
    let log = std::fs::File::create(dir.join(log_name)).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_idtrail"))
        .args(["serve", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--key-file")
        .arg(dir.join("fp.key"))
        .args(["--grpc-address", &format!("127.0.0.1:{}", ports.grpc)])
        .args(["--http-address", &format!("127.0.0.1:{}", ports.http)])
        // Small files and segments, so kills land before, during and after publications.
        .args([
            "--set",
            "writer.max_file_age=300ms",
            "--set",
            "wal.segment_bytes=200000",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn idtrail serve");
    wait_ready(ports.http);
    child
}

fn wait_ready(http_port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let url = format!("http://127.0.0.1:{http_port}/readyz");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    while Instant::now() < deadline {
        let ready = runtime.block_on(async {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
        });
        if ready {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("idtrail serve did not become ready");
}

fn sigkill(child: &mut Child) {
    child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    child.wait().expect("reap");
}

fn sigterm(child: &mut Child) {
    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
}

#[test]
fn acknowledged_spans_survive_sigkill_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = Ports {
        grpc: free_port(),
        http: free_port(),
    };
    let ledger = dir.path().join("ledger.txt");
    let mut server = start_server(dir.path(), &ports, "serve-0.log");
    let generator = Command::new(env!("CARGO_BIN_EXE_idtrail"))
        .args([
            "gen",
            "--quiet",
            "--seed",
            "7",
            "--rate",
            "4000",
            "--duration",
            "9",
        ])
        .args([
            "--batch-spans",
            "200",
            "--concurrency",
            "4",
            "--max-retry-secs",
            "60",
        ])
        .args(["--invalid-share", "0.01"])
        .args(["--endpoint", &format!("http://127.0.0.1:{}", ports.grpc)])
        .arg("--ledger")
        .arg(&ledger)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn idtrail gen");

    for round in 1..=3 {
        std::thread::sleep(Duration::from_millis(1500 + 400 * round));
        sigkill(&mut server);
        std::thread::sleep(Duration::from_millis(300));
        server = start_server(dir.path(), &ports, &format!("serve-{round}.log"));
    }
    let output = generator.wait_with_output().expect("generator");
    assert!(output.status.success(), "generator failed");
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("generator summary");
    assert_eq!(
        summary["spans_failed"], 0,
        "every request was eventually acknowledged: {summary}"
    );

    // One more kill with data still buffered, then a graceful stop that publishes the rest.
    sigkill(&mut server);
    let mut server = start_server(dir.path(), &ports, "serve-last.log");
    sigterm(&mut server);

    let acked: HashSet<(String, String)> = std::fs::read_to_string(&ledger)
        .expect("ledger")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, s)| (t.to_string(), s.to_string()))
        .collect();
    assert!(
        acked.len() > 10_000,
        "the test exported too little: {}",
        acked.len()
    );

    let stored = common::stored_ids(&dir.path().join("data"));
    let mut counts: HashMap<&(String, String), usize> = HashMap::new();
    for id in &stored {
        *counts.entry(id).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        duplicated.is_empty(),
        "spans stored more than once: {duplicated:?}"
    );
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !counts.contains_key(id))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged spans lost, e.g. {missing:?}",
        acked.iter().filter(|id| !counts.contains_key(id)).count()
    );
}
