//! `idtrail gen`: seeded OTLP trace workload generator (module `workload`: `gen` is a keyword).
//!
//! One OS thread generates and encodes batches (CPU-bound, and keeping it
//! off the async runtime makes its throughput easy to reason about); it
//! paces itself for `--rate` and hands payloads through a bounded channel
//! to `--concurrency` async sender tasks, which gives natural backpressure.

pub mod export;
pub mod scenario;
pub mod tokens;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prost::bytes::Bytes;
use tokio::sync::{Mutex, mpsc, watch};

use export::{Exporter, Ledger, Outcome, Protocol, Stats};
use scenario::{Clock, GenConfig, Generator};

/// Command-line arguments of `idtrail gen`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenArgs {
    /// OTLP endpoint (gRPC: scheme://host:port; HTTP: base URL, /v1/traces is appended).
    #[arg(
        long,
        env = "IDTRAIL_GEN_ENDPOINT",
        default_value = "http://127.0.0.1:4317"
    )]
    pub endpoint: String,
    /// Wire protocol.
    #[arg(long, value_enum, default_value = "grpc")]
    pub protocol: Protocol,
    /// Gzip request bodies (both protocols).
    #[arg(long)]
    pub gzip: bool,
    /// RNG seed: same seed, same ids and content (timestamps follow the clock).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Spans per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Stop generating after this many seconds (0 = no time limit).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many traces (0 = unlimited); whichever limit hits first.
    #[arg(long, default_value_t = 0)]
    pub traces: u64,
    /// Spans per export request (whole traces, so a request may exceed it slightly).
    #[arg(long, default_value_t = 512)]
    pub batch_spans: usize,
    /// Export requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Target attributes per span; padded with realistic incidental attributes.
    #[arg(long, default_value_t = 15)]
    pub attrs_per_span: usize,
    /// Fraction of spans given malformed ids (zero trace id, 5-byte span id, 10-byte trace id).
    #[arg(long, default_value_t = 0.0)]
    pub invalid_share: f64,
    /// Fraction of traces carrying no user/agent/credential attributes.
    #[arg(long, default_value_t = 0.05)]
    pub missing_identity_share: f64,
    /// Secret string planted as a raw credential in some spans (x-api-key header, access_token query).
    #[arg(long)]
    pub canary: Option<String>,
    /// Append `<trace_id_hex> <span_id_hex>` per valid span of every acknowledged request.
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    /// Give up retrying a request after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    pub max_retry_secs: f64,
    /// Per-attempt timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Extra request header / gRPC metadata, K=V (repeatable).
    #[arg(long = "headers", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected K=V, got {s:?}"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("empty header name in {s:?}"));
    }
    Ok((k.to_string(), v.trim().to_string()))
}

/// A request ready to send.
struct Prepared {
    payload: Bytes,
    spans: u64,
    ledger: String,
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .with_context(|| format!("--{name} must be a non-negative number of seconds"))
}

/// Runs the generator until `--duration` / `--traces` is reached or a
/// SIGINT/SIGTERM arrives, then prints the summary JSON on stdout.
pub async fn run(args: GenArgs) -> anyhow::Result<()> {
    let summary = run_report(args).await?;
    println!("{summary}");
    Ok(())
}

/// `run` without the printing: returns the summary object (for tests and
/// callers that embed the generator).
pub async fn run_report(args: GenArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(
        args.rate >= 0.0 && args.rate.is_finite(),
        "--rate must be >= 0"
    );
    let duration = secs("duration", args.duration)?;
    let max_retry = secs("max-retry-secs", args.max_retry_secs)?;
    let cfg = GenConfig {
        seed: args.seed,
        // At low rates a full batch would take many seconds to "earn"; cap
        // it at one second's worth so requests keep flowing steadily.
        batch_spans: if args.rate > 0.0 {
            args.batch_spans.min(args.rate.ceil() as usize).max(1)
        } else {
            args.batch_spans
        },
        attrs_per_span: args.attrs_per_span,
        invalid_share: args.invalid_share,
        missing_identity_share: args.missing_identity_share,
        canary: args.canary.clone(),
        ledger: args.ledger.is_some(),
        clock: Clock::Wall,
    };
    // Build the generator up front so bad arguments fail before any traffic.
    let generator = Generator::new(cfg)?;
    let exporter = Arc::new(Exporter::new(
        args.protocol,
        &args.endpoint,
        &args.headers,
        args.gzip,
        Duration::from_millis(args.timeout_ms),
        max_retry,
    )?);
    let ledger = match &args.ledger {
        Some(p) => {
            Some(Arc::new(Ledger::open(p).with_context(|| {
                format!("opening ledger {}", p.display())
            })?))
        }
        None => None,
    };
    let stats = Arc::new(Stats::new()?);
    let stop = Arc::new(AtomicBool::new(false));
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let started = Instant::now();

    let (tx, rx) = mpsc::channel::<Prepared>(args.concurrency);
    let gen_thread = {
        let (stop, exporter) = (Arc::clone(&stop), Arc::clone(&exporter));
        let limits = Limits {
            duration: (args.duration > 0.0).then_some(duration),
            traces: args.traces,
            rate: args.rate,
        };
        std::thread::Builder::new()
            .name("idtrail-gen".into())
            .spawn(move || generate(generator, &exporter, &limits, &stop, &tx))?
    };

    let rx = Arc::new(Mutex::new(rx));
    let mut workers = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let (rx, exporter, stats, ledger) = (
            Arc::clone(&rx),
            Arc::clone(&exporter),
            Arc::clone(&stats),
            ledger.clone(),
        );
        let (cancel, stop) = (cancel_rx.clone(), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            let result = send_loop(rx, exporter, stats, ledger, cancel).await;
            if result.is_err() {
                // A broken ledger makes the run useless: stop generating.
                stop.store(true, Relaxed);
            }
            result
        }));
    }

    let signals = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            shutdown_signal().await;
            eprintln!("gen: signal received, stopping (in-flight requests finish, retries stop)");
            stop.store(true, Relaxed);
            let _ = cancel_tx.send(true);
        }
    });
    let progress = (!args.quiet).then(|| tokio::spawn(progress_loop(Arc::clone(&stats), started)));

    let mut first_err = None;
    for w in workers {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(anyhow::anyhow!("sender task panicked: {e}"));
            }
        }
    }
    // Senders are done, so the channel is closed or drained; the thread has
    // finished or will on its next send.
    stop.store(true, Relaxed);
    let gen_result = tokio::task::spawn_blocking(move || gen_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("generator thread panicked"))?;
    signals.abort();
    if let Some(p) = progress {
        p.abort();
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    gen_result?;
    Ok(summary(&stats, started.elapsed()))
}

