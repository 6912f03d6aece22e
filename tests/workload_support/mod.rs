//! Test-only OTLP receivers (gRPC via tonic, HTTP/1.1 hand-rolled) that count
//! spans, check id shapes and can inject failures. Shared by tests/e2e.rs and
//! examples/receiver.rs.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::codec::CompressionEncoding;

/// How the receiver misbehaves for the first `fail_first` requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Unavailable,
    ResourceExhausted,
    ResourceExhaustedRetryInfo,
    InvalidArgument,
    /// HTTP status code (HTTP receiver only; gRPC maps it to Unavailable).
    Http(u16),
}

#[derive(Default)]
pub struct Seen {
    pub requests: u64,
    pub spans: u64,
    pub valid: u64,
    pub invalid: u64,
    /// `<trace_hex> <span_hex>` of valid spans, to compare with the ledger.
    pub ids: HashSet<String>,
    pub headers: Vec<(String, String)>,
    pub gzip_requests: u64,
}

pub struct Receiver {
    pub seen: Mutex<Seen>,
    pub fail_first: AtomicU64,
    pub failure: Failure,
    pub reject_invalid: bool,
    /// Keep ids (costs memory/CPU; off for throughput runs).
    pub keep_ids: bool,
    pub retry_after_secs: u64,
}

impl Receiver {
    pub fn new(keep_ids: bool) -> Arc<Self> {
        Arc::new(Receiver {
            seen: Mutex::new(Seen::default()),
            fail_first: AtomicU64::new(0),
            failure: Failure::Unavailable,
            reject_invalid: true,
            keep_ids,
            retry_after_secs: 0,
        })
    }

    pub fn failing(keep_ids: bool, n: u64, failure: Failure, retry_after_secs: u64) -> Arc<Self> {
        Arc::new(Receiver {
            seen: Mutex::new(Seen::default()),
            fail_first: AtomicU64::new(n),
            failure,
            reject_invalid: true,
            keep_ids,
            retry_after_secs,
        })
    }

    /// Consumes one injected failure if any are left.
    fn take_failure(&self) -> Option<Failure> {
        self.fail_first
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .ok()
            .map(|_| self.failure)
    }

    /// Counts a request; returns how many spans it rejects.
    fn ingest(
        &self,
        req: &ExportTraceServiceRequest,
        headers: Vec<(String, String)>,
        gzip: bool,
    ) -> i64 {
        let mut seen = match self.seen.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        seen.requests += 1;
        seen.gzip_requests += u64::from(gzip);
        if seen.headers.is_empty() {
            seen.headers = headers;
        }
        let mut rejected = 0;
        for span in req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            seen.spans += 1;
            let valid = span.trace_id.len() == 16
                && span.trace_id.iter().any(|b| *b != 0)
                && span.span_id.len() == 8
                && span.span_id.iter().any(|b| *b != 0);
            if valid {
                seen.valid += 1;
                if self.keep_ids {
                    seen.ids
                        .insert(format!("{} {}", hex(&span.trace_id), hex(&span.span_id)));
                }
            } else {
                seen.invalid += 1;
                rejected += 1;
            }
        }
        if self.reject_invalid { rejected } else { 0 }
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn response(rejected: i64) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: rejected,
            error_message: format!("{rejected} spans with invalid ids"),
        }),
    }
}

struct Svc(Arc<Receiver>);

#[tonic::async_trait]
impl TraceService for Svc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if let Some(f) = self.0.take_failure() {
            return Err(match f {
                Failure::ResourceExhausted => tonic::Status::resource_exhausted("queue full"),
                Failure::ResourceExhaustedRetryInfo => tonic::Status::with_details(
                    tonic::Code::ResourceExhausted,
                    "queue full, retry later",
                    idtrail::workload::export::retry_info_details(Duration::from_millis(300))
                        .into(),
                ),
                Failure::InvalidArgument => tonic::Status::invalid_argument("bad request"),
                Failure::Unavailable | Failure::Http(_) => tonic::Status::unavailable("restarting"),
            });
        }
        let headers = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().unwrap_or_default().to_string()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        let gzip = request
            .metadata()
            .get("grpc-encoding")
            .is_some_and(|v| v.to_str().is_ok_and(|s| s == "gzip"));
        let rejected = self.0.ingest(request.get_ref(), headers, gzip);
        Ok(tonic::Response::new(response(rejected)))
    }
}

/// Serves OTLP/gRPC on `listener` until the task is aborted.
pub async fn serve_grpc(listener: TcpListener, recv: Arc<Receiver>) -> anyhow::Result<()> {
    let svc = TraceServiceServer::new(Svc(recv))
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(64 << 20);
    // Single service, so no router (tonic's `router` feature is off).
    // Large windows: 0.5 MB requests would otherwise stall on h2's 64 KB default.
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .serve_with_incoming(svc, tonic::transport::server::TcpIncoming::from(listener))
        .await?;
    Ok(())
}

/// Serves OTLP/HTTP (protobuf, HTTP/1.1 keep-alive) on `listener`.
pub async fn serve_http(listener: TcpListener, recv: Arc<Receiver>) -> anyhow::Result<()> {
    loop {
        let (sock, _) = listener.accept().await?;
        sock.set_nodelay(true)?;
        let recv = Arc::clone(&recv);
        tokio::spawn(async move {
            let _ = http_conn(sock, recv).await;
        });
    }
}

async fn http_conn(mut sock: TcpStream, recv: Arc<Receiver>) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        // Read until the end of the header block.
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 64 * 1024];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);

        let (status, extra, out) = if !request_line.starts_with("POST /v1/traces ") {
            (404, String::new(), Vec::new())
        } else if let Some(f) = recv.take_failure() {
            let code = match f {
                Failure::Http(c) => c,
                Failure::InvalidArgument => 400,
                _ => 503,
            };
            let extra = if recv.retry_after_secs > 0 {
                format!("Retry-After: {}\r\n", recv.retry_after_secs)
            } else {
                String::new()
            };
            (code, extra, b"try later".to_vec())
        } else {
            let gzip = header("content-encoding").is_some_and(|v| v == "gzip");
            let raw = if gzip {
                let mut d = flate2::read::GzDecoder::new(body.as_slice());
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut d, &mut out)?;
                out
            } else {
                body
            };
            match ExportTraceServiceRequest::decode(raw.as_slice()) {
                Ok(req) => {
                    let ok_ct =
                        header("content-type").is_some_and(|v| v == "application/x-protobuf");
                    if ok_ct {
                        let rejected = recv.ingest(&req, headers.clone(), gzip);
                        (200, String::new(), response(rejected).encode_to_vec())
                    } else {
                        (415, String::new(), Vec::new())
                    }
                }
                Err(_) => (400, String::new(), Vec::new()),
            }
        };
        let mut reply = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n{extra}\r\n",
            out.len()
        )
        .into_bytes();
        reply.extend_from_slice(&out);
        sock.write_all(&reply).await?;
    }
}

/// Binds 127.0.0.1 on an ephemeral port.
pub async fn listener() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    Ok((l, addr))
}
