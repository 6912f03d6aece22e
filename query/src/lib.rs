//! The query layer over idtrail's Parquet tables: SQL (DataFusion) over `spans`, `chains`,
//! `edges`, the declared `owners` and `grants`, lineage views and table functions, served over
//! Arrow Flight SQL and `POST /v1/query`, and used directly by `idtrail query`.
//!
//! - [`engine`]: planning, read-only enforcement, bind parameters, memory limit and timeout.
//! - [`catalog`]: the tables over the data directory.
//! - [`declared`]: `owners` and `grants` from YAML/CSV files.
//! - [`views`]: `chains_latest`, `chains_attributed`, `lineage_coverage`, `privilege_duration`,
//!   `credential_usage`.
//! - [`findings`]: detection rules (one SQL file each) and the `findings` view.
//! - [`lineage`]: `blast_radius`, `upstream` and `chain_of`.
//! - [`flight_sql`] and [`http`]: the network front ends; [`auth`]: their bearer keys.

pub mod auth;
pub mod catalog;
pub mod declared;
pub mod engine;
pub mod error;
pub mod export;
pub mod findings;
pub mod flight_sql;
pub mod http;
pub mod lineage;
mod overlay;
pub mod partitions;
pub mod sql;
pub mod store;
pub mod views;

pub use engine::{QueryEngine, QueryOptions};
pub use error::QueryError;
