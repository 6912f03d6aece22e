//! Spans → Arrow `RecordBatch`es in the `spans` schema (schemas crate).
//!
//! Each durable batch becomes columns when the writer takes it ([`to_record_batch`]), and its
//! rows are dropped there; a flush only sorts those columns ([`sorted_for_file`]) and encodes
//! them. Buffered as columns, a span takes less memory than as a row of separately allocated
//! strings (peak RSS at full load fell by 150–170 MiB), and the publisher no longer spends a
//! flush chasing those strings (BENCHMARKS.md, stop 21).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Int32Builder, Int64Builder, ListArray, ListBuilder,
    MapArray, MapBuilder, MapFieldNames, StringBuilder, StructBuilder, TimestampNanosecondBuilder,
    UInt32Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::compute::{SortColumn, SortOptions, concat, lexsort_to_indices, take};
use arrow::datatypes::DataType;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use idtrail_schemas::spans;

use crate::record::SpanBatch;

fn hex_into(bytes: &[u8], out: &mut StringBuilder) {
    let mut buf = [0u8; 32];
    let hex = &mut buf[..bytes.len() * 2];
    // The buffer is exactly twice the input, so encoding cannot fail.
    if hex::encode_to_slice(bytes, hex).is_ok() {
        out.append_value(std::str::from_utf8(hex).unwrap_or_default());
    } else {
        out.append_null();
    }
}

fn utc(capacity: usize) -> TimestampNanosecondBuilder {
    TimestampNanosecondBuilder::with_capacity(capacity).with_timezone("UTC")
}

fn strings(capacity: usize) -> StringBuilder {
    StringBuilder::with_capacity(capacity, capacity * 8)
}

// List and map item builders are sized from the batch like every other column, not with
// `StringBuilder::new()`'s 1,024 items: a batch of a few spans would otherwise carry ~5 KiB per
// list and map column while buffered.
fn string_list(capacity: usize) -> ListBuilder<StringBuilder> {
    ListBuilder::with_capacity(strings(capacity), capacity)
}

fn string_map(capacity: usize) -> MapBuilder<StringBuilder, StringBuilder> {
    MapBuilder::with_capacity(
        Some(MapFieldNames {
            entry: "entries".into(),
            key: "key".into(),
            value: "value".into(),
        }),
        strings(capacity),
        strings(capacity),
        capacity,
    )
}

fn append_list(builder: &mut ListBuilder<StringBuilder>, items: &[String]) {
    for item in items {
        builder.values().append_value(item);
    }
    builder.append(true);
}

fn append_map(
    builder: &mut MapBuilder<StringBuilder, StringBuilder>,
    entries: &[(String, String)],
) -> Result<(), ArrowError> {
    for (k, v) in entries {
        builder.keys().append_value(k);
        builder.values().append_value(v);
    }
    builder.append(true)
}

