//! Chain and edge rows as Arrow record batches in the `chains` and `edges` schemas.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, ListBuilder, RecordBatch, StringBuilder, StructBuilder,
    TimestampNanosecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow::error::ArrowError;
use idtrail_schemas::{chains, edges};

use super::chain::ChainRow;
use super::edges::EdgeRow;

fn string_list<'a>(
    builder: &mut ListBuilder<StringBuilder>,
    values: impl IntoIterator<Item = &'a String>,
) {
    for v in values {
        builder.values().append_value(v);
    }
    builder.append(true);
}

fn struct_list(fields: arrow::datatypes::Fields) -> ListBuilder<StructBuilder> {
    ListBuilder::new(StructBuilder::from_fields(fields, 0))
}

fn struct_string(builder: &mut StructBuilder, field: usize, value: Option<&str>) {
    if let Some(b) = builder.field_builder::<StringBuilder>(field) {
        b.append_option(value);
    }
}

pub fn chains_batch(rows: &[ChainRow]) -> Result<RecordBatch, ArrowError> {
    let n = rows.len();
    let mut trace_id = StringBuilder::with_capacity(n, n * 32);
    let mut effect_span_id = StringBuilder::with_capacity(n, n * 16);
    let mut revision = UInt32Builder::with_capacity(n);
    let mut time = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut effect_kind = StringBuilder::new();
    let mut effect_operation = StringBuilder::new();
    let mut effect_target = StringBuilder::new();
    let mut effect_is_write = BooleanBuilder::with_capacity(n);
    let mut effect_service = StringBuilder::new();
    let mut user_id = StringBuilder::new();
    let mut session_id = StringBuilder::new();
    let mut agents = ListBuilder::new(StringBuilder::new());
    let mut tool_name = StringBuilder::new();
    let mut tool_call_id = StringBuilder::new();
    let mut credential_fp = StringBuilder::new();
    let mut credential_kind = StringBuilder::new();
    let mut upstream_credentials = ListBuilder::new(StringBuilder::new());
    let mut token_scopes = ListBuilder::new(StringBuilder::new());
    let mut token_actors = ListBuilder::new(StringBuilder::new());
    let mut api_hops = struct_list(chains::api_hop_fields());
    let mut path = struct_list(chains::path_fields());
    let mut consumer_class = StringBuilder::new();
    let mut attributed = BooleanBuilder::with_capacity(n);
    let mut missing = ListBuilder::new(StringBuilder::new());
    let mut linked = ListBuilder::new(StringBuilder::new());

    for row in rows {
        trace_id.append_value(&row.trace_id);
        effect_span_id.append_value(&row.effect_span_id);
        revision.append_value(row.revision);
        time.append_value(row.time);
        effect_kind.append_value(row.effect_kind);
        effect_operation.append_option(row.effect_operation.as_deref());
        effect_target.append_option(row.effect_target.as_deref());
        effect_is_write.append_value(row.effect_is_write);
        effect_service.append_option(row.effect_service.as_deref());
        user_id.append_option(row.user_id.as_deref());
        session_id.append_option(row.session_id.as_deref());
        string_list(&mut agents, &row.agents);
        tool_name.append_option(row.tool_name.as_deref());
        tool_call_id.append_option(row.tool_call_id.as_deref());
        credential_fp.append_option(row.credential_fp.as_deref());
        credential_kind.append_option(row.credential_kind);
        string_list(&mut upstream_credentials, &row.upstream_credentials);
        string_list(&mut token_scopes, &row.token_scopes);
        string_list(&mut token_actors, &row.token_actors);
        for hop in &row.api_hops {
            let s = api_hops.values();
            struct_string(s, 0, Some(&hop.span_id));
            struct_string(s, 1, hop.service.as_deref());
            struct_string(s, 2, hop.method.as_deref());
            struct_string(s, 3, hop.route.as_deref());
            struct_string(s, 4, hop.credential_fp.as_deref());
            s.append(true);
        }
        api_hops.append(true);
        for node in &row.path {
            let s = path.values();
            struct_string(s, 0, Some(node.kind));
            struct_string(s, 1, Some(&node.id));
            struct_string(s, 2, node.span_id.as_deref());
            s.append(true);
        }
        path.append(true);
        consumer_class.append_value(row.consumer_class);
        attributed.append_value(row.attributed);
        string_list(&mut missing, &row.missing);
        string_list(&mut linked, &row.linked_trace_ids);
    }

    let columns: Vec<ArrayRef> = vec![
        Arc::new(trace_id.finish()),
        Arc::new(effect_span_id.finish()),
        Arc::new(revision.finish()),
        Arc::new(time.finish()),
        Arc::new(effect_kind.finish()),
        Arc::new(effect_operation.finish()),
        Arc::new(effect_target.finish()),
        Arc::new(effect_is_write.finish()),
        Arc::new(effect_service.finish()),
        Arc::new(user_id.finish()),
        Arc::new(session_id.finish()),
        Arc::new(agents.finish()),
        Arc::new(tool_name.finish()),
        Arc::new(tool_call_id.finish()),
        Arc::new(credential_fp.finish()),
        Arc::new(credential_kind.finish()),
        Arc::new(upstream_credentials.finish()),
        Arc::new(token_scopes.finish()),
        Arc::new(token_actors.finish()),
        Arc::new(api_hops.finish()),
        Arc::new(path.finish()),
        Arc::new(consumer_class.finish()),
        Arc::new(attributed.finish()),
        Arc::new(missing.finish()),
        Arc::new(linked.finish()),
    ];
    RecordBatch::try_new(chains::schema(), columns)
}

pub fn edges_batch(rows: &[EdgeRow]) -> Result<RecordBatch, ArrowError> {
    let n = rows.len();
    let mut src_kind = StringBuilder::new();
    let mut src_id = StringBuilder::new();
    let mut relation = StringBuilder::new();
    let mut dst_kind = StringBuilder::new();
    let mut dst_id = StringBuilder::new();
    let mut first_seen = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut last_seen = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut count = UInt64Builder::with_capacity(n);
    let mut sample = StringBuilder::new();
    for row in rows {
        src_kind.append_value(row.key.src_kind);
        src_id.append_value(&row.key.src_id);
        relation.append_value(row.key.relation);
        dst_kind.append_value(row.key.dst_kind);
        dst_id.append_value(&row.key.dst_id);
        first_seen.append_value(row.first_seen);
        last_seen.append_value(row.last_seen);
        count.append_value(row.count);
        sample.append_value(&row.sample_trace_id);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(src_kind.finish()),
        Arc::new(src_id.finish()),
        Arc::new(relation.finish()),
        Arc::new(dst_kind.finish()),
        Arc::new(dst_id.finish()),
        Arc::new(first_seen.finish()),
        Arc::new(last_seen.finish()),
        Arc::new(count.finish()),
        Arc::new(sample.finish()),
    ];
    RecordBatch::try_new(edges::schema(), columns)
}
