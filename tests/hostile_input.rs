//! Hostile input, one test per case: values nested thousands deep, a million attributes, a
//! 50 MB value, ten thousand events and links, compression bombs on gRPC, and the OTLP/JSON
//! variants the spec accepts or refuses. Each is capped or refused with a clear status, and the
//! valid spans around it are stored.

mod common;

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, StringArray};
use bytes::BufMut;
use common::{TestServer, hex, raw_grpc, request, span, stored_ids, text};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use tonic::codec::CompressionEncoding;

/// The attributes map of the stored span `span_id`.
fn stored_attributes(data_dir: &std::path::Path, span_id: &[u8]) -> BTreeMap<String, String> {
    let wanted = hex(span_id);
    for batch in common::read_spans(data_dir) {
        let ids = batch
            .column_by_name("span_id")
            .expect("span_id")
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("span_id is text")
            .clone();
        let maps = batch
            .column_by_name("attributes")
            .expect("attributes")
            .as_map();
        for row in 0..batch.num_rows() {
            if ids.value(row) != wanted {
                continue;
            }
            let entries = maps.value(row);
            let keys = entries.column(0).as_string::<i32>();
            let values = entries.column(1).as_string::<i32>();
            return (0..entries.len())
                .map(|i| (keys.value(i).to_string(), values.value(i).to_string()))
                .collect();
        }
    }
    panic!("span {wanted} not stored");
}

async fn grpc(server: &TestServer) -> TraceServiceClient<tonic::transport::Channel> {
    TraceServiceClient::connect(server.grpc_url())
        .await
        .expect("connect")
        .max_encoding_message_size(usize::MAX)
}

async fn post(server: &TestServer, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.http_url("/v1/traces"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("http request")
}

fn length_delimited(field: u32, payload: &[u8], out: &mut Vec<u8>) {
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(payload.len() as u64, out);
    out.put_slice(payload);
}

/// A request whose one span carries `key` = arrays nested `depth` deep, as protobuf bytes built
/// from the inside out (building it as nested structs would recurse as deep in this test).
fn nested_request(span_id: u8, key: &str, depth: usize) -> Vec<u8> {
    // AnyValue { string_value: "leaf" }
    let mut value = Vec::new();
    length_delimited(1, b"leaf", &mut value);
    for _ in 0..depth {
        // AnyValue { array_value: ArrayValue { values: [value] } }
        let mut array = Vec::new();
        length_delimited(1, &value, &mut array);
        value.clear();
        length_delimited(5, &array, &mut value);
    }
    let mut attribute = Vec::new();
    length_delimited(1, key.as_bytes(), &mut attribute);
    length_delimited(2, &value, &mut attribute);
    // The span without the attribute, then the attribute appended as field 9: protobuf
    // fields may come in any order.
    let mut span_bytes = span(&[3; 16], &[span_id; 8], "nested", vec![]).encode_to_vec();
    length_delimited(9, &attribute, &mut span_bytes);
    let mut scope_spans = Vec::new();
    length_delimited(2, &span_bytes, &mut scope_spans);
    let mut resource_spans = Vec::new();
    length_delimited(2, &scope_spans, &mut resource_spans);
    let mut request = Vec::new();
    length_delimited(1, &resource_spans, &mut request);
    request
}

#[tokio::test]
async fn values_nested_thousands_deep_are_refused_and_moderate_nesting_is_cut() {
    let server = TestServer::start(&[]).await;
    let bomb = nested_request(1, "deep", 5_000);

    let response = post(&server, "application/x-protobuf", bomb.clone()).await;
    assert_eq!(response.status(), 400);
    let message = response.text().await.expect("body");
    assert!(message.contains("recursion limit"), "{message}");

    // The same bomb over gRPC goes through tonic's decoder: sent as raw bytes.
    let status = raw_grpc(&server, bomb).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // JSON arrays nested 5,000 deep: refused by the JSON parser's own depth limit.
    let nested = format!(
        r#"{}{{"stringValue":"leaf"}}{}"#,
        r#"{"arrayValue":{"values":["#.repeat(5_000),
        "]}}".repeat(5_000)
    );
    let json = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"03030303030303030303030303030303","spanId":"0202020202020202","name":"j","startTimeUnixNano":"1795355100000000000","endTimeUnixNano":"1795355100000001000","attributes":[{{"key":"deep","value":{nested}}}]}}]}}]}}]}}"#
    );
    let response = post(&server, "application/json", json.into_bytes()).await;
    assert_eq!(response.status(), 400);

    // 40 levels decode, and the stored value stops at the flattener's depth limit.
    let response = post(
        &server,
        "application/x-protobuf",
        nested_request(4, "moderate", 40),
    )
    .await;
    assert_eq!(response.status(), 200);
    let dir = server.stop().await;
    let attributes = stored_attributes(&dir.path().join("data"), &[4; 8]);
    let moderate = &attributes["moderate"];
    assert!(
        moderate.contains('…') && !moderate.contains("leaf"),
        "{moderate}"
    );
}

