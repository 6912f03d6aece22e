//! Incident report latency over a populated data directory (DESIGN.md: < 1 s for one
//! credential), cold (a fresh engine) and warm (median of 5 on the same engine), section by
//! section, and the `findings` view on its own.
//!
//! ```sh
//! cargo run --release -p idtrail-report --example bench_report -- DATA_DIR
//! ```
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
) -> Result<(Duration, usize), String> {
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
    Ok((started.elapsed(), rows))
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
    let data_dir: PathBuf = std::env::args()
        .nth(1)
        .expect("usage: bench_report DATA_DIR")
        .into();
    let setup = QueryEngine::new(options(&data_dir)).await.expect("engine");
    let ranked = credentials_by_use(&setup).await;
    drop(setup);

    println!("| question | rows | cold ms | warm ms (median of 5) | target ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, credential, findings) in [
        (
            "a typical credential, without findings",
            &ranked[ranked.len() / 2],
            false,
        ),
        (
            "the busiest credential, without findings",
            &ranked[0],
            false,
        ),
        (
            "a typical credential, with findings",
            &ranked[ranked.len() / 2],
            true,
        ),
    ] {
        let scope = Scope::new(Subject::Credential(credential.clone()), None, None).expect("scope");
        let engine = QueryEngine::new(options(&data_dir)).await.expect("engine");
        match report(&engine, &scope, findings).await {
            Ok((cold, rows)) => {
                let mut warm = Vec::new();
                for _ in 0..5 {
                    match report(&engine, &scope, findings).await {
                        Ok((time, _)) => warm.push(time),
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
