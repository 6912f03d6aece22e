//! The `edges` table: the observed lineage graph, aggregated per flush by the stitcher.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, SchemaRef};

use crate::{ts, utf8, versioned};

/// Table name, also the top-level directory of its files.
pub const TABLE: &str = "edges";

/// The node kinds of `src_kind` and `dst_kind`.
pub const NODE_KINDS: [&str; 6] = [
    "user",
    "agent",
    "workload",
    "credential",
    "operation",
    "resource",
];

/// The values of `relation`.
pub const RELATIONS: [&str; 7] = [
    "initiated",
    "acts_for",
    "presented",
    "derived_from",
    "invoked",
    "called",
    "affected",
];

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(versioned(vec![
        utf8("src_kind", false),
        utf8("src_id", false),
        utf8("relation", false),
        utf8("dst_kind", false),
        utf8("dst_id", false),
        ts("first_seen", false),
        ts("last_seen", false),
        Field::new("count", DataType::UInt64, false),
        utf8("sample_trace_id", false),
    ]))
});

/// Arrow schema of the `edges` table (schema version [`crate::SCHEMA_VERSION`]).
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}
