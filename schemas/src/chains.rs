//! The `chains` table: one row per side-effect span per revision, written by the stitcher.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Fields, SchemaRef};

use crate::{list, ts, utf8, versioned};

/// Table name, also the top-level directory of its files.
pub const TABLE: &str = "chains";

/// Element type of `api_hops`.
pub fn api_hop_fields() -> Fields {
    vec![
        utf8("span_id", false),
        utf8("service", true),
        utf8("method", true),
        utf8("route", true),
        utf8("credential_fp", true),
    ]
    .into()
}

/// Element type of `path`: one node of user → agents → credential → API hops → effect.
pub fn path_fields() -> Fields {
    vec![
        utf8("kind", false),
        utf8("id", false),
        utf8("span_id", true),
    ]
    .into()
}

fn struct_list(name: &str, fields: Fields) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", DataType::Struct(fields), true))),
        true,
    )
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(versioned(vec![
        utf8("trace_id", false),
        utf8("effect_span_id", false),
        Field::new("revision", DataType::UInt32, false),
        ts("time", false),
        utf8("effect_kind", false),
        utf8("effect_operation", true),
        utf8("effect_target", true),
        Field::new("effect_is_write", DataType::Boolean, false),
        utf8("effect_service", true),
        utf8("user_id", true),
        utf8("session_id", true),
        list("agents"),
        utf8("tool_name", true),
        utf8("tool_call_id", true),
        utf8("credential_fp", true),
        utf8("credential_kind", true),
        list("upstream_credentials"),
        list("token_scopes"),
        list("token_actors"),
        struct_list("api_hops", api_hop_fields()),
        struct_list("path", path_fields()),
        utf8("consumer_class", false),
        Field::new("attributed", DataType::Boolean, false),
        list("missing"),
        list("linked_trace_ids"),
    ]))
});

/// Arrow schema of the `chains` table (schema version [`crate::SCHEMA_VERSION`]).
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}