#[tokio::test]
async fn a_million_attributes_keep_the_first_128_and_count_the_rest() {
    let server = TestServer::start(&[]).await;
    let attributes: Vec<KeyValue> = (0..1_000_000)
        .map(|i| text(&format!("k{i}"), "v"))
        .collect();
    let crowded = span(&[5; 16], &[1; 8], "crowded", attributes);
    grpc(&server)
        .await
        .export(request("svc", vec![crowded]))
        .await
        .expect("accepted");
    let dir = server.stop().await;
    let stored = stored_attributes(&dir.path().join("data"), &[1; 8]);
    assert!(stored.contains_key("k0") && stored.contains_key("k127"));
    assert!(!stored.contains_key("k128"));
    assert_eq!(stored["idtrail.dropped_attributes_count"], "999872");
}

#[tokio::test]
async fn a_50_mb_value_is_stored_cut_to_the_value_limit() {
    let server = TestServer::start(&[]).await;
    let huge = "a".repeat(50 << 20);
    let spans = vec![
        span(
            &[6; 16],
            &[1; 8],
            "huge",
            vec![text("payload", &huge), text("small", "kept")],
        ),
        span(&[6; 16], &[2; 8], "neighbour", vec![]),
    ];
    grpc(&server)
        .await
        .export(request("svc", spans))
        .await
        .expect("accepted");
    let dir = server.stop().await;
    let data = dir.path().join("data");
    let stored = stored_attributes(&data, &[1; 8]);
    let limit = idtrail_collector::config::SpanLimitsConfig::default().max_value_bytes;
    assert_eq!(stored["payload"].len(), limit);
    assert_eq!(stored["small"], "kept");
    assert_eq!(stored["idtrail.truncated_values_count"], "1");
    assert_eq!(stored_ids(&data).len(), 2);
    let on_disk: u64 = common::parquet_files(&data)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(on_disk < 1 << 20, "{on_disk} bytes on disk");
}

#[tokio::test]
async fn ten_thousand_events_and_links_are_capped() {
    let server = TestServer::start(&[]).await;
    let mut busy = span(&[7; 16], &[1; 8], "busy", vec![]);
    busy.events = (0..10_000)
        .map(|i| Event {
            time_unix_nano: busy.start_time_unix_nano,
            name: format!("event {i}"),
            ..Default::default()
        })
        .collect();
    busy.links = (0..10_000u32)
        .map(|i| {
            let mut trace_id = [9u8; 16];
            trace_id[..4].copy_from_slice(&i.to_be_bytes());
            Link {
                trace_id: trace_id.to_vec(),
                span_id: vec![1; 8],
                ..Default::default()
            }
        })
        .collect();
    grpc(&server)
        .await
        .export(request("svc", vec![busy]))
        .await
        .expect("accepted");
    let dir = server.stop().await;
    let data = dir.path().join("data");
    let stored = stored_attributes(&data, &[1; 8]);
    assert_eq!(stored["idtrail.dropped_links_count"], "9872");
    let links = common::read_spans(&data)
        .iter()
        .map(|b| {
            let links = b.column_by_name("links").expect("links").as_list::<i32>();
            (0..links.len())
                .map(|i| links.value(i).len())
                .sum::<usize>()
        })
        .sum::<usize>();
    assert_eq!(links, 128);
}

