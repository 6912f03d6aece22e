//! The query API's guard rails, against a running `idtrail serve`: refused statements, a query
//! over its memory limit and one over its timeout each get a clear error, the next query still
//! answers, and ingest carries on undisturbed meanwhile. Files published while the server runs
//! are visible to the next query without a restart.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{Ports, sigterm, start_server};
use serde_json::{Value, json};

async fn query(http: u16, sql: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{http}/v1/query"))
        .header("content-type", "application/json")
        .body(json!({ "sql": sql }).to_string())
        .send()
        .await
        .expect("query request");
    let status = response.status().as_u16();
    let body = response.text().await.expect("query body");
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

async fn span_count(http: u16) -> u64 {
    let (status, body) = query(http, "SELECT count(*) AS n FROM spans").await;
    assert_eq!(status, 200, "{body}");
    body["rows"][0]["n"].as_u64().expect("count")
}

#[test]
fn limits_give_clear_errors_while_ingest_carries_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = Ports::free();
    let mut server = start_server(
        dir.path(),
        ports,
        "serve.log",
        &[
            "query.memory_limit_bytes=4000000",
            "query.timeout=1500ms",
            "writer.max_file_age=300ms",
            "stitcher.quiet_window=1s",
        ],
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(exercise(ports));
    sigterm(&mut server);
}

async fn exercise(ports: Ports) {
    assert_eq!(span_count(ports.http).await, 0);

    // Ingest runs for the whole test.
    let generator = Command::new(env!("CARGO_BIN_EXE_idtrail"))
        .args(["gen", "--quiet", "--duration", "8", "--rate", "2000"])
        .args(["--endpoint", &format!("http://127.0.0.1:{}", ports.grpc)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn idtrail gen");

    // New files become visible to the next query, without a restart.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let n = span_count(ports.http).await;
        if n > 0 {
            break n;
        }
        assert!(Instant::now() < deadline, "spans never became visible");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let (status, body) = query(ports.http, "DROP TABLE spans").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("read-only"),
        "{body}"
    );

    let (status, body) = query(
        ports.http,
        "SELECT value, count(*) FROM generate_series(1, 5000000) GROUP BY value",
    )
    .await;
    assert_eq!(status, 507, "{body}");
    let message = body["error"].as_str().unwrap_or("");
    assert!(message.contains("query.memory_limit_bytes"), "{message}");

    let started = Instant::now();
    // Endless but one row at a time: a scan of generate_series is repartitioned, and when the
    // consumers lag its buffer can hit the 4 MB limit before the deadline (507, not 504).
    let (status, body) = query(
        ports.http,
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("query.timeout"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the timeout did not cut the query off"
    );

    // The engine still answers, and sees more spans than before.
    let later = span_count(ports.http).await;
    assert!(later >= first, "{later} < {first}");

    let output = generator.wait_with_output().expect("generator");
    assert!(output.status.success());
    let summary: Value = serde_json::from_slice(&output.stdout).expect("generator summary");
    assert_eq!(summary["spans_failed"], 0, "{summary}");
    assert_eq!(summary["errors"], 0, "ingest was disturbed: {summary}");
    let acked = summary["spans_acked"].as_u64().expect("acked");
    assert!(acked > 0);

    // Every acknowledged span reaches the table the query engine reads.
    let deadline = Instant::now() + Duration::from_secs(20);
    while span_count(ports.http).await < acked {
        assert!(
            Instant::now() < deadline,
            "acknowledged spans never all became visible"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