/// The columns of `batch`'s spans, in the batch's order.
pub fn to_record_batch(batch: &SpanBatch) -> Result<RecordBatch, ArrowError> {
    let n = batch.spans.len();
    let mut trace_id = StringBuilder::with_capacity(n, n * 32);
    let mut span_id = StringBuilder::with_capacity(n, n * 16);
    let mut parent_span_id = StringBuilder::with_capacity(n, n * 16);
    let mut start_time = utc(n);
    let mut end_time = utc(n);
    let mut duration = Int64Builder::with_capacity(n);
    let mut service_name = strings(n);
    let mut service_namespace = strings(n);
    let mut service_instance_id = strings(n);
    let mut k8s_cluster = strings(n);
    let mut k8s_namespace = strings(n);
    let mut k8s_pod = strings(n);
    let mut name = strings(n);
    let mut kind = strings(n);
    let mut status_code = strings(n);
    let mut status_message = strings(n);
    let mut user_id = strings(n);
    let mut user_roles = string_list(n);
    let mut session_id = strings(n);
    let mut agent_id = strings(n);
    let mut agent_name = strings(n);
    let mut genai_operation = strings(n);
    let mut tool_name = strings(n);
    let mut tool_call_id = strings(n);
    let mut workload_id = strings(n);
    let mut client_address = strings(n);
    let mut credential_fp = strings(n);
    let mut credential_kind = strings(n);
    let mut credential_attr = strings(n);
    let mut token_iss = strings(n);
    let mut token_sub = strings(n);
    let mut token_client_id = strings(n);
    let mut token_jti = strings(n);
    let mut token_scopes = string_list(n);
    let mut token_issued_at = utc(n);
    let mut token_expires_at = utc(n);
    let mut token_actors = string_list(n);
    let mut token_verified = BooleanBuilder::with_capacity(n);
    let mut token_audience = string_list(n);
    let mut token_may_act = string_list(n);
    let mut api_protocol = strings(n);
    let mut api_method = strings(n);
    let mut api_route = strings(n);
    let mut api_target = strings(n);
    let mut http_status = Int32Builder::with_capacity(n);
    let mut effect_kind = strings(n);
    let mut effect_operation = strings(n);
    let mut effect_target = strings(n);
    let mut effect_is_write = BooleanBuilder::with_capacity(n);
    let mut links =
        ListBuilder::with_capacity(StructBuilder::from_fields(spans::link_fields(), 0), n);
    let mut attributes = string_map(n);
    let mut resource_attributes = string_map(n);
    let mut ingest_principal = strings(n);
    let mut ingested_at = utc(n);

    let header = &batch.header;
    for r in &batch.spans {
        let resource = header.resources.get(r.resource as usize);
        let res = |f: fn(&crate::record::ResourceInfo) -> &Option<String>| {
            resource.and_then(|info| f(info).as_deref())
        };
        hex_into(&r.trace_id, &mut trace_id);
        hex_into(&r.span_id, &mut span_id);
        match &r.parent_span_id {
            Some(p) => hex_into(p, &mut parent_span_id),
            None => parent_span_id.append_null(),
        }
        start_time.append_value(r.start_time);
        end_time.append_value(r.end_time);
        duration.append_value(r.end_time - r.start_time);
        service_name.append_option(res(|i| &i.service_name));
        service_namespace.append_option(res(|i| &i.service_namespace));
        service_instance_id.append_option(res(|i| &i.service_instance_id));
        k8s_cluster.append_option(res(|i| &i.k8s_cluster));
        k8s_namespace.append_option(res(|i| &i.k8s_namespace));
        k8s_pod.append_option(res(|i| &i.k8s_pod));
        name.append_value(&r.name);
        kind.append_value(r.kind.as_str());
        status_code.append_value(r.status_code.as_str());
        status_message.append_option(r.status_message.as_deref());
        user_id.append_option(r.user_id.as_deref());
        append_list(&mut user_roles, &r.user_roles);
        session_id.append_option(r.session_id.as_deref());
        agent_id.append_option(r.agent_id.as_deref());
        agent_name.append_option(r.agent_name.as_deref());
        genai_operation.append_option(r.genai_operation.as_deref());
        tool_name.append_option(r.tool_name.as_deref());
        tool_call_id.append_option(r.tool_call_id.as_deref());
        workload_id.append_option(r.workload_id.as_deref());
        client_address.append_option(r.client_address.as_deref());
        credential_fp.append_option(r.credential.as_ref().map(|c| c.fingerprint.as_str()));
        credential_kind.append_option(r.credential.as_ref().map(|c| c.kind.as_str()));
        credential_attr.append_option(r.credential.as_ref().map(|c| c.attribute.as_str()));
        let token = r.token.as_ref();
        token_iss.append_option(token.and_then(|t| t.iss.as_deref()));
        token_sub.append_option(token.and_then(|t| t.sub.as_deref()));
        token_client_id.append_option(token.and_then(|t| t.client_id.as_deref()));
        token_jti.append_option(token.and_then(|t| t.jti.as_deref()));
        match token {
            Some(t) => {
                append_list(&mut token_scopes, &t.scopes);
                append_list(&mut token_actors, &t.actors);
                append_list(&mut token_audience, &t.audience);
                append_list(&mut token_may_act, &t.may_act);
                token_verified.append_value(t.verified);
            }
            None => {
                token_scopes.append_null();
                token_actors.append_null();
                token_audience.append_null();
                token_may_act.append_null();
                token_verified.append_null();
            }
        }
        token_issued_at.append_option(token.and_then(|t| t.issued_at));
        token_expires_at.append_option(token.and_then(|t| t.expires_at));
        api_protocol.append_option(r.api_protocol.map(|p| p.as_str()));
        api_method.append_option(r.api_method.as_deref());
        api_route.append_option(r.api_route.as_deref());
        api_target.append_option(r.api_target.as_deref());
        http_status.append_option(r.http_status);
        effect_kind.append_option(r.effect_kind.map(|k| k.as_str()));
        effect_operation.append_option(r.effect_operation.as_deref());
        effect_target.append_option(r.effect_target.as_deref());
        effect_is_write.append_option(r.effect_is_write);
        for (link_trace, link_span) in &r.links {
            let item = links.values();
            if let Some(b) = item.field_builder::<StringBuilder>(0) {
                hex_into(link_trace, b);
            }
            if let Some(b) = item.field_builder::<StringBuilder>(1) {
                hex_into(link_span, b);
            }
            item.append(true);
        }
        links.append(true);
        append_map(&mut attributes, &r.attributes)?;
        append_map(
            &mut resource_attributes,
            resource.map_or(&[][..], |i| &i.attributes),
        )?;
        ingest_principal.append_option(header.ingest_principal.as_deref());
        ingested_at.append_value(header.ingested_at);
    }

    let columns: Vec<ArrayRef> = vec![
        Arc::new(trace_id.finish()),
        Arc::new(span_id.finish()),
        Arc::new(parent_span_id.finish()),
        Arc::new(start_time.finish()),
        Arc::new(end_time.finish()),
        Arc::new(duration.finish()),
        Arc::new(service_name.finish()),
        Arc::new(service_namespace.finish()),
        Arc::new(service_instance_id.finish()),
        Arc::new(k8s_cluster.finish()),
        Arc::new(k8s_namespace.finish()),
        Arc::new(k8s_pod.finish()),
        Arc::new(name.finish()),
        Arc::new(kind.finish()),
        Arc::new(status_code.finish()),
        Arc::new(status_message.finish()),
        Arc::new(user_id.finish()),
        Arc::new(user_roles.finish()),
        Arc::new(session_id.finish()),
        Arc::new(agent_id.finish()),
        Arc::new(agent_name.finish()),
        Arc::new(genai_operation.finish()),
        Arc::new(tool_name.finish()),
        Arc::new(tool_call_id.finish()),
        Arc::new(workload_id.finish()),
        Arc::new(client_address.finish()),
        Arc::new(credential_fp.finish()),
        Arc::new(credential_kind.finish()),
        Arc::new(credential_attr.finish()),
        Arc::new(token_iss.finish()),
        Arc::new(token_sub.finish()),
        Arc::new(token_client_id.finish()),
        Arc::new(token_jti.finish()),
        Arc::new(token_scopes.finish()),
        Arc::new(token_issued_at.finish()),
        Arc::new(token_expires_at.finish()),
        Arc::new(token_actors.finish()),
        Arc::new(token_verified.finish()),
        Arc::new(token_audience.finish()),
        Arc::new(token_may_act.finish()),
        Arc::new(api_protocol.finish()),
        Arc::new(api_method.finish()),
        Arc::new(api_route.finish()),
        Arc::new(api_target.finish()),
        Arc::new(http_status.finish()),
        Arc::new(effect_kind.finish()),
        Arc::new(effect_operation.finish()),
        Arc::new(effect_target.finish()),
        Arc::new(effect_is_write.finish()),
        Arc::new(links.finish()),
        Arc::new(attributes.finish()),
        Arc::new(resource_attributes.finish()),
        Arc::new(ingest_principal.finish()),
        Arc::new(ingested_at.finish()),
    ];
    RecordBatch::try_new(spans::schema(), columns)
}