#[tokio::test]
async fn grpc_compression_bombs_stay_within_the_size_cap() {
    let server = TestServer::start(&[("receivers.max_request_bytes", "1000000")]).await;
    // 50 MB of one repeated byte: a few kB compressed.
    let bomb = span(
        &[8; 16],
        &[1; 8],
        "bomb",
        vec![text("zeros", &"0".repeat(50 << 20))],
    );
    for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let status = grpc(&server)
            .await
            .send_compressed(encoding)
            .export(request("svc", vec![bomb.clone()]))
            .await
            .expect_err("over the cap");
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "{encoding:?}: {status:?}"
        );
    }
    grpc(&server)
        .await
        .send_compressed(CompressionEncoding::Zstd)
        .export(request("svc", vec![span(&[8; 16], &[2; 8], "ok", vec![])]))
        .await
        .expect("a small zstd request");
    let dir = server.stop().await;
    assert_eq!(stored_ids(&dir.path().join("data")).len(), 1);
}

#[tokio::test]
async fn otlp_json_variants_follow_the_spec() {
    let server = TestServer::start(&[]).await;
    let body = |trace_id: &str, span_id: &str, kind: &str, extra: &str| {
        format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"{trace_id}","spanId":"{span_id}","name":"v","kind":{kind},"startTimeUnixNano":"1795355100000000000","endTimeUnixNano":"1795355100000001000"{extra}}}]}}]}}]}}"#
        )
        .into_bytes()
    };
    // Hex ids are case-insensitive.
    let upper = post(
        &server,
        "application/json",
        body(
            "0A0B0C0D0E0F0A0B0C0D0E0F0A0B0C0D",
            "0A0B0C0D0E0F0102",
            "2",
            "",
        ),
    )
    .await;
    assert_eq!(upper.status(), 200);
    // Unknown fields are ignored, as OTLP/JSON receivers must.
    let unknown = post(
        &server,
        "application/json",
        body(
            "0a0b0c0d0e0f0a0b0c0d0e0f0a0b0c0d",
            "0a0b0c0d0e0f0103",
            "2",
            r#","someFutureField":{"x":1}"#,
        ),
    )
    .await;
    assert_eq!(unknown.status(), 200, "{:?}", unknown.text().await);
    // Base64 ids (protobuf's generic JSON mapping) are not OTLP/JSON.
    let base64 = post(
        &server,
        "application/json",
        body("CgsMDQ4PCgsMDQ4PCgsMDQ==", "CgsMDQ4PAQQ=", "2", ""),
    )
    .await;
    assert_eq!(base64.status(), 400);
    // Enum names: OTLP/JSON requires integers.
    let named = post(
        &server,
        "application/json",
        body(
            "0a0b0c0d0e0f0a0b0c0d0e0f0a0b0c0d",
            "0a0b0c0d0e0f0105",
            r#""SPAN_KIND_SERVER""#,
            "",
        ),
    )
    .await;
    assert_eq!(named.status(), 400);
    let message = named.text().await.expect("body");
    assert!(message.contains("OTLP/JSON"), "{message}");

    let dir = server.stop().await;
    let ids = stored_ids(&dir.path().join("data"));
    assert_eq!(
        ids,
        vec![
            (
                "0a0b0c0d0e0f0a0b0c0d0e0f0a0b0c0d".to_string(),
                "0a0b0c0d0e0f0102".to_string()
            ),
            (
                "0a0b0c0d0e0f0a0b0c0d0e0f0a0b0c0d".to_string(),
                "0a0b0c0d0e0f0103".to_string()
            ),
        ]
    );
}
