//! The report crate's one error type, and the HTTP status each error answers with.

use axum::http::StatusCode;
use idtrail_query::QueryError;

pub type Result<T, E = ReportError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The request makes no sense (no scope, an empty window…).
    #[error("{0}")]
    Invalid(String),
    /// A section's query failed; `section` names it.
    #[error("report section {section}")]
    Query {
        section: &'static str,
        #[source]
        source: QueryError,
    },
    /// The report could not be written as JSON.
    #[error("serialising the report")]
    Serialise(#[from] serde_json::Error),
}

impl ReportError {
    /// The status `GET /v1/report` answers with: a bad request is the caller's to fix; a
    /// failed section keeps its query's status (memory limit, timeout, storage).
    pub fn http_status(&self) -> StatusCode {
        match self {
            ReportError::Invalid(_) => StatusCode::BAD_REQUEST,
            ReportError::Query { source, .. } => source.http_status(),
            ReportError::Serialise(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}