/// One file's rows: `batches` (one partition's, as the writer buffered them) concatenated and
/// sorted as the spans files declare (ADR 10): by `credential_fp` (nulls last) then
/// `start_time` when `cluster_by_credential`, else by `start_time` alone.
pub fn sorted_for_file(
    batches: &[RecordBatch],
    cluster_by_credential: bool,
) -> Result<RecordBatch, ArrowError> {
    let schema = spans::schema();
    if batches.is_empty() {
        return Ok(RecordBatch::new_empty(schema));
    }
    // One column concatenated at a time (the sort keys first), so a flush holds the buffered
    // batches, the sorted output and one concatenated column, not a second copy of everything.
    let concatenated = |index: usize| {
        let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(index).as_ref()).collect();
        concat(&parts)
    };
    let column = |name: &str| concatenated(schema.index_of(name)?);
    let ascending = |nulls_first| SortOptions {
        descending: false,
        nulls_first,
    };
    let mut keys = Vec::with_capacity(2);
    if cluster_by_credential {
        keys.push(SortColumn {
            values: column(spans::col::CREDENTIAL_FP)?,
            options: Some(ascending(false)),
        });
    }
    keys.push(SortColumn {
        values: column(spans::col::START_TIME)?,
        options: Some(ascending(false)),
    });
    let order = lexsort_to_indices(&keys, None)?;
    drop(keys);
    let columns = (0..schema.fields().len())
        .map(|index| take_column(&concatenated(index)?, &order))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema, columns)
}

