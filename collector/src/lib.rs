//! The idtrail collector: OTLP receivers, credential scrubbing, identity extraction, the
//! write-ahead log and the Parquet writer.
//!
//! Data takes one path: a receiver decodes a request, [`extract::Extractor`] turns it into a
//! scrubbed [`record::SpanBatch`], [`wal::Wal`] makes it durable (then the request is
//! acknowledged), [`stitch`] builds chains and edges from each quiet trace, and [`writer`]
//! publishes spans, chains and edges as Parquet and checkpoints the WAL.

pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod listener;
pub mod receiver;
pub mod record;
pub mod server;
pub mod stitch;
pub mod telemetry;
pub mod wal;
pub mod writer;

pub use config::Config;

/// Arms the failpoints named in `FAILPOINTS` (`name=action;…`, see the `fail` crate), in builds
/// with the `failpoints` feature; does nothing otherwise. Called once at start-up.
pub fn arm_failpoints_from_env() {
    // The scenario disarms everything when dropped; failpoints stay armed for the process.
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}
pub use error::{Error, Result};
