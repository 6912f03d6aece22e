//! `GET /v1/report` on the collector's HTTP port: the document `idtrail report` writes, built
//! by the running server's engine.
//!
//! Query parameters are `idtrail report`'s flags ([`ReportRequest`]):
//! `/v1/report?credential=3f9a…&format=markdown`, `?user=alice@example.com&from=…`. The answer
//! is the document itself (`text/html`, `text/markdown` or `application/json`); errors are JSON
//! `{"error": "..."}` with the status of [`ReportError::http_status`], and the same bearer keys
//! and client certificates as `POST /v1/query` guard it.
//!
//! Why a server route beside the CLI: a report walks the lineage graph, which a fresh process
//! reads whole from the edges files (seconds at millions of edges), as it does every file
//! footer. The server's engine keeps both and follows new files, so a report costs only its
//! own queries (BENCHMARKS.md, reports).

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use idtrail_query::QueryEngine;
use idtrail_query::auth::{BearerKeys, authenticate_http};
use idtrail_query::error::error_chain;
use idtrail_query::http::json_error;

use crate::error::{ReportError, Result};
use crate::request::ReportRequest;

#[derive(Clone)]
struct ReportState {
    engine: QueryEngine,
    auth: Option<Arc<BearerKeys>>,
}

/// The `/v1/report` route, to merge into the collector's router.
pub fn router(engine: QueryEngine, auth: Option<Arc<BearerKeys>>) -> Router {
    Router::new()
        .route("/v1/report", get(report))
        .with_state(ReportState { engine, auth })
}

async fn report(
    State(state): State<ReportState>,
    extensions: Extensions,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(e) = authenticate_http(state.auth.as_deref(), &headers, &extensions) {
        return json_error(e.http_status(), &e.to_string());
    }
    match answer(&state.engine, query.as_deref().unwrap_or("")).await {
        Ok(response) => response,
        Err(e) => {
            let message = error_chain(&e);
            if e.http_status().is_server_error() {
                tracing::warn!(error = %message, "report failed");
            }
            json_error(e.http_status(), &message)
        }
    }
}

async fn answer(engine: &QueryEngine, query: &str) -> Result<Response> {
    let request: ReportRequest = serde_urlencoded::from_str(query)
        .map_err(|e| ReportError::Invalid(format!("report parameters: {e}")))?;
    let scope = request.scope()?;
    let report = crate::build(engine, &scope, &request.options()).await?;
    let document = crate::render::document(&report, request.format)?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, request.format.content_type())],
        document,
    )
        .into_response())
}
