//! The idtrail collector: OTLP receivers, credential scrubbing, identity extraction, the
//! write-ahead log and the Parquet writer.
//!
//! Data takes one path: a receiver decodes a request, [`extract::Extractor`] turns it into a
//! scrubbed [`record::SpanBatch`], [`wal::Wal`] makes it durable (then the request is
//! acknowledged), [`stitch`] builds chains and edges from each quiet trace, and [`writer`]
//! publishes spans, chains and edges as Parquet and checkpoints the WAL.

pub mod auth;
pub mod compact;
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

/// jemalloc, installed here rather than by each binary because admission control reads its
/// statistics (`receiver/admission.rs`), so every program running a collector — the CLI and
/// the in-process test servers alike — must allocate through it. It replaced glibc's
/// allocator, whose only count of bytes in use (`mallinfo2`) walks every free chunk under the
/// arena locks: on the fragmented heap of a full-load run that took seconds per sample and
/// stalled every allocating thread (BENCHMARKS.md, stop 15).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Arms the failpoints named in `FAILPOINTS` (`name=action;…`, see the `fail` crate), in builds
/// with the `failpoints` feature; does nothing otherwise. Called once at start-up.
pub fn arm_failpoints_from_env() {
    // The scenario disarms everything when dropped; failpoints stay armed for the process.
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}
pub use error::{Error, Result};
