//! The report crate's one error type.

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
}
