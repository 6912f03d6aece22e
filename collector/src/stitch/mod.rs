//! The stitcher: turns spans into lineage — a chain for every side effect and the observed
//! lineage graph (edges).
//!
//! - `span.rs`: the part of a span the stitcher keeps.
//! - `trace.rs`: one trace indexed for parent walks (hops, operations, presenters).
//! - `chain.rs`: the chain of one side effect (pure; the same spans give the same rows).
//! - `edges.rs`: the relations a trace evidences, aggregated per flush.
//! - `buffer.rs`: the quiet-window trace buffer, revisions for late spans, the memory bound.
//! - `output.rs`: rows → Arrow batches in the `chains` and `edges` schemas.
//! - `from_spans.rs`, `rebuild.rs`: `idtrail restitch`, chains and edges rebuilt from the
//!   `spans` files.
//!
//! In `idtrail serve` the buffer lives on the writer's intake thread, so the spans it sees are
//! exactly the ones the writer keeps (after dedup) plus the replayed ones already published,
//! and one flush publishes spans, chains and edges together before one WAL checkpoint.

pub mod buffer;
pub mod chain;
pub mod edges;
pub mod from_spans;
pub mod output;
pub mod rebuild;
pub mod span;
pub mod trace;

pub use buffer::{EarlyStitch, PublishedCheck, Stitched, TraceBuffer};
pub use chain::ChainRow;
pub use edges::EdgeRow;