/// Arrow's `take`, but for list and map columns it takes their items by the expanded item
/// indices. Arrow's own copies each row's items through `MutableArrayData`, which was 6.7 % of
/// the collector's CPU at full load (BENCHMARKS.md, stop 21); strings and structs of strings,
/// which the items of every `spans` list and map are, have fast `take` paths.
fn take_column(column: &ArrayRef, order: &UInt32Array) -> Result<ArrayRef, ArrowError> {
    Ok(match column.data_type() {
        DataType::List(field) => {
            let list = column.as_list::<i32>();
            let (offsets, items, nulls) = expand(list.offsets(), list.nulls(), order);
            let values = take(list.values(), &items, None)?;
            Arc::new(ListArray::try_new(field.clone(), offsets, values, nulls)?)
        }
        DataType::Map(field, keys_sorted) => {
            let map = column.as_map();
            let (offsets, items, nulls) = expand(map.offsets(), map.nulls(), order);
            let entries = take(map.entries(), &items, None)?;
            Arc::new(MapArray::try_new(
                field.clone(),
                offsets,
                entries.as_struct().clone(),
                nulls,
                *keys_sorted,
            )?)
        }
        _ => take(column, order, None)?,
    })
}

/// For rows taken in `order` from a list-like column: the new offsets, the indices of their
/// items in the old child array, and the new validity.
fn expand(
    offsets: &OffsetBuffer<i32>,
    nulls: Option<&NullBuffer>,
    order: &UInt32Array,
) -> (OffsetBuffer<i32>, UInt32Array, Option<NullBuffer>) {
    let mut lengths = Vec::with_capacity(order.len());
    let mut items = Vec::with_capacity(order.len() * 4);
    for &row in order.values() {
        let (start, end) = (offsets[row as usize], offsets[row as usize + 1]);
        lengths.push((end - start) as usize);
        items.extend(start as u32..end as u32);
    }
    let nulls = nulls.map(|nulls| {
        order
            .values()
            .iter()
            .map(|&row| nulls.is_valid(row as usize))
            .collect()
    });
    (
        OffsetBuffer::from_lengths(lengths),
        UInt32Array::from(items),
        nulls,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SpanRow;
    use arrow::array::{StringArray, StructArray};
    use arrow::datatypes::{Field, Fields};

    /// What a buffered batch of one span holds: small exports must not each pin the default
    /// capacities of some fifty builders (the flush threshold counts this size).
    #[test]
    fn a_one_span_batch_is_buffered_in_a_few_kib() {
        let batch = SpanBatch {
            header: Default::default(),
            spans: vec![SpanRow {
                trace_id: [1; 16],
                span_id: [2; 8],
                start_time: 1,
                end_time: 2,
                attributes: vec![("k".into(), "v".into())],
                ..Default::default()
            }],
        };
        let bytes = to_record_batch(&batch).unwrap().get_array_memory_size();
        assert!(bytes < 16 << 10, "{bytes} bytes for one span");
    }

    /// Lists and a map with nulls, empty rows and several items, taken in a shuffled order with
    /// a repeat: the result must be what arrow's own `take` gives.
    #[test]
    fn list_and_map_columns_are_taken_as_arrow_takes_them() {
        let mut list = string_list(4);
        for row in [&["a", "b"][..], &[], &["c"]] {
            append_list(
                &mut list,
                &row.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            );
        }
        list.append_null();
        let mut map = string_map(4);
        append_map(
            &mut map,
            &[("k1".into(), "v1".into()), ("k2".into(), "v2".into())],
        )
        .unwrap();
        map.append(false).unwrap();
        append_map(&mut map, &[]).unwrap();
        append_map(&mut map, &[("k3".into(), "v3".into())]).unwrap();
        let links = StructArray::from(vec![(
            Arc::new(Field::new("a", DataType::Utf8, true)),
            Arc::new(StringArray::from(vec![Some("x"), None, Some("z")])) as ArrayRef,
        )]);
        let link_fields = Fields::from(vec![Field::new("a", DataType::Utf8, true)]);
        let links = ListArray::try_new(
            Arc::new(Field::new_struct("item", link_fields, true)),
            OffsetBuffer::from_lengths([0, 2, 1, 0]),
            Arc::new(links),
            None,
        )
        .unwrap();
        let order = UInt32Array::from(vec![3, 0, 2, 0, 1]);
        for column in [
            Arc::new(list.finish()) as ArrayRef,
            Arc::new(map.finish()),
            Arc::new(links),
        ] {
            let ours = take_column(&column, &order).unwrap();
            let arrows = take(&column, &order, None).unwrap();
            assert_eq!(ours.to_data(), arrows.to_data(), "{}", column.data_type());
        }
    }
}
