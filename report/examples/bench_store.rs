//! Latency over a populated data directory: the questions DESIGN.md sets targets for (one
//! credential's spans, the chain of one side effect, blast radius), incident reports and the
//! `findings` view. Each cold (a fresh engine: no footer, statistics or graph cache; the OS page
//! cache is as the machine left it) and warm (median of 5 repeats on the same engine).
//!
//! ```sh
//! cargo run --release -p idtrail-report --example bench_store -- DATA_DIR [--queries-only]
//! ```
//! `--queries-only` stops after the query table (reports and findings take minutes).
//! `scripts/bench-query` fills a data directory with `idtrail gen` first.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use idtrail_query::{QueryEngine, QueryOptions};
use idtrail_report::{ReportOptions, Scope, Subject};

fn options(data_dir: &Path) -> QueryOptions {
    QueryOptions {
        data_dir: data_dir.to_path_buf(),
        memory_limit_bytes: 4 << 30,
        timeout: Duration::from_secs(600),
        owners_files: Vec::new(),
        grants_files: Vec::new(),
        rules_dirs: Vec::new(),
    }
}

async fn first_value(engine: &QueryEngine, sql: &str) -> Vec<String> {
    let (_, batches) = engine.sql(sql, Vec::new()).await.expect(sql);
    let batch = batches.iter().find(|b| b.num_rows() > 0).expect("a row");
    (0..batch.num_columns())
        .map(|c| {
            let column = arrow::compute::cast(batch.column(c), &arrow::datatypes::DataType::Utf8)
                .expect("cast");
            let strings = column.as_string::<i32>();
            if strings.is_null(0) {
                String::new()
            } else {
                strings.value(0).to_string()
            }
        })
        .collect()
}

async fn run(engine: &QueryEngine, sql: &str) -> (Duration, usize) {
    let started = Instant::now();
    let (_, batches) = engine.sql(sql, Vec::new()).await.expect(sql);
    (
        started.elapsed(),
        batches.iter().map(|b| b.num_rows()).sum(),
    )
}

/// Credentials by how often they were presented, busiest first.
async fn credentials_by_use(engine: &QueryEngine) -> Vec<String> {
    let (_, batches) = engine
        .sql(
            "SELECT dst_id FROM edges WHERE relation = 'presented' \
             GROUP BY dst_id ORDER BY sum(count) DESC, dst_id",
            Vec::new(),
        )
        .await
        .expect("credentials");
    batches
        .iter()
        .flat_map(|b| {
            let column =
                arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).expect("cast");
            let strings = column.as_string::<i32>();
            (0..strings.len())
                .filter(|&i| !strings.is_null(i))
                .map(|i| strings.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn report(
    engine: &QueryEngine,
    scope: &Scope,
    findings: bool,
) -> Result<(Duration, usize, String), String> {
    let started = Instant::now();
    let options = ReportOptions {
        findings,
        ..ReportOptions::default()
    };
    let report = idtrail_report::build(engine, scope, &options)
        .await
        .map_err(|e| {
            format!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            )
        })?;
    let rows = report.sections.iter().map(|s| s.table.rows.len()).sum();
    let sections = report
        .sections
        .iter()
        .map(|s| format!("{} {}", s.id, s.elapsed_ms))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((started.elapsed(), rows, sections))
}

async fn findings(engine: &QueryEngine) -> Result<(Duration, usize), String> {
    let started = Instant::now();
    let (_, batches) = engine
        .sql("SELECT * FROM findings", Vec::new())
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        started.elapsed(),
        batches.iter().map(|b| b.num_rows()).sum(),
    ))
}

