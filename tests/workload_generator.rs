//! End-to-end: the generator against in-process test receivers.

#[path = "workload_support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use idtrail::workload::{GenArgs, run_report};
use serde_json::Value;
use support::{Failure, Receiver, Seen};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: GenArgs,
}

fn args(endpoint: &str, extra: &[&str]) -> GenArgs {
    let mut v = vec!["gen", "--endpoint", endpoint, "--quiet"];
    v.extend_from_slice(extra);
    Cli::parse_from(v).args
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("idtrail-gen-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn seen(r: &Receiver) -> std::sync::MutexGuard<'_, Seen> {
    r.seen.lock().unwrap_or_else(|p| p.into_inner())
}

async fn grpc(recv: Arc<Receiver>) -> anyhow::Result<String> {
    let (l, addr) = support::listener().await?;
    tokio::spawn(support::serve_grpc(l, recv));
    Ok(format!("http://{addr}"))
}

async fn http(recv: Arc<Receiver>) -> anyhow::Result<String> {
    let (l, addr) = support::listener().await?;
    tokio::spawn(support::serve_http(l, recv));
    Ok(format!("http://{addr}"))
}

fn assert_accounting(s: &Value) {
    assert_eq!(
        n(s, "spans_sent"),
        n(s, "spans_acked") + n(s, "spans_rejected") + n(s, "spans_failed"),
        "{s}"
    );
}

fn ledger_ids(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .map(str::to_string)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_ledger_matches_receiver() -> anyhow::Result<()> {
    let recv = Receiver::new(true);
    let ep = grpc(recv.clone()).await?;
    let ledger = tmp("grpc-ledger");
    let l = ledger.to_string_lossy().to_string();
    let s = run_report(args(
        &ep,
        &["--traces", "300", "--invalid-share", "0.05", "--ledger", &l],
    ))
    .await?;
    assert_accounting(&s);
    let seen = seen(&recv);
    assert_eq!(n(&s, "spans_sent"), seen.spans);
    assert_eq!(n(&s, "spans_acked"), seen.valid);
    assert_eq!(n(&s, "spans_rejected"), seen.invalid);
    assert!(seen.invalid > 0);
    assert_eq!(n(&s, "spans_failed"), 0);
    let lines = ledger_ids(&ledger)?;
    assert_eq!(lines.len() as u64, seen.valid);
    assert_eq!(lines.into_iter().collect::<HashSet<_>>(), seen.ids);
    assert!(s["latency_ms"]["p50"].as_f64().is_some_and(|v| v > 0.0));
    std::fs::remove_file(&ledger)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_ids_over_the_wire() -> anyhow::Result<()> {
    let (r1, r2, r3) = (
        Receiver::new(true),
        Receiver::new(true),
        Receiver::new(true),
    );
    let (e1, e2, e3) = (
        grpc(r1.clone()).await?,
        grpc(r2.clone()).await?,
        grpc(r3.clone()).await?,
    );
    run_report(args(&e1, &["--traces", "100", "--seed", "9"])).await?;
    run_report(args(
        &e2,
        &["--traces", "100", "--seed", "9", "--protocol", "grpc"],
    ))
    .await?;
    run_report(args(&e3, &["--traces", "100", "--seed", "10"])).await?;
    let (a, b, c) = (
        seen(&r1).ids.clone(),
        seen(&r2).ids.clone(),
        seen(&r3).ids.clone(),
    );
    assert!(!a.is_empty());
    assert_eq!(a, b);
    assert!(a.is_disjoint(&c));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried() -> anyhow::Result<()> {
    let recv = Receiver::failing(false, 3, Failure::Unavailable, 0);
    let ep = grpc(recv.clone()).await?;
    let s = run_report(args(&ep, &["--traces", "60", "--concurrency", "1"])).await?;
    assert_eq!(
        (n(&s, "retries"), n(&s, "errors"), n(&s, "spans_failed")),
        (3, 3, 0),
        "{s}"
    );
    assert_eq!(n(&s, "spans_acked"), seen(&recv).spans);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_resource_exhausted_needs_retry_info() -> anyhow::Result<()> {
    let recv = Receiver::failing(false, 1, Failure::ResourceExhausted, 0);
    let ep = grpc(recv.clone()).await?;
    let s = run_report(args(&ep, &["--traces", "100", "--concurrency", "1"])).await?;
    assert_eq!(n(&s, "retries"), 0, "{s}");
    assert!(n(&s, "spans_failed") > 0);
    assert_accounting(&s);

    let recv = Receiver::failing(false, 1, Failure::ResourceExhaustedRetryInfo, 0);
    let ep = grpc(recv.clone()).await?;
    let t = Instant::now();
    let s = run_report(args(&ep, &["--traces", "100", "--concurrency", "1"])).await?;
    assert_eq!((n(&s, "retries"), n(&s, "spans_failed")), (1, 0), "{s}");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "RetryInfo delay honoured"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_invalid_argument_is_not_retried() -> anyhow::Result<()> {
    let recv = Receiver::failing(false, 1, Failure::InvalidArgument, 0);
    let ep = grpc(recv.clone()).await?;
    let s = run_report(args(&ep, &["--traces", "100", "--concurrency", "1"])).await?;
    assert_eq!((n(&s, "retries"), n(&s, "errors")), (0, 1), "{s}");
    assert!(n(&s, "spans_failed") > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_gzip_and_headers() -> anyhow::Result<()> {
    let recv = Receiver::new(false);
    let ep = grpc(recv.clone()).await?;
    let s = run_report(args(
        &ep,
        &[
            "--traces",
            "200",
            "--gzip",
            "--headers",
            "Authorization=Bearer ingest-1",
            "--headers",
            "x-tenant=t1",
        ],
    ))
    .await?;
    let seen = seen(&recv);
    assert_eq!(seen.gzip_requests, seen.requests);
    assert_eq!(n(&s, "requests"), seen.requests);
    assert!(
        seen.headers
            .contains(&("authorization".into(), "Bearer ingest-1".into()))
    );
    assert!(seen.headers.contains(&("x-tenant".into(), "t1".into())));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_gzip_headers_and_ledger() -> anyhow::Result<()> {
    let recv = Receiver::new(true);
    let ep = http(recv.clone()).await?;
    let ledger = tmp("http-ledger");
    let l = ledger.to_string_lossy().to_string();
    let s = run_report(args(
        &ep,
        &[
            "--protocol",
            "http",
            "--traces",
            "300",
            "--gzip",
            "--invalid-share",
            "0.03",
            "--ledger",
            &l,
            "--headers",
            "authorization=Bearer ingest-2",
        ],
    ))
    .await?;
    assert_accounting(&s);
    let seen = seen(&recv);
    assert_eq!(seen.gzip_requests, seen.requests);
    assert_eq!(n(&s, "spans_acked"), seen.valid);
    assert_eq!(n(&s, "spans_rejected"), seen.invalid);
    assert!(
        seen.headers
            .contains(&("authorization".into(), "Bearer ingest-2".into()))
    );
    assert_eq!(
        ledger_ids(&ledger)?.into_iter().collect::<HashSet<_>>(),
        seen.ids
    );
    std::fs::remove_file(&ledger)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_503_honours_retry_after() -> anyhow::Result<()> {
    let recv = Receiver::failing(false, 1, Failure::Http(503), 1);
    let ep = http(recv.clone()).await?;
    let t = Instant::now();
    let s = run_report(args(
        &ep,
        &["--protocol", "http", "--traces", "50", "--concurrency", "1"],
    ))
    .await?;
    assert_eq!((n(&s, "retries"), n(&s, "spans_failed")), (1, 0), "{s}");
    assert!(t.elapsed() >= Duration::from_secs(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_429_retried_400_and_413_not() -> anyhow::Result<()> {
    let recv = Receiver::failing(false, 2, Failure::Http(429), 0);
    let ep = http(recv.clone()).await?;
    let s = run_report(args(
        &ep,
        &["--protocol", "http", "--traces", "50", "--concurrency", "1"],
    ))
    .await?;
    assert_eq!((n(&s, "retries"), n(&s, "spans_failed")), (2, 0), "{s}");

    for code in [400, 413] {
        let recv = Receiver::failing(false, 1, Failure::Http(code), 0);
        let ep = http(recv.clone()).await?;
        let s = run_report(args(
            &ep,
            &[
                "--protocol",
                "http",
                "--traces",
                "100",
                "--concurrency",
                "1",
            ],
        ))
        .await?;
        assert_eq!((n(&s, "retries"), n(&s, "errors")), (0, 1), "{code}: {s}");
        assert!(n(&s, "spans_failed") > 0);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_until_server_appears() -> anyhow::Result<()> {
    for proto in ["grpc", "http"] {
        let (l, addr) = support::listener().await?;
        drop(l); // nothing listens until we re-bind below
        let ep = format!("http://{addr}");
        let a = args(
            &ep,
            &[
                "--protocol",
                proto,
                "--traces",
                "80",
                "--max-retry-secs",
                "10",
            ],
        );
        let run = tokio::spawn(run_report(a));
        tokio::time::sleep(Duration::from_millis(700)).await;
        let recv = Receiver::new(false);
        let l = tokio::net::TcpListener::bind(addr).await?;
        if proto == "grpc" {
            tokio::spawn(support::serve_grpc(l, recv.clone()));
        } else {
            tokio::spawn(support::serve_http(l, recv.clone()));
        }
        let s = run.await??;
        assert!(n(&s, "retries") > 0, "{proto}: {s}");
        assert_eq!(n(&s, "spans_failed"), 0, "{proto}: {s}");
        assert_eq!(n(&s, "spans_acked"), seen(&recv).spans, "{proto}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_deadline_gives_up() -> anyhow::Result<()> {
    let (l, addr) = support::listener().await?;
    drop(l);
    let t = Instant::now();
    let a = args(
        &format!("http://{addr}"),
        &["--traces", "30", "--max-retry-secs", "1"],
    );
    let s = run_report(a).await?;
    assert_eq!(n(&s, "spans_acked"), 0);
    assert_eq!(n(&s, "spans_failed"), n(&s, "spans_sent"));
    assert!(n(&s, "retries") >= 2);
    assert!(t.elapsed() < Duration::from_secs(4));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_and_duration_are_respected() -> anyhow::Result<()> {
    let recv = Receiver::new(false);
    let ep = grpc(recv.clone()).await?;
    let s = run_report(args(
        &ep,
        &["--rate", "5000", "--duration", "2", "--batch-spans", "250"],
    ))
    .await?;
    let sent = n(&s, "spans_sent");
    assert!(
        (8_500..=11_000).contains(&sent),
        "sent {sent} at 5000/s for 2s"
    );
    let d = s["duration_s"].as_f64().unwrap_or(0.0);
    assert!((1.8..3.0).contains(&d), "duration {d}");
    Ok(())
}

/// Crash-test shape: SIGKILL the generator mid-run; every ledger line must
/// be complete and name a span the receiver really got.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_survives_sigkill() -> anyhow::Result<()> {
    let recv = Receiver::new(true);
    let ep = grpc(recv.clone()).await?;
    let ledger = tmp("kill-ledger");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_idtrail"))
        .args([
            "gen",
            "--endpoint",
            &ep,
            "--quiet",
            "--rate",
            "20000",
            "--duration",
            "30",
        ])
        .arg("--ledger")
        .arg(&ledger)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.start_kill()?;
    child.wait().await?;
    let raw = std::fs::read_to_string(&ledger)?;
    assert!(raw.ends_with('\n'));
    let lines: Vec<&str> = raw.lines().collect();
    assert!(lines.len() > 5_000, "{} lines", lines.len());
    let seen = seen(&recv);
    for l in &lines {
        assert_eq!(l.len(), 49);
        assert!(seen.ids.contains(*l), "ledger line {l} never received");
    }
    std::fs::remove_file(&ledger)?;
    Ok(())
}
