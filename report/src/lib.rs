//! Incident reports: everything idtrail knows about one credential, user, agent, trace,
//! resource or time window, in one self-contained HTML file (or Markdown, or JSON).
//!
//! A report is a list of sections, each one SQL query over the query layer's tables and views
//! (printed beside its answer, so the investigator can run it again with `idtrail query`):
//! a summary, the timeline of side effects, every chain drawn as a graph ([`graph`]), the blast
//! radius observed versus potential, the credentials to revoke, the actions nobody can be
//! attributed to, and the findings of the detection rules that touch the scope.
//!
//! - [`scope`]: what the report covers, and the `scoped` CTE every section starts from.
//! - [`sections`]: the queries, and the [`Report`] they make.
//! - [`render`]: HTML and Markdown (JSON is the [`Report`] serialised).
//! - [`request`]: what a caller asks for, as `idtrail report`'s flags and `GET /v1/report`'s
//!   query parameters alike; [`http`] serves that route from a running server.

pub mod error;
pub mod graph;
pub mod http;
pub mod render;
pub mod request;
pub mod scope;
pub mod sections;
pub mod table;

pub use error::{ReportError, Result};
pub use request::{Format, ReportRequest};
pub use scope::{Scope, Subject};
pub use sections::{Report, ReportOptions, build};