fn median(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let usage = "usage: bench_store DATA_DIR [--queries-only | --reports-only]";
    let data_dir: PathBuf = std::env::args().nth(1).expect(usage).into();
    let (queries_only, reports_only) = match std::env::args().nth(2).as_deref() {
        None => (false, false),
        Some("--queries-only") => (true, false),
        Some("--reports-only") => (false, true),
        Some(_) => panic!("{usage}"),
    };
    let setup = QueryEngine::new(options(&data_dir)).await.expect("engine");

    let totals = first_value(
        &setup,
        "SELECT (SELECT count(*) FROM spans) AS spans, (SELECT count(*) FROM chains) AS chains, \
         (SELECT count(*) FROM edges) AS edges",
    )
    .await;
    println!(
        "data: {} spans, {} chain rows, {} edge rows",
        totals[0], totals[1], totals[2]
    );

    // Inputs: the busiest credential and a typical one (the median by how often credentials
    // were presented), one write's chain, the user who reaches most.
    let ranked = credentials_by_use(&setup).await;
    let (credential, typical) = (ranked[0].clone(), ranked[ranked.len() / 2].clone());
    let chain = first_value(
        &setup,
        "SELECT trace_id, effect_span_id FROM chains WHERE effect_is_write ORDER BY time DESC LIMIT 1",
    )
    .await;
    let user = first_value(
        &setup,
        "SELECT src_id FROM edges WHERE relation = 'initiated' GROUP BY src_id ORDER BY count(*) DESC LIMIT 1",
    )
    .await[0]
        .clone();
    drop(setup);

    let queries = [
        (
            "everything one credential touched (spans), the busiest credential",
            format!(
                "SELECT start_time, service_name, name, api_method, api_route, effect_kind, effect_target \
                 FROM spans WHERE credential_fp = '{credential}'"
            ),
            50.0,
        ),
        (
            "everything one credential touched (spans), a typical credential",
            format!(
                "SELECT start_time, service_name, name, api_method, api_route, effect_kind, effect_target \
                 FROM spans WHERE credential_fp = '{typical}'"
            ),
            50.0,
        ),
        (
            "chain of one side effect (chains_latest)",
            format!(
                "SELECT * FROM chains_latest WHERE trace_id = '{}' AND effect_span_id = '{}'",
                chain[0], chain[1]
            ),
            50.0,
        ),
        (
            "chain of one side effect (chain_of)",
            format!("SELECT * FROM chain_of('{}', '{}')", chain[0], chain[1]),
            50.0,
        ),
        (
            "blast radius, depth 6, of the busiest user",
            format!("SELECT * FROM blast_radius('user', '{user}', 6)"),
            200.0,
        ),
    ];
    println!("| query | rows | cold ms | warm ms (median of 5) | target ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, sql, target) in queries.into_iter().filter(|_| !reports_only) {
        let engine = QueryEngine::new(options(&data_dir)).await.expect("engine");
        let (cold, rows) = run(&engine, &sql).await;
        let mut warm = Vec::new();
        for _ in 0..5 {
            warm.push(run(&engine, &sql).await.0);
        }
        println!(
            "| {name} | {rows} | {:.1} | {:.1} | < {target} |",
            cold.as_secs_f64() * 1e3,
            median(warm)
        );
    }
    println!();
    if queries_only {
        return;
    }

    println!("| question | rows | cold ms | warm ms (median of 5) | target ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, credential, findings) in [
        ("a typical credential, without findings", &typical, false),
        (
            "the busiest credential, without findings",
            &credential,
            false,
        ),
        ("a typical credential, with findings", &typical, true),
        ("the busiest credential, with findings", &credential, true),
    ] {
        let scope = Scope::new(Subject::Credential(credential.clone()), None, None).expect("scope");
        let engine = QueryEngine::new(options(&data_dir)).await.expect("engine");
        match report(&engine, &scope, findings).await {
            Ok((cold, rows, cold_sections)) => {
                let mut warm = Vec::new();
                let mut warm_sections = String::new();
                for _ in 0..5 {
                    match report(&engine, &scope, findings).await {
                        Ok((time, _, sections)) => {
                            warm.push(time);
                            warm_sections = sections;
                        }
                        Err(e) => {
                            println!("| (a warm repeat failed: {e}) | | | | |");
                            break;
                        }
                    }
                }
                if warm.is_empty() {
                    continue;
                }
                println!(
                    "| incident report, {name} (all sections) | {rows} | {:.1} | {:.1} | < 1000 |",
                    cold.as_secs_f64() * 1e3,
                    median(warm)
                );
                println!(
                    "|   ms by section, cold: {cold_sections}; last warm: {warm_sections} | | | | |"
                );
            }
            Err(e) => {
                println!("| incident report, {name} (all sections) | failed: {e} | | | < 1000 |")
            }
        }
    }
    let engine = QueryEngine::new(options(&data_dir)).await.expect("engine");
    match findings(&engine).await {
        Ok((cold, rows)) => {
            let mut warm = Vec::new();
            for _ in 0..3 {
                if let Ok((time, _)) = findings(&engine).await {
                    warm.push(time);
                }
            }
            println!(
                "| every finding (`SELECT * FROM findings`, 10 rules) | {rows} | {:.1} | {} | — |",
                cold.as_secs_f64() * 1e3,
                if warm.is_empty() {
                    "failed".to_string()
                } else {
                    format!("{:.1}", median(warm))
                }
            );
        }
        Err(e) => {
            println!("| every finding (`SELECT * FROM findings`, 10 rules) | failed: {e} | | | — |")
        }
    }
}
