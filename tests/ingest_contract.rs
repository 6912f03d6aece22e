//! The OTLP ingest contract of DESIGN.md, one test per case: partial success for invalid spans,
//! INVALID_ARGUMENT / 400 for undecodable bodies, RESOURCE_EXHAUSTED / 413 over the size limit
//! (after decompression), UNAVAILABLE / 503 with a retry hint when the WAL cannot be written,
//! and retried duplicates stored once.

mod common;

use std::io::Write;

use common::{TestServer, hex, raw_grpc, request, span, stored_ids, text};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic_types::StatusExt;

async fn client(server: &TestServer) -> TraceServiceClient<tonic::transport::Channel> {
    TraceServiceClient::connect(server.grpc_url())
        .await
        .expect("connect")
}

#[tokio::test]
async fn grpc_mixed_valid_and_invalid_spans_store_the_valid_ones() {
    let server = TestServer::start(&[]).await;
    let good: Vec<[u8; 8]> = (1..=3u8).map(|i| [i; 8]).collect();
    let mut spans: Vec<_> = good
        .iter()
        .map(|id| span(&[7; 16], id, "ok", vec![text("user.id", "alice")]))
        .collect();
    spans.push(span(&[0; 16], &[9; 8], "zero trace id", vec![]));
    spans.push(span(&[7; 16], &[9; 5], "short span id", vec![]));
    spans.push(span(&[7; 10], &[9; 8], "short trace id", vec![]));
    let response = client(&server)
        .await
        .export(request("svc", spans))
        .await
        .expect("export is OK with partial success")
        .into_inner();
    let partial = response.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 3);
    assert!(
        partial.error_message.contains("trace_id must be 16 bytes"),
        "{}",
        partial.error_message
    );
    assert!(partial.error_message.contains("span_id must be 8 bytes"));

    let dir = server.stop().await;
    let ids = stored_ids(&dir.path().join("data"));
    let expected: Vec<(String, String)> = good.iter().map(|id| (hex(&[7; 16]), hex(id))).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn grpc_undecodable_request_is_invalid_argument() {
    let server = TestServer::start(&[]).await;
    // Field 1 (resource_spans) as a length-delimited value whose length overruns the buffer.
    let status = raw_grpc(&server, vec![0x0a, 0xff, 0x01, 0x02])
        .await
        .expect_err("must be refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn grpc_over_the_size_limit_is_resource_exhausted_without_retry_info() {
    let server = TestServer::start(&[("receivers.max_request_bytes", "20000")]).await;
    let big = span(
        &[1; 16],
        &[1; 8],
        "big",
        vec![text("blob", &"x".repeat(50_000))],
    );
    for compressed in [false, true] {
        let mut client = client(&server).await;
        if compressed {
            // 50 kB of 'x' gzip to a few hundred bytes: the limit applies after decompression.
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let status = client
            .export(request("svc", vec![big.clone()]))
            .await
            .expect_err("over the limit");
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "compressed={compressed}: {status:?}"
        );
        assert!(
            status.get_details_retry_info().is_none(),
            "must not invite a retry"
        );
    }
    // A request under the limit still goes through.
    client(&server)
        .await
        .export(request(
            "svc",
            vec![span(&[1; 16], &[2; 8], "small", vec![])],
        ))
        .await
        .expect("small request");
    server.stop().await;
}

/// Makes the WAL unwritable: every commit opens a new segment (segment size 1 byte), and the
/// WAL directory is replaced by a plain file, which fails even for root.
fn break_wal(data_dir: &std::path::Path) {
    let wal = data_dir.join("wal");
    std::fs::rename(&wal, data_dir.join("wal.aside")).expect("move wal aside");
    std::fs::write(&wal, b"not a directory").expect("block wal");
}

fn repair_wal(data_dir: &std::path::Path) {
    let wal = data_dir.join("wal");
    std::fs::remove_file(&wal).expect("unblock wal");
    std::fs::rename(data_dir.join("wal.aside"), &wal).expect("restore wal");
}

#[tokio::test]
async fn grpc_unwritable_wal_is_unavailable_with_retry_info_and_recovers() {
    let server = TestServer::start(&[("wal.segment_bytes", "1")]).await;
    let mut client = client(&server).await;
    client
        .export(request(
            "svc",
            vec![span(&[3; 16], &[1; 8], "before", vec![])],
        ))
        .await
        .expect("healthy WAL");

    break_wal(&server.data_dir());
    let status = client
        .export(request(
            "svc",
            vec![span(&[3; 16], &[2; 8], "during", vec![])],
        ))
        .await
        .expect_err("WAL is unwritable");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.get_details_retry_info().is_some(),
        "retryable: carries RetryInfo"
    );

    repair_wal(&server.data_dir());
    client
        .export(request(
            "svc",
            vec![span(&[3; 16], &[3; 8], "after", vec![])],
        ))
        .await
        .expect("recovered");
    let dir = server.stop().await;
    let ids = stored_ids(&dir.path().join("data"));
    let spans: Vec<&str> = ids.iter().map(|(_, s)| s.as_str()).collect();
    assert!(
        spans.contains(&hex(&[1; 8]).as_str()),
        "acknowledged before the fault"
    );
    assert!(
        spans.contains(&hex(&[3; 8]).as_str()),
        "acknowledged after recovery"
    );
}

