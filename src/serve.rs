//! `idtrail serve`: the collector, with the query front ends beside it — `POST /v1/query` and
//! `GET /v1/report` on the HTTP port and Arrow Flight SQL on `query.flight_sql_address`.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use idtrail_collector::Config;
pub use idtrail_collector::server::BoundAddresses;
use idtrail_query::auth::BearerKeys;
use idtrail_query::{QueryEngine, QueryOptions};
use tokio::sync::watch;

/// Runs collector and query servers until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(config, shutdown, |_| {}).await
}

/// [`run`], telling `on_bound` the OTLP addresses once they listen (port 0 picks free ports).
pub async fn run_with(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(BoundAddresses) + Send,
) -> anyhow::Result<()> {
    let engine = QueryEngine::new(QueryOptions::from_config(
        config.data_dir.clone(),
        &config.query,
    ))
    .await
    .context("starting the query engine")?;
    let auth = match &config.query.auth_keys_file {
        Some(path) => Some(Arc::new(BearerKeys::load(path)?)),
        None => None,
    };
    let routes =
        idtrail_query::http::router(engine.clone(), auth.clone(), config.query.max_json_rows)
            .merge(idtrail_report::http::router(engine.clone(), auth.clone()));

    let (stop_tx, stop_rx) = watch::channel(false);
    let flight = match config.query.flight_sql_address {
        Some(address) => {
            let listener =
                idtrail_collector::listener::bind(address, config.query.tls.as_ref(), b"h2")
                    .await
                    .with_context(|| format!("starting Flight SQL on {address}"))?;
            tracing::info!(flight_sql = %address, "Flight SQL listening");
            let mut stopped = stop_rx.clone();
            let server = idtrail_query::flight_sql::serve(
                listener,
                engine.clone(),
                auth.clone(),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            );
            Some(tokio::spawn(server))
        }
        None => None,
    };

    let collected = idtrail_collector::server::serve(config, routes, shutdown, on_bound).await;
    let _ = stop_tx.send(true);
    if let Some(flight) = flight {
        match flight.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "Flight SQL server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "Flight SQL server panicked"),
            Ok(Ok(())) => {}
        }
    }
    Ok(collected?)
}
