//! The query layer's one error type, and the one place its errors become gRPC and HTTP statuses.
//!
//! Messages name the statement kind or the limit that was hit, never the SQL text: a user may
//! paste a token into a query, and error messages end up in client logs and ours.

use std::time::Duration;

use axum::http::StatusCode;
use datafusion::error::DataFusionError;

pub type Result<T, E = QueryError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A statement that would change something: idtrail's SQL is read-only.
    #[error(
        "refused: idtrail's SQL is read-only, so {0} is not allowed (use SELECT, WITH, EXPLAIN, SHOW or DESCRIBE)"
    )]
    ReadOnly(String),
    /// The SQL does not parse, names something unknown, or does not type-check.
    #[error("{0}")]
    Plan(String),
    /// The query ran past `query.timeout`.
    #[error("query cancelled: it ran longer than the {}s timeout (query.timeout)", .0.as_secs_f64())]
    Timeout(Duration),
    /// The query needed more memory than `query.memory_limit_bytes`.
    #[error(
        "query cancelled: it needed more than the {limit} bytes one query may use (query.memory_limit_bytes): {detail}"
    )]
    MemoryLimit { limit: usize, detail: String },
    /// Missing or wrong bearer key, or no client certificate on an mTLS listener. Says what
    /// was missing, never what was sent.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A malformed request (bad JSON, unknown format, wrong parameter count…).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Reading the tables or the owner/grant files failed.
    #[error("{context}: {detail}")]
    Storage { context: String, detail: String },
    /// Anything else DataFusion reports while executing.
    #[error("query failed: {0}")]
    Execution(String),
}

impl QueryError {
    pub fn storage(context: impl Into<String>, detail: impl ToString) -> QueryError {
        QueryError::Storage {
            context: context.into(),
            detail: detail.to_string(),
        }
    }

    /// Classifies a DataFusion error: memory exhaustion is named as such, planning errors are
    /// the user's to fix, everything else is an execution failure.
    pub fn from_datafusion(e: DataFusionError, memory_limit: usize) -> QueryError {
        let root = e.find_root();
        match root {
            DataFusionError::ResourcesExhausted(detail) => QueryError::MemoryLimit {
                limit: memory_limit,
                detail: detail.lines().next().unwrap_or_default().to_string(),
            },
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => {
                QueryError::Plan(root.to_string().trim().to_string())
            }
            _ => QueryError::Execution(root.to_string().trim().to_string()),
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            QueryError::ReadOnly(_) => StatusCode::FORBIDDEN,
            QueryError::Plan(_) | QueryError::BadRequest(_) => StatusCode::BAD_REQUEST,
            QueryError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            QueryError::MemoryLimit { .. } => StatusCode::INSUFFICIENT_STORAGE,
            QueryError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            QueryError::Storage { .. } | QueryError::Execution(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    pub fn grpc_status(&self) -> tonic::Status {
        let message = self.to_string();
        match self {
            QueryError::ReadOnly(_) => tonic::Status::permission_denied(message),
            QueryError::Plan(_) | QueryError::BadRequest(_) => {
                tonic::Status::invalid_argument(message)
            }
            QueryError::Timeout(_) => tonic::Status::deadline_exceeded(message),
            QueryError::MemoryLimit { .. } => tonic::Status::resource_exhausted(message),
            QueryError::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            QueryError::Storage { .. } | QueryError::Execution(_) => {
                tonic::Status::internal(message)
            }
        }
    }
}

/// An error and its sources, "a: b: c", each cause once (reqwest and tonic keep the cause out
/// of their message; others repeat it). For messages that leave the process: HTTP answers,
/// the CLI's errors, log lines.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = inner.source();
    }
    message
}

impl From<QueryError> for tonic::Status {
    fn from(e: QueryError) -> tonic::Status {
        e.grpc_status()
    }
}
