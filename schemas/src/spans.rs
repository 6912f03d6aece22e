//! The `spans` table: one row per accepted span, scrubbed and enriched with identity columns.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Fields, SchemaRef};

use crate::{list, string_map_type, ts, utf8, versioned};

/// Table name, also the top-level directory of its files.
pub const TABLE: &str = "spans";

/// Columns in schema order. Kept as constants so the writer and tests name them one way.
pub mod col {
    pub const TRACE_ID: &str = "trace_id";
    pub const SPAN_ID: &str = "span_id";
    pub const START_TIME: &str = "start_time";
    pub const CREDENTIAL_FP: &str = "credential_fp";
}

/// Element type of the `links` column.
pub fn link_fields() -> Fields {
    vec![
        Field::new("trace_id", DataType::Utf8, false),
        Field::new("span_id", DataType::Utf8, false),
    ]
    .into()
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(versioned(vec![
        utf8("trace_id", false),
        utf8("span_id", false),
        utf8("parent_span_id", true),
        ts("start_time", false),
        ts("end_time", false),
        Field::new("duration_ns", DataType::Int64, false),
        utf8("service_name", true),
        utf8("service_namespace", true),
        utf8("service_instance_id", true),
        utf8("k8s_cluster", true),
        utf8("k8s_namespace", true),
        utf8("k8s_pod", true),
        utf8("name", false),
        utf8("kind", false),
        utf8("status_code", false),
        utf8("status_message", true),
        // identity
        utf8("user_id", true),
        list("user_roles"),
        utf8("session_id", true),
        utf8("agent_id", true),
        utf8("agent_name", true),
        utf8("genai_operation", true),
        utf8("tool_name", true),
        utf8("tool_call_id", true),
        utf8("workload_id", true),
        utf8("client_address", true),
        // credential
        utf8("credential_fp", true),
        utf8("credential_kind", true),
        utf8("credential_attr", true),
        utf8("token_iss", true),
        utf8("token_sub", true),
        utf8("token_client_id", true),
        utf8("token_jti", true),
        list("token_scopes"),
        ts("token_issued_at", true),
        ts("token_expires_at", true),
        list("token_actors"),
        Field::new("token_verified", DataType::Boolean, true),
        list("token_audience"),
        list("token_may_act"),
        // API call
        utf8("api_protocol", true),
        utf8("api_method", true),
        utf8("api_route", true),
        utf8("api_target", true),
        Field::new("http_status", DataType::Int32, true),
        // side effect
        utf8("effect_kind", true),
        utf8("effect_operation", true),
        utf8("effect_target", true),
        Field::new("effect_is_write", DataType::Boolean, true),
        // everything else
        Field::new(
            "links",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(link_fields()),
                true,
            ))),
            true,
        ),
        Field::new("attributes", string_map_type(), true),
        Field::new("resource_attributes", string_map_type(), true),
        utf8("ingest_principal", true),
        ts("ingested_at", false),
    ]))
});

/// Arrow schema of the `spans` table (schema version [`crate::SCHEMA_VERSION`]).
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}
