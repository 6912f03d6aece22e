//! Ingest auth (`receivers.auth_keys_file`): without a key, or with a wrong one, an export is
//! refused as UNAUTHENTICATED / HTTP 401 (with `WWW-Authenticate`, no retry hint) and nothing
//! of it is stored; with a key it is stored with `ingest_principal = key:<id>`, on both
//! protocols. The keys themselves appear in no file the collector writes.

mod common;

use common::{TestServer, column_of, hex, request, span, stored_ids, text};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use tonic_types::StatusExt;

const KEY_A: &str = "ik_7c1d9e2f4a6b8c0d1e3f5a7b";
const KEY_B: &str = "ik_0a9b8c7d6e5f4a3b2c1d0e9f";

async fn server_with_keys() -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("ingest.keys");
    std::fs::write(
        &keys,
        format!("# exporters\nedge-gateway {KEY_A}\nbilling {KEY_B}\n"),
    )
    .expect("key file");
    TestServer::start_in(
        dir,
        &[
            ("receivers.auth_keys_file", keys.to_str().expect("path")),
            ("writer.max_file_age", "100ms"),
        ],
    )
    .await
}

fn body(span_id: u8) -> Vec<u8> {
    request(
        "checkout",
        vec![span(
            &[7; 16],
            &[span_id; 8],
            "GET /cart",
            vec![text("http.request.method", "GET")],
        )],
    )
    .encode_to_vec()
}

async fn post(server: &TestServer, authorization: Option<&str>, span_id: u8) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(server.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body(span_id));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.expect("send")
}

async fn grpc_export(
    server: &TestServer,
    authorization: Option<&str>,
    span_id: u8,
) -> Result<(), tonic::Status> {
    let mut client = TraceServiceClient::connect(server.grpc_url())
        .await
        .expect("connect");
    let message =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
            body(span_id).as_slice(),
        )
        .expect("request");
    let mut request = tonic::Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("metadata"));
    }
    client.export(request).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_need_a_listed_bearer_key_and_record_its_id() {
    let server = server_with_keys().await;

    // HTTP: no key, a wrong key, another scheme: 401, told how, not asked to retry.
    for authorization in [
        None,
        Some("Bearer ik_not_a_key"),
        Some(&*format!("Basic {KEY_A}")),
    ] {
        let response = post(&server, authorization, 1).await;
        assert_eq!(response.status(), 401, "{authorization:?}");
        assert!(response.headers().get("retry-after").is_none());
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        let status = tonic_types::Status::decode(response.bytes().await.expect("body"))
            .expect("an OTLP Status body");
        assert_eq!(status.code, tonic::Code::Unauthenticated as i32);
        assert!(status.message.contains("receivers.auth_keys_file"));
    }
    // gRPC: UNAUTHENTICATED without RetryInfo.
    for authorization in [None, Some("Bearer ik_not_a_key")] {
        let status = grpc_export(&server, authorization, 2)
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.get_details_retry_info().is_none());
    }

    // With keys: accepted, and each span names the key that sent it.
    let response = post(&server, Some(&format!("Bearer {KEY_A}")), 3).await;
    assert_eq!(response.status(), 200);
    grpc_export(&server, Some(&format!("bearer {KEY_B}")), 4)
        .await
        .expect("accepted");

    let dir = server.stop().await;
    let data_dir = dir.path().join("data");
    // Only the two accepted spans are stored; nothing of the refused requests.
    let stored: Vec<String> = stored_ids(&data_dir).into_iter().map(|(_, s)| s).collect();
    assert_eq!(stored, vec![hex(&[3; 8]), hex(&[4; 8])]);
    assert_eq!(
        column_of(&data_dir, &hex(&[3; 8]), "ingest_principal").as_deref(),
        Some("key:edge-gateway")
    );
    assert_eq!(
        column_of(&data_dir, &hex(&[4; 8]), "ingest_principal").as_deref(),
        Some("key:billing")
    );

    // The keys are in no file the collector wrote (WAL, Parquet, logs of the data dir).
    for entry in walk(&data_dir) {
        let bytes = std::fs::read(&entry).expect("read");
        for key in [KEY_A, KEY_B] {
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                "{key} found in {}",
                entry.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_file_exports_need_no_key_and_have_no_principal() {
    let server = TestServer::start(&[("writer.max_file_age", "100ms")]).await;
    assert_eq!(post(&server, None, 5).await.status(), 200);
    let dir = server.stop().await;
    assert_eq!(
        column_of(&dir.path().join("data"), &hex(&[5; 8]), "ingest_principal"),
        None
    );
}