#[tokio::test]
async fn retried_spans_are_stored_once() {
    let server = TestServer::start(&[]).await;
    let req = request(
        "svc",
        (1..=5u8)
            .map(|i| span(&[5; 16], &[i; 8], "s", vec![]))
            .collect(),
    );
    let mut client = client(&server).await;
    client.export(req.clone()).await.expect("first");
    client
        .export(req.clone())
        .await
        .expect("retry is acknowledged too");
    let dir = server.stop().await;
    assert_eq!(stored_ids(&dir.path().join("data")).len(), 5);
}

async fn post(
    server: &TestServer,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(server.http_url("/v1/traces"))
        .header("content-type", content_type)
        .body(body);
    if let Some(encoding) = encoding {
        req = req.header("content-encoding", encoding);
    }
    req.send().await.expect("http request")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

#[tokio::test]
async fn http_accepts_protobuf_json_gzip_and_zstd() {
    let server = TestServer::start(&[]).await;
    let proto = request("svc", vec![span(&[8; 16], &[1; 8], "a", vec![])]).encode_to_vec();
    let r = post(&server, "application/x-protobuf", None, proto.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-protobuf");
    ExportTraceServiceResponse::decode(r.bytes().await.expect("body")).expect("response decodes");

    let gz = request("svc", vec![span(&[8; 16], &[2; 8], "b", vec![])]).encode_to_vec();
    assert_eq!(
        post(&server, "application/x-protobuf", Some("gzip"), gzip(&gz))
            .await
            .status(),
        200
    );
    let zs = request("svc", vec![span(&[8; 16], &[3; 8], "c", vec![])]).encode_to_vec();
    let zs = zstd::encode_all(&zs[..], 3).expect("zstd");
    assert_eq!(
        post(&server, "application/x-protobuf", Some("zstd"), zs)
            .await
            .status(),
        200
    );

    // OTLP/JSON: hex ids, integer enums, 64-bit integers as strings or numbers.
    let json = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},
      "scopeSpans":[{"spans":[
        {"traceId":"08080808080808080808080808080808","spanId":"0404040404040404","name":"d","kind":2,
         "startTimeUnixNano":"1795355100000000000","endTimeUnixNano":1795355100000001000,
         "attributes":[{"key":"http.response.status_code","value":{"intValue":"201"}}]},
        {"traceId":"00000000000000000000000000000000","spanId":"0505050505050505","name":"bad","kind":1,
         "startTimeUnixNano":"1795355100000000000","endTimeUnixNano":"1795355100000001000"}]}]}]}"#;
    let r = post(&server, "application/json", None, json.as_bytes().to_vec()).await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("json response");
    assert_eq!(body["partialSuccess"]["rejectedSpans"], 1, "{body}");

    let dir = server.stop().await;
    let ids = stored_ids(&dir.path().join("data"));
    assert_eq!(ids.len(), 4, "{ids:?}");
    let data = dir.path().join("data");
    assert_eq!(
        common::column_of(&data, &hex(&[4; 8]), "name").as_deref(),
        Some("d")
    );
}

