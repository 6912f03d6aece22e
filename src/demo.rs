//! `idtrail demo`: the whole pipeline on a local directory in a minute. It starts the collector
//! on free loopback ports, drives `idtrail gen` (a separate process, real OTLP/gRPC) at it,
//! waits until every trace is stitched, stops the collector (publishing what it holds), then
//! answers a few attribution questions, lists the findings, writes an incident report and says
//! how to go on.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow::array::{Array, RecordBatch};
use clap::Parser;
use idtrail_query::{QueryEngine, QueryOptions};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::oneshot;

use crate::findings::FindingsArgs;
use crate::serve::BoundAddresses;

/// Marks a directory as the demo's own, so a second run may clear it.
const MARKER: &str = ".idtrail-demo";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Directory for the demo's data, declared owners and grants, and report (cleared first if
    /// an earlier demo made it).
    #[arg(long, default_value = "idtrail-demo")]
    pub dir: PathBuf,
    /// Seconds of generated traffic.
    #[arg(long, default_value_t = 8.0)]
    pub seconds: f64,
    /// Spans per second the generator sends.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Generator seed: the same seed gives the same identities and traces.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Owners the demo declares: the nightly export job has an approved owner (its writes become
/// attributable); the billing worker's owner revoked it, yet it still runs (a finding).
const OWNERS: &str = "\
# Who answers for which identity (query.owners_files). Edit and re-run `idtrail findings`.
owners:
  - {kind: workload, id: nightly-export, owner: data-platform@example.com, approved: true,
     expires_at: \"2030-01-01T00:00:00Z\"}
  - {kind: workload, id: billing-worker, owner: billing@example.com, approved: true,
     revoked_at: \"2026-01-01T00:00:00Z\"}
";

/// Grants the demo declares: what each scope is for, so blast radius has a potential side.
const GRANTS: &str = "\
# What scopes and agents may reach (query.grants_files): potential blast radius follows them.
grants:
  - {subject_kind: scope, subject_id: orders:write, target_kind: operation, target_pattern: \"* DELETE /orders*\"}
  - {subject_kind: scope, subject_id: orders:write, target_kind: operation, target_pattern: \"* POST /orders*\"}
  - {subject_kind: scope, subject_id: orders:read, target_kind: operation, target_pattern: \"* GET /orders*\"}
  - {subject_kind: scope, subject_id: events:publish, target_kind: resource, target_pattern: \"messaging:*\"}
";

pub fn run(args: &DemoArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let started = Instant::now();
    // The collector runs inside this process: only its warnings show, beside the progress.
    crate::init_cli_logging();
    prepare_dir(&args.dir)?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let data_dir = dir.join("data");
    let owners = dir.join("owners.yaml");
    let grants = dir.join("grants.yaml");
    std::fs::write(&owners, OWNERS).context("writing owners.yaml")?;
    std::fs::write(&grants, GRANTS).context("writing grants.yaml")?;
    // The config the demo runs with, kept for the commands it suggests afterwards.
    let config_path = dir.join("idtrail.yaml");
    let quoted = |p: &Path| serde_json::to_string(&p.display().to_string());
    std::fs::write(
        &config_path,
        format!(
            "# Written by `idtrail demo`: pass it to query, findings, report or serve with -c.\n\
             data_dir: {data}\nkey_file: {key}\nquery:\n  owners_files: [{owners}]\n  \
             grants_files: [{grants}]\n",
            data = quoted(&data_dir)?,
            key = quoted(&dir.join("fp.key"))?,
            owners = quoted(&owners)?,
            grants = quoted(&grants)?,
        ),
    )
    .context("writing idtrail.yaml")?;
    let config = crate::load_config(
        Some(&config_path),
        &[],
        &[
            ("receivers.grpc_address", Some("127.0.0.1:0".into())),
            ("receivers.http_address", Some("127.0.0.1:0".into())),
            ("query.flight_sql_address", Some("null".into())),
            // Short windows so that traces are stitched seconds after the traffic stops.
            ("stitcher.quiet_window", Some("2s".into())),
            ("stitcher.late_window", Some("3s".into())),
            ("writer.max_file_age", Some("1s".into())),
        ],
    )?;
    let options = QueryOptions::from_config(config.data_dir.clone(), &config.query);

    println!("idtrail demo: the pipeline on {}\n", dir.display());
    let step = spinner("starting the collector");
    let (bound_tx, bound_rx) = oneshot::channel::<BoundAddresses>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = runtime.spawn(crate::serve::run_with(
        config,
        async move {
            let _ = stop_rx.await;
        },
        move |bound| {
            let _ = bound_tx.send(bound);
        },
    ));
    let bound = match runtime.block_on(bound_rx) {
        Ok(bound) => bound,
        Err(_) => {
            // The server stopped before it listened: its error says why.
            let error = runtime
                .block_on(server)
                .context("the collector panicked")?
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("the collector stopped"));
            return Err(error.context("starting the collector"));
        }
    };
    let http = format!("http://{}", bound.http);
    runtime.block_on(wait_ready(&http))?;
    done(
        &step,
        format!(
            "collector listening: OTLP/gRPC {}, OTLP/HTTP {}",
            bound.grpc, bound.http
        ),
    );

    let acked = runtime.block_on(drive_generator(args, &bound, &http))?;
    let stitched = runtime.block_on(wait_stitched(&options, acked, &http))?;

    let step = spinner("stopping the collector (publishing what it holds)");
    let _ = stop_tx.send(());
    runtime
        .block_on(server)
        .context("the collector panicked")?
        .context("the collector failed")?;
    done(
        &step,
        format!("collector stopped: {acked} spans acknowledged, {stitched} chains stitched"),
    );

    runtime.block_on(answer(&options, &dir, &config_path))?;
    println!("\nDone in {:.0} s.", started.elapsed().as_secs_f64());
    Ok(())
}

/// Creates the directory, or clears one an earlier demo made; refuses anything else.
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let has_entries = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some();
        if has_entries && !dir.join(MARKER).exists() {
            bail!(
                "{} exists and was not made by `idtrail demo`: pass --dir with a new directory",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "made by idtrail demo; it clears this directory\n",
    )
    .context("marking the demo directory")?;
    Ok(())
}

/// Ends a step: the bar's last message, or a plain line when standard error is not a terminal
/// (indicatif draws nothing there, and CI logs should still show the progress).
fn done(bar: &ProgressBar, message: String) {
    if bar.is_hidden() {
        eprintln!("{message}");
    }
    bar.finish_with_message(message);
}

fn spinner(message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

async fn wait_ready(http: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = client.get(format!("{http}/readyz")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the collector did not become ready within 30 s")
}

/// Reads one counter from the collector's /metrics.
async fn counter(client: &reqwest::Client, http: &str, name: &str) -> Option<f64> {
    let text = client
        .get(format!("{http}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

/// Runs `idtrail gen` against the collector, showing the spans it accepts; returns how many
/// spans the generator saw acknowledged.
async fn drive_generator(
    args: &DemoArgs,
    bound: &BoundAddresses,
    http: &str,
) -> anyhow::Result<u64> {
    let exe = std::env::current_exe().context("finding the idtrail executable")?;
    let expected = (args.seconds * args.rate).max(1.0) as u64;
    let bar = ProgressBar::new(expected).with_style(
        ProgressStyle::with_template(
            "{spinner} sending traces over OTLP/gRPC {bar:30} {pos}/{len} spans [{elapsed}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    // A std process waited on by a blocking task: the generator is a separate program talking
    // real OTLP, exactly as a user would run it.
    let child = std::process::Command::new(exe)
        .args([
            "gen",
            "--endpoint",
            &format!("http://{}", bound.grpc),
            "--duration",
            &args.seconds.to_string(),
            "--rate",
            &args.rate.to_string(),
            "--seed",
            &args.seed.to_string(),
            "--quiet",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting idtrail gen")?;
    let mut finished = tokio::task::spawn_blocking(move || child.wait_with_output());
    let client = reqwest::Client::new();
    let output = loop {
        tokio::select! {
            done = &mut finished => {
                let output = done
                    .context("waiting for idtrail gen")?
                    .context("waiting for idtrail gen")?;
                if !output.status.success() {
                    bar.abandon();
                    bail!(
                        "idtrail gen failed ({}): {}",
                        output.status,
                        String::from_utf8_lossy(&output.stderr).trim()
                    );
                }
                break output.stdout;
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if let Some(n) = counter(&client, http, "idtrail_spans_accepted").await {
                    bar.set_length(expected.max(n as u64));
                    bar.set_position(n as u64);
                }
            }
        }
    };
    let summary: serde_json::Value =
        serde_json::from_slice(&output).context("reading idtrail gen's summary")?;
    let acked = summary["spans_acked"].as_u64().unwrap_or(0);
    bar.set_length(acked.max(1));
    bar.set_position(acked);
    done(&bar, format!("sent {acked} spans"));
    if acked == 0 {
        bail!("the collector acknowledged no spans");
    }
    Ok(acked)
}

/// Waits until every acknowledged span is published and the chains stop growing (traces are
/// stitched once quiet for the demo's 2 s window).
async fn wait_stitched(options: &QueryOptions, acked: u64, http: &str) -> anyhow::Result<u64> {
    let bar = spinner("stitching chains (traces quiet for 2 s are stitched)");
    let engine = QueryEngine::new(options.clone())
        .await
        .context("opening the tables")?;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = (u64::MAX, u64::MAX);
    let mut stable = 0;
    loop {
        let spans = count(&engine, "SELECT count(*) FROM spans").await?;
        let chains = count(&engine, "SELECT count(*) FROM chains").await?;
        let buffered = counter(&client, http, "idtrail_stitch_buffer_spans")
            .await
            .unwrap_or(0.0);
        bar.set_message(format!(
            "stitching: {spans}/{acked} spans stored, {chains} chains, {buffered} spans waiting"
        ));
        if spans >= acked && buffered == 0.0 && (spans, chains) == last {
            stable += 1;
            if stable >= 2 {
                done(&bar, format!("stitched: {chains} chains"));
                return Ok(chains);
            }
        } else {
            stable = 0;
        }
        last = (spans, chains);
        if Instant::now() > deadline {
            bar.abandon();
            bail!("stitching did not settle within 120 s ({spans}/{acked} spans stored)");
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

async fn count(engine: &QueryEngine, sql: &str) -> anyhow::Result<u64> {
    let (_, batches) = engine.sql(sql, Vec::new()).await?;
    let column = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| b.column(0).clone());
    Ok(column
        .and_then(|c| {
            arrow::compute::cast(&c, &arrow::datatypes::DataType::UInt64)
                .ok()
                .and_then(|c| {
                    c.as_any()
                        .downcast_ref::<arrow::array::UInt64Array>()
                        .map(|a| a.value(0))
                })
        })
        .unwrap_or(0))
}

/// The questions the demo answers, each with the SQL that answers it.
const QUESTIONS: &[(&str, &str)] = &[
    (
        "Who started the agent runs that deleted data, and with which credential?",
        "SELECT time, effect_operation || ' ' || effect_target AS action,
       coalesce(user_id, '(no human)') AS human, array_to_string(agents, ' > ') AS agents,
       substr(credential_fp, 1, 18) AS credential
FROM chains_attributed
WHERE effect_operation IN ('DELETE', 'DROP', 'TRUNCATE') AND cardinality(agents) > 0
ORDER BY time DESC LIMIT 5",
    ),
    (
        "What share of agent actions can be traced to a human or an approved owner?",
        "SELECT sum(actions) AS agent_actions, sum(traceable_actions) AS traceable,
       round(100.0 * sum(traceable_actions) / sum(actions), 1) AS percent
FROM lineage_coverage WHERE agent IS NOT NULL",
    ),
    (
        "Which credentials are presented by more than one workload?",
        "SELECT substr(credential_fp, 1, 18) AS credential, credential_kind, presenter_count,
       array_to_string(presented_by, ', ') AS presented_by
FROM credential_usage WHERE presenter_count > 1
ORDER BY presenter_count DESC, credential_fp LIMIT 5",
    ),
];

async fn answer(options: &QueryOptions, dir: &Path, config: &Path) -> anyhow::Result<()> {
    let engine = QueryEngine::new(options.clone())
        .await
        .context("opening the tables")?;
    for (question, sql) in QUESTIONS {
        println!("\n{question}\n");
        println!("{}\n", indent(sql));
        let (_, batches) = engine.sql(sql, Vec::new()).await?;
        print_batches(&batches)?;
    }

    // The findings, one line per rule, exactly as `idtrail findings --summary` prints them.
    #[derive(Parser)]
    struct Findings {
        #[command(flatten)]
        args: FindingsArgs,
    }
    let summary = Findings::parse_from(["findings", "--summary"]).args.sql();
    println!("\nFindings of the detection rules (idtrail findings --summary):\n");
    let (_, batches) = engine.sql(&summary, Vec::new()).await?;
    print_batches(&batches)?;

    // A report on the credential behind the most side effects among those a high or critical
    // finding names and agents used (else the busiest one): chains to draw, findings to show.
    let pick = "WITH flagged AS (
          SELECT DISTINCT subject_id AS credential_fp FROM findings
          WHERE subject_kind = 'credential' AND severity IN ('critical', 'high'))
        SELECT c.credential_fp FROM chains_latest c
        LEFT JOIN flagged f ON f.credential_fp = c.credential_fp
        WHERE c.credential_fp IS NOT NULL
        GROUP BY c.credential_fp
        ORDER BY bool_or(f.credential_fp IS NOT NULL) DESC,
                 bool_or(cardinality(c.agents) > 0) DESC, count(*) DESC, c.credential_fp
        LIMIT 1";
    let (_, batches) = engine.sql(pick, Vec::new()).await?;
    let credential = first_text(&batches);
    let (_, batches) = engine
        .sql(
            "SELECT user_id FROM chains WHERE user_id IS NOT NULL \
             GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1",
            Vec::new(),
        )
        .await?;
    // The suggestions paste the user id into SQL and shell lines: only a plain one is used.
    let user = first_text(&batches)
        .filter(|u| {
            u.chars()
                .all(|c| c.is_ascii_alphanumeric() || "@._-+".contains(c))
        })
        .unwrap_or_else(|| "alice@example.com".into());
    let report_path = dir.join("report.html");
    let config = config.display();
    if let Some(credential) = &credential {
        let bar = spinner("writing the incident report");
        let scope = idtrail_report::Scope::new(
            idtrail_report::Subject::Credential(credential.clone()),
            None,
            None,
        )?;
        let report =
            idtrail_report::build(&engine, &scope, &idtrail_report::ReportOptions::default())
                .await?;
        std::fs::write(&report_path, idtrail_report::render::html(&report))
            .with_context(|| format!("writing {}", report_path.display()))?;
        done(
            &bar,
            format!(
                "incident report for credential {}… written in {} ms",
                credential.chars().take(18).collect::<String>(),
                report.elapsed_ms
            ),
        );
        println!("\nOpen the report: {}", report_path.display());
    }
    println!(
        "\nGo on (the config holds the data directory and the declared owners and grants):
  idtrail query -c {config}          # a SQL prompt; \\d lists tables and views
  idtrail query -c {config} \"SELECT reach, kind, id, depth FROM blast_radius('user', '{user}', 6)\"
  idtrail findings -c {config}
  idtrail report -c {config} --user {user} --output user.html
  idtrail serve -c {config}          # Flight SQL on 127.0.0.1:50051 for Grafana (dashboards/)"
    );
    Ok(())
}

/// The first cell of an answer, as text.
fn first_text(batches: &[RecordBatch]) -> Option<String> {
    let batch = batches.iter().find(|b| b.num_rows() > 0)?;
    let column = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).ok()?;
    let strings = column
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()?;
    (!strings.is_null(0)).then(|| strings.value(0).to_string())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn print_batches(batches: &[RecordBatch]) -> anyhow::Result<()> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        println!("    (none)");
        return Ok(());
    }
    let table = arrow::util::pretty::pretty_format_batches(batches)?;
    println!("{}", indent(&table.to_string()));
    Ok(())
}
