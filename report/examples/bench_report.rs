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

async fn busiest_credential(engine: &QueryEngine) -> String {
    let (_, batches) = engine
        .sql(
            "SELECT dst_id FROM edges WHERE relation = 'presented' \
             GROUP BY dst_id ORDER BY sum(count) DESC LIMIT 1",
            Vec::new(),
        )
        .await
        .expect("busiest credential");
    let batch = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .expect("a credential");
    let column =
        arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).expect("cast");
    let strings = column.as_string::<i32>();
    assert!(!strings.is_null(0));
    strings.value(0).to_string()
}

async fn report(engine: &QueryEngine, scope: &Scope) -> (Duration, usize) {
    let started = Instant::now();
    let report = idtrail_report::build(engine, scope, &ReportOptions::default())
        .await
        .expect("report");
    let rows = report.sections.iter().map(|s| s.table.rows.len()).sum();
    (started.elapsed(), rows)
}

async fn findings(engine: &QueryEngine) -> (Duration, usize) {
    let started = Instant::now();
    let (_, batches) = engine
        .sql("SELECT * FROM findings", Vec::new())
        .await
        .expect("findings");
    (
        started.elapsed(),
        batches.iter().map(|b| b.num_rows()).sum(),
    )
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
    let credential = busiest_credential(&setup).await;
    drop(setup);
    let scope = Scope::new(Subject::Credential(credential), None, None).expect("scope");

    println!("| question | rows | cold ms | warm ms (median of 5) | target ms |");
    println!("|---|---:|---:|---:|---:|");
    let engine = QueryEngine::new(options(&data_dir)).await.expect("engine");
    let (cold, rows) = report(&engine, &scope).await;
    let mut warm = Vec::new();
    for _ in 0..5 {
        warm.push(report(&engine, &scope).await.0);
    }
    println!(
        "| incident report, busiest credential (all sections) | {rows} | {:.1} | {:.1} | < 1000 |",
        cold.as_secs_f64() * 1e3,
        median(warm)
    );
    let engine = QueryEngine::new(options(&data_dir)).await.expect("engine");
    let (cold, rows) = findings(&engine).await;
    let mut warm = Vec::new();
    for _ in 0..5 {
        warm.push(findings(&engine).await.0);
    }
    println!(
        "| every finding (`SELECT * FROM findings`, 10 rules) | {rows} | {:.1} | {:.1} | — |",
        cold.as_secs_f64() * 1e3,
        median(warm)
    );
}