#[tokio::test]
async fn http_refuses_bad_requests_with_otlp_statuses() {
    let server = TestServer::start(&[("receivers.max_request_bytes", "100000")]).await;

    let r = post(
        &server,
        "application/x-protobuf",
        None,
        vec![0x0a, 0xff, 0x01],
    )
    .await;
    assert_eq!(r.status(), 400);
    let status = tonic_types::Status::decode(r.bytes().await.expect("body"))
        .expect("google.rpc.Status body");
    assert_eq!(status.code, tonic::Code::InvalidArgument as i32);

    let r = post(
        &server,
        "application/json",
        None,
        br#"{"resourceSpans": [ {"#.to_vec(),
    )
    .await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("json error body");
    assert_eq!(body["code"], 3);

    let r = post(&server, "text/plain", None, b"hello".to_vec()).await;
    assert_eq!(r.status(), 415);

    let r = post(&server, "application/x-protobuf", Some("br"), b"x".to_vec()).await;
    assert_eq!(r.status(), 400, "unknown content-encoding");

    let r = post(
        &server,
        "application/x-protobuf",
        Some("gzip"),
        b"not gzip".to_vec(),
    )
    .await;
    assert_eq!(r.status(), 400, "corrupt gzip");

    let big = request(
        "svc",
        vec![span(
            &[1; 16],
            &[1; 8],
            "big",
            vec![text("blob", &"y".repeat(200_000))],
        )],
    )
    .encode_to_vec();
    let r = post(&server, "application/x-protobuf", None, big).await;
    assert_eq!(r.status(), 413, "over the limit uncompressed");
    let status = tonic_types::Status::decode(r.bytes().await.expect("body"))
        .expect("google.rpc.Status body");
    assert_eq!(status.code, tonic::Code::ResourceExhausted as i32);

    // Decompression bombs: 50 MB of zeros compress to ~50 kB; the cap is 100 kB decompressed.
    let zeros = vec![0u8; 50 << 20];
    let r = post(
        &server,
        "application/x-protobuf",
        Some("gzip"),
        gzip(&zeros),
    )
    .await;
    assert_eq!(r.status(), 413, "gzip bomb");
    let r = post(
        &server,
        "application/x-protobuf",
        Some("zstd"),
        zstd::encode_all(&zeros[..], 3).expect("zstd"),
    )
    .await;
    assert_eq!(r.status(), 413, "zstd bomb");

    server.stop().await;
}

#[tokio::test]
async fn http_unwritable_wal_is_503_with_retry_after() {
    let server = TestServer::start(&[("wal.segment_bytes", "1")]).await;
    let body = |i: u8| request("svc", vec![span(&[6; 16], &[i; 8], "s", vec![])]).encode_to_vec();
    assert_eq!(
        post(&server, "application/x-protobuf", None, body(1))
            .await
            .status(),
        200
    );
    break_wal(&server.data_dir());
    let r = post(&server, "application/x-protobuf", None, body(2)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    repair_wal(&server.data_dir());
    assert_eq!(
        post(&server, "application/x-protobuf", None, body(3))
            .await
            .status(),
        200
    );
    server.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = TestServer::start(&[]).await;
    let get = |path: &str| reqwest::get(server.http_url(path));
    assert_eq!(get("/healthz").await.expect("healthz").status(), 200);
    assert_eq!(get("/readyz").await.expect("readyz").status(), 200);
    client(&server)
        .await
        .export(request("svc", vec![span(&[2; 16], &[2; 8], "m", vec![])]))
        .await
        .expect("export");
    let metrics = get("/metrics")
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "idtrail_spans_received_total 1",
        "idtrail_spans_accepted_total 1",
        "idtrail_wal_fsync_seconds_count",
        "idtrail_export_requests_total{protocol=\"grpc\",outcome=\"ok\"} 1",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    server.stop().await;
}

/// A store that cannot take files (here: `spans` is a plain file) stalls publication; the WAL
/// and queues fill; then exports are refused as retryable instead of hanging, and once the
/// store recovers everything acknowledged is published.
#[tokio::test]
async fn stalled_publication_refuses_exports_as_retryable_and_loses_nothing() {
    let server = TestServer::start(&[
        ("writer.max_file_age", "100ms"),
        ("receivers.ack_timeout", "500ms"),
    ])
    .await;
    let spans_dir = server.data_dir().join("spans");
    std::fs::create_dir_all(server.data_dir()).expect("data dir");
    let _ = std::fs::remove_dir_all(&spans_dir);
    std::fs::write(&spans_dir, b"not a directory").expect("block the store");

    let mut client = client(&server).await;
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..20_000u16 {
        let id = i.to_be_bytes();
        let span_id = [id[0], id[1], 1, 1, 1, 1, 1, 1];
        // Each request is its own batch: the writer queue fills after a few dozen.
        match client
            .export(request("svc", vec![span(&[9; 16], &span_id, "s", vec![])]))
            .await
        {
            Ok(_) => acked.push(hex(&span_id)),
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let status = refused.expect("exports are refused once the pipeline is full");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.get_details_retry_info().is_some());

    std::fs::remove_file(&spans_dir).expect("unblock the store");
    let dir = server.stop().await;
    let stored: Vec<String> = stored_ids(&dir.path().join("data"))
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    for id in &acked {
        assert!(stored.contains(id), "acknowledged span {id} lost");
    }
}
