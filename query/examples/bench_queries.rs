//! Query latency over a populated data directory: the three questions DESIGN.md sets targets for,
//! each cold (a fresh engine: no footer, statistics or graph cache; the OS page cache is as the
//! machine left it) and warm (median of 5 repeats on the same engine).
//!
//! ```sh
//! cargo run --release -p idtrail-query --example bench_queries -- DATA_DIR
//! ```
//! `scripts/bench-query` fills a data directory with `idtrail gen` first.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use idtrail_query::{QueryEngine, QueryOptions};

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

#[tokio::main]
async fn main() {
    let data_dir: PathBuf = std::env::args()
        .nth(1)
        .expect("usage: bench_queries DATA_DIR")
        .into();
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

    // Inputs: the busiest credential, one write's chain, the user who reaches most.
    let credential = first_value(
        &setup,
        "SELECT dst_id FROM edges WHERE relation = 'presented' GROUP BY dst_id ORDER BY sum(count) DESC LIMIT 1",
    )
    .await[0]
        .clone();
    // And a typical one: the median of credentials by how often they were presented.
    let (_, batches) = setup
        .sql(
            "SELECT dst_id FROM edges WHERE relation = 'presented' \
             GROUP BY dst_id ORDER BY sum(count) DESC, dst_id",
            Vec::new(),
        )
        .await
        .expect("credentials");
    let ranked: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let column = b.column(0).as_string::<i32>().clone();
            (0..column.len())
                .map(move |i| column.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let typical = ranked[ranked.len() / 2].clone();
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
    for (name, sql, target) in queries {
        let engine = QueryEngine::new(options(&data_dir)).await.expect("engine");
        let (cold, rows) = run(&engine, &sql).await;
        let mut warm = Vec::new();
        for _ in 0..5 {
            warm.push(run(&engine, &sql).await.0);
        }
        warm.sort();
        println!(
            "| {name} | {rows} | {:.1} | {:.1} | < {target} |",
            cold.as_secs_f64() * 1e3,
            warm[2].as_secs_f64() * 1e3
        );
    }
}
