//! Shared harness of the integration tests: an in-process collector on free ports, OTLP request
//! builders, and a reader of what reached Parquet.

#![allow(dead_code)]

pub mod process;
pub mod scenario;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use arrow::array::{Array, RecordBatch, StringArray};
use bytes::{Buf, BufMut};
use idtrail_collector::Config;
use idtrail_collector::server::{BoundAddresses, serve};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::sync::oneshot;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

pub struct TestServer {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<idtrail_collector::Result<()>>>,
}

impl TestServer {
    pub async fn start(overrides: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, overrides).await
    }

    pub async fn start_in(dir: tempfile::TempDir, overrides: &[(&str, &str)]) -> TestServer {
        let mut all: Vec<(String, String)> = vec![
            (
                "data_dir".into(),
                dir.path().join("data").display().to_string(),
            ),
            (
                "key_file".into(),
                dir.path().join("fp.key").display().to_string(),
            ),
            ("receivers.grpc_address".into(), "127.0.0.1:0".into()),
            ("receivers.http_address".into(), "127.0.0.1:0".into()),
        ];
        all.extend(
            overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let config = Config::load(None, Vec::new(), &all).expect("config");
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = oneshot::channel::<BoundAddresses>();
        let task = tokio::spawn(serve(
            config,
            axum::Router::new(),
            async move {
                let _ = stopped.await;
            },
            move |b| {
                let _ = bound_tx.send(b);
            },
        ));
        let bound = bound_rx.await.expect("server did not start");
        TestServer {
            grpc: bound.grpc,
            http: bound.http,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Graceful stop: drains, publishes buffered spans. Returns the temp dir for inspection.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"))
    }
}

pub fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// A span of `trace` with `span` id (any length, so invalid ids can be made).
pub fn span(trace: &[u8], span: &[u8], name: &str, attributes: Vec<KeyValue>) -> Span {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    Span {
        trace_id: trace.to_vec(),
        span_id: span.to_vec(),
        name: name.into(),
        kind: 2,
        start_time_unix_nano: now,
        end_time_unix_nano: now + 1_000,
        attributes,
        ..Default::default()
    }
}

pub fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Every published spans file under `data_dir`.
pub fn parquet_files(data_dir: &Path) -> Vec<PathBuf> {
    idtrail_schemas::layout::published_files(data_dir, "spans", None).expect("list spans files")
}

pub fn read_spans(data_dir: &Path) -> Vec<RecordBatch> {
    read_table(data_dir, "spans")
}

/// Every row of `table` (spans, chains, edges) in its published files.
pub fn read_table(data_dir: &Path, table: &str) -> Vec<RecordBatch> {
    idtrail_schemas::layout::published_files(data_dir, table, None)
        .unwrap_or_else(|e| panic!("listing {table} files: {e}"))
        .into_iter()
        .flat_map(|path| {
            let file = std::fs::File::open(&path).expect("open parquet");
            ParquetRecordBatchReaderBuilder::try_new(file)
                .expect("parquet footer")
                .build()
                .expect("reader")
                .map(|b| b.expect("batch"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `(trace_id, span_id)` of every stored span, as hex.
pub fn stored_ids(data_dir: &Path) -> Vec<(String, String)> {
    let mut ids = Vec::new();
    for batch in read_spans(data_dir) {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
                .expect("string column")
        };
        let (traces, spans) = (column("trace_id"), column("span_id"));
        for i in 0..batch.num_rows() {
            ids.push((traces.value(i).to_string(), spans.value(i).to_string()));
        }
    }
    ids.sort();
    ids
}

/// The string value of `column` in the row of `span_id`.
pub fn column_of(data_dir: &Path, span_id: &str, column: &str) -> Option<String> {
    for batch in read_spans(data_dir) {
        let ids = batch
            .column_by_name("span_id")?
            .as_any()
            .downcast_ref::<StringArray>()?
            .clone();
        let values = batch.column_by_name(column)?;
        let values = values.as_any().downcast_ref::<StringArray>()?;
        for i in 0..batch.num_rows() {
            if ids.value(i) == span_id {
                return (!values.is_null(i)).then(|| values.value(i).to_string());
            }
        }
    }
    None
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends arbitrary bytes as the gRPC message, to exercise the server's own decoding.
#[derive(Clone, Default)]
pub struct RawCodec;
pub struct RawEncoder;
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

pub async fn raw_grpc(server: &TestServer, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(server.grpc_url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        ),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}
