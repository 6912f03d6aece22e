//! `POST /v1/query` on the collector's HTTP port.
//!
//! Request: `{"sql": "...", "params": [..]}` as `application/json`, or the bare SQL as
//! `text/plain` / `application/sql`. `params` bind `$1, $2, …` (or `?`) in order; JSON strings,
//! numbers, booleans and null are accepted.
//!
//! Answer, by the `Accept` header: `application/vnd.apache.arrow.stream` gives an Arrow IPC
//! stream; anything else gives JSON `{"columns": [{"name", "type"}], "rows": [{..}], "row_count"}`,
//! capped at `query.max_json_rows` rows (`"truncated": true` says the cap was hit). Errors are
//! JSON `{"error": "..."}` with the status of [`QueryError::http_status`].

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::StreamWriter;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use datafusion::common::ScalarValue;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::BearerKeys;
use crate::engine::QueryEngine;
use crate::error::{QueryError, Result};

pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

#[derive(Clone)]
struct QueryState {
    engine: QueryEngine,
    auth: Option<Arc<BearerKeys>>,
    max_json_rows: usize,
}

/// The `/v1/query` route, to merge into the collector's router.
pub fn router(engine: QueryEngine, auth: Option<Arc<BearerKeys>>, max_json_rows: usize) -> Router {
    Router::new()
        .route("/v1/query", post(query))
        .with_state(QueryState {
            engine,
            auth,
            max_json_rows,
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    sql: String,
    #[serde(default)]
    params: Vec<Value>,
}

async fn query(
    State(state): State<QueryState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match answer(&state, &extensions, &headers, &body).await {
        Ok(response) => response,
        Err(e) => error_response(&e),
    }
}

fn error_response(e: &QueryError) -> Response {
    json_error(e.http_status(), &e.to_string())
}

/// The body of every HTTP query route's errors: `{"error": "..."}`.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "error": message }).to_string(),
    )
        .into_response()
}

async fn answer(
    state: &QueryState,
    extensions: &axum::http::Extensions,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response> {
    crate::auth::authenticate_http(state.auth.as_deref(), headers, extensions)?;
    let request = parse_request(headers, body)?;
    let params = request
        .params
        .iter()
        .map(scalar_of)
        .collect::<Result<Vec<_>>>()?;
    let prepared = state.engine.prepare(&request.sql).await?;
    let stream = state.engine.execute(prepared, params).await?;
    let schema = stream.schema();
    let batches = stream.collect().await?;
    let wants_arrow = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(ARROW_STREAM));
    if wants_arrow {
        let bytes = arrow_ipc(&schema, &batches)?;
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, ARROW_STREAM)],
            bytes,
        )
            .into_response())
    } else {
        let body = json_answer(&schema, &batches, state.max_json_rows)?;
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response())
    }
}

fn parse_request(headers: &HeaderMap, body: &[u8]) -> Result<QueryRequest> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("text/plain") || mime.eq_ignore_ascii_case("application/sql") {
        let sql = std::str::from_utf8(body)
            .map_err(|_| QueryError::BadRequest("the SQL is not UTF-8".into()))?;
        return Ok(QueryRequest {
            sql: sql.to_string(),
            params: Vec::new(),
        });
    }
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(QueryError::BadRequest(format!(
            "unsupported content type {:?}: send application/json, text/plain or application/sql",
            mime.chars().take(64).collect::<String>()
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        QueryError::BadRequest(format!(
            "expected {{\"sql\": \"...\", \"params\": [...]}}: {e}"
        ))
    })
}

/// A JSON parameter as the scalar DataFusion binds.
pub fn scalar_of(value: &Value) -> Result<ScalarValue> {
    Ok(match value {
        Value::Null => ScalarValue::Null,
        Value::Bool(b) => ScalarValue::Boolean(Some(*b)),
        Value::String(s) => ScalarValue::Utf8(Some(s.clone())),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => ScalarValue::Int64(Some(i)),
            (None, Some(f)) => ScalarValue::Float64(Some(f)),
            _ => {
                return Err(QueryError::BadRequest(format!(
                    "parameter {n} is out of range"
                )));
            }
        },
        Value::Array(_) | Value::Object(_) => {
            return Err(QueryError::BadRequest(
                "parameters must be strings, numbers, booleans or null".into(),
            ));
        }
    })
}

/// The batches as one Arrow IPC stream.
pub fn arrow_ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let encode =
        |e: arrow::error::ArrowError| QueryError::Execution(format!("encoding Arrow IPC: {e}"));
    let mut bytes = Vec::new();
    let mut writer = StreamWriter::try_new(&mut bytes, schema).map_err(encode)?;
    for batch in batches {
        writer.write(batch).map_err(encode)?;
    }
    writer.finish().map_err(encode)?;
    drop(writer);
    Ok(bytes)
}

/// The batches as `{"columns", "rows", "row_count", "truncated"}`.
pub fn json_answer(schema: &SchemaRef, batches: &[RecordBatch], max_rows: usize) -> Result<Value> {
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut kept = Vec::new();
    let mut left = max_rows;
    for batch in batches {
        if left == 0 {
            break;
        }
        let take = batch.num_rows().min(left);
        kept.push(batch.slice(0, take));
        left -= take;
    }
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<&RecordBatch> = kept.iter().collect();
    writer
        .write_batches(&refs)
        .map_err(|e| QueryError::Execution(format!("encoding JSON: {e}")))?;
    writer
        .finish()
        .map_err(|e| QueryError::Execution(format!("encoding JSON: {e}")))?;
    let bytes = writer.into_inner();
    let rows: Value = if bytes.is_empty() {
        Value::Array(Vec::new())
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| QueryError::Execution(format!("encoding JSON: {e}")))?
    };
    let columns: Vec<Value> = schema
        .fields()
        .iter()
        .map(|f| json!({ "name": f.name(), "type": f.data_type().to_string() }))
        .collect();
    Ok(json!({
        "columns": columns,
        "rows": rows,
        "row_count": total,
        "truncated": total > max_rows,
    }))
}