/// When the generator thread stops producing.
struct Limits {
    duration: Option<Duration>,
    traces: u64,
    rate: f64,
}

fn generate(
    mut generator: Generator,
    exporter: &Exporter,
    limits: &Limits,
    stop: &AtomicBool,
    tx: &mpsc::Sender<Prepared>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = limits.duration.map(|d| start + d);
    let mut budget = if limits.traces == 0 {
        u64::MAX
    } else {
        limits.traces
    };
    // Token bucket by schedule: each batch "costs" spans/rate seconds; we
    // sleep until its slot. Falling >1s behind resets the schedule rather
    // than bursting to catch up.
    let mut next_slot = start;
    loop {
        if stop.load(Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        let Some(batch) = generator.next_batch(&mut budget)? else {
            return Ok(());
        };
        let payload = exporter.prepare(batch.encode())?;
        if limits.rate > 0.0 {
            let now = Instant::now();
            if next_slot + Duration::from_secs(1) < now {
                next_slot = now;
            }
            if let Some(d) = deadline
                && next_slot >= d
            {
                return Ok(());
            }
            if next_slot > now {
                std::thread::sleep(next_slot - now);
            }
            next_slot += Duration::from_secs_f64(batch.spans as f64 / limits.rate);
        }
        let prepared = Prepared {
            payload,
            spans: batch.spans,
            ledger: batch.ledger,
        };
        if tx.blocking_send(prepared).is_err() {
            return Ok(()); // senders gone (error or shutdown)
        }
    }
}

async fn send_loop(
    rx: Arc<Mutex<mpsc::Receiver<Prepared>>>,
    exporter: Arc<Exporter>,
    stats: Arc<Stats>,
    ledger: Option<Arc<Ledger>>,
    mut cancel: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let next = rx.lock().await.recv().await;
        let Some(req) = next else {
            return Ok(());
        };
        stats.requests.fetch_add(1, Relaxed);
        stats.spans_sent.fetch_add(req.spans, Relaxed);
        match exporter.export(&req.payload, &stats, &mut cancel).await {
            Outcome::Acked { rejected } => {
                let rejected = rejected.min(req.spans);
                if let Some(l) = &ledger {
                    l.append(&req.ledger).context("writing ledger")?;
                }
                stats.spans_acked.fetch_add(req.spans - rejected, Relaxed);
                stats.spans_rejected.fetch_add(rejected, Relaxed);
            }
            Outcome::Failed => {
                stats.spans_failed.fetch_add(req.spans, Relaxed);
            }
        }
    }
}

async fn progress_loop(stats: Arc<Stats>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last, mut last_t) = (0u64, Instant::now());
    loop {
        tick.tick().await;
        let acked = stats.spans_acked.load(Relaxed);
        let now = Instant::now();
        let rate = (acked - last) as f64 / now.duration_since(last_t).as_secs_f64();
        eprintln!(
            "gen: {:6.1}s acked={acked} rate={rate:.0} spans/s",
            started.elapsed().as_secs_f64()
        );
        (last, last_t) = (acked, now);
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn summary(stats: &Stats, elapsed: Duration) -> serde_json::Value {
    let secs = elapsed.as_secs_f64();
    let acked = stats.spans_acked.load(Relaxed);
    let latency = match stats.latency_us.lock() {
        Ok(h) if !h.is_empty() => {
            let ms = |us: u64| us as f64 / 1000.0;
            serde_json::json!({
                "p50": ms(h.value_at_quantile(0.50)),
                "p90": ms(h.value_at_quantile(0.90)),
                "p99": ms(h.value_at_quantile(0.99)),
                "max": ms(h.max()),
            })
        }
        _ => serde_json::json!({"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}),
    };
    serde_json::json!({
        "requests": stats.requests.load(Relaxed),
        "spans_sent": stats.spans_sent.load(Relaxed),
        "spans_acked": acked,
        "spans_rejected": stats.spans_rejected.load(Relaxed),
        "spans_failed": stats.spans_failed.load(Relaxed),
        "retries": stats.retries.load(Relaxed),
        "errors": stats.errors.load(Relaxed),
        "duration_s": (secs * 1000.0).round() / 1000.0,
        "spans_per_s": if secs > 0.0 { (acked as f64 / secs).round() } else { 0.0 },
        "latency_ms": latency,
    })
}
