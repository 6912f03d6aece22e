//! Exports of the lineage graph into other tools' formats, read through the same
//! [`QueryEngine`](crate::QueryEngine) as every query (so the same tables, limits and timeout).
//!
//! - [`bloodhound`]: BloodHound OpenGraph JSON (`idtrail export bloodhound`).

pub mod bloodhound;

/// Which edges an export covers: those seen at some point in `[since, until)` (ns since the
/// epoch). An edge row is kept when its `last_seen` is at or after `since` and its
/// `first_seen` is before `until`, so an edge active across a boundary is kept whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeWindow {
    pub since: Option<i64>,
    pub until: Option<i64>,
}
