//! Senders: OTLP/gRPC and OTLP/HTTP (protobuf) export with retry, plus the
//! ledger of acknowledged spans.
//!
//! Requests are encoded once by the generator thread and shipped here as
//! bytes, so a retry re-sends the very same payload without re-encoding or
//! deep-cloning the request. For gRPC that means calling the TraceService
//! `Export` method through `tonic::client::Grpc` with a pass-through codec
//! instead of the generated `TraceServiceClient` (whose `export` takes the
//! message struct); the wire format is identical.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use idtrail_query::error::error_chain;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use prost::bytes::{BufMut as _, Bytes};
use tokio::sync::watch;
use tonic::Code;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic_types::{ErrorDetails, StatusExt};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// Only this many error messages reach stderr; the rest are counted.
const MAX_PRINTED_ERRORS: u64 = 10;

/// Wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Grpc,
    Http,
}

/// Run-wide counters, shared by all sender tasks.
pub struct Stats {
    pub requests: AtomicU64,
    pub spans_sent: AtomicU64,
    pub spans_acked: AtomicU64,
    pub spans_rejected: AtomicU64,
    pub spans_failed: AtomicU64,
    pub retries: AtomicU64,
    pub errors: AtomicU64,
    /// Successful attempts' latency, microseconds.
    pub latency_us: Mutex<Histogram<u64>>,
}

impl Stats {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Stats {
            requests: AtomicU64::new(0),
            spans_sent: AtomicU64::new(0),
            spans_acked: AtomicU64::new(0),
            spans_rejected: AtomicU64::new(0),
            spans_failed: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency_us: Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3)?),
        })
    }

    fn record_latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        if let Ok(mut h) = self.latency_us.lock() {
            h.saturating_record(us);
        }
    }
}

/// Final fate of one export request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server acknowledged; `rejected` comes from partial_success.
    Acked {
        rejected: u64,
    },
    Failed,
}

/// Why an attempt failed and whether to try again.
#[derive(Debug)]
struct AttemptError {
    retryable: bool,
    /// Server-requested delay (Retry-After / RetryInfo).
    delay: Option<Duration>,
    message: String,
}

enum Transport {
    Grpc {
        grpc: tonic::client::Grpc<Channel>,
        metadata: MetadataMap,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: reqwest::header::HeaderMap,
    },
}

/// Sends prepared payloads to one endpoint; cheap to share via `Arc`.
pub struct Exporter {
    transport: Transport,
    timeout: Duration,
    max_retry: Duration,
    gzip: bool,
}

impl Exporter {
    pub fn new(
        protocol: Protocol,
        endpoint: &str,
        headers: &[(String, String)],
        gzip: bool,
        timeout: Duration,
        max_retry: Duration,
    ) -> anyhow::Result<Self> {
        let transport = match protocol {
            Protocol::Grpc => {
                // Lazy connect: a collector that is not up yet (or restarts
                // mid-run, as in the crash test) is handled by the retry loop.
                let channel = Endpoint::from_shared(endpoint.to_string())?
                    .timeout(timeout)
                    .connect_timeout(timeout.min(Duration::from_secs(5)))
                    .tcp_nodelay(true)
                    .connect_lazy();
                let mut grpc = tonic::client::Grpc::new(channel);
                if gzip {
                    grpc = grpc.send_compressed(CompressionEncoding::Gzip);
                }
                grpc = grpc
                    .accept_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Zstd);
                let mut metadata = MetadataMap::new();
                for (k, v) in headers {
                    let key = MetadataKey::from_str(&k.to_ascii_lowercase())
                        .map_err(|e| anyhow::anyhow!("bad header name {k:?}: {e}"))?;
                    let val = MetadataValue::try_from(v.as_str())
                        .map_err(|e| anyhow::anyhow!("bad header value for {k}: {e}"))?;
                    metadata.insert(key, val);
                }
                Transport::Grpc { grpc, metadata }
            }
            Protocol::Http => {
                let mut hm = reqwest::header::HeaderMap::new();
                for (k, v) in headers {
                    hm.insert(
                        reqwest::header::HeaderName::from_str(k)?,
                        reqwest::header::HeaderValue::from_str(v)?,
                    );
                }
                hm.insert(
                    reqwest::header::CONTENT_TYPE,
                    reqwest::header::HeaderValue::from_static("application/x-protobuf"),
                );
                if gzip {
                    hm.insert(
                        reqwest::header::CONTENT_ENCODING,
                        reqwest::header::HeaderValue::from_static("gzip"),
                    );
                }
                let client = reqwest::Client::builder()
                    .timeout(timeout)
                    .connect_timeout(timeout.min(Duration::from_secs(5)))
                    .tcp_nodelay(true)
                    .build()?;
                let base = endpoint.trim_end_matches('/');
                let url = if base.ends_with("/v1/traces") {
                    base.to_string()
                } else {
                    format!("{base}/v1/traces")
                };
                Transport::Http {
                    client,
                    url,
                    headers: hm,
                }
            }
        };
        Ok(Exporter {
            transport,
            timeout,
            max_retry,
            gzip,
        })
    }

    /// Turns an encoded request into what goes on the wire. HTTP bodies are
    /// gzipped here (once, on the generator thread) so retries reuse them;
    /// tonic compresses gRPC messages itself.
    pub fn prepare(&self, encoded: Vec<u8>) -> anyhow::Result<Bytes> {
        match (&self.transport, self.gzip) {
            (Transport::Http { .. }, true) => {
                // Fast level: the point is a realistic Content-Encoding at
                // benchmark speed, not the best ratio.
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(encoded.len() / 4),
                    flate2::Compression::fast(),
                );
                enc.write_all(&encoded)?;
                Ok(Bytes::from(enc.finish()?))
            }
            _ => Ok(Bytes::from(encoded)),
        }
    }

    /// Sends one payload, retrying transient failures with exponential
    /// backoff until `max_retry` has passed or `cancel` flips to true.
    pub async fn export(
        &self,
        payload: &Bytes,
        stats: &Stats,
        cancel: &mut watch::Receiver<bool>,
    ) -> Outcome {
        let deadline = Instant::now() + self.max_retry;
        let mut backoff = BACKOFF_START;
        loop {
            let started = Instant::now();
            let result = match &self.transport {
                Transport::Grpc { grpc, metadata } => {
                    self.grpc_attempt(grpc.clone(), metadata, payload).await
                }
                Transport::Http {
                    client,
                    url,
                    headers,
                } => http_attempt(client, url, headers, payload).await,
            };
            let err = match result {
                Ok(rejected) => {
                    stats.record_latency(started.elapsed());
                    return Outcome::Acked { rejected };
                }
                Err(e) => e,
            };
            let n = stats.errors.fetch_add(1, Relaxed) + 1;
            tracing::debug!(
                retryable = err.retryable,
                "export attempt failed: {}",
                err.message
            );
            if n <= MAX_PRINTED_ERRORS {
                eprintln!(
                    "gen: export error ({}): {}",
                    if err.retryable {
                        "will retry"
                    } else {
                        "permanent"
                    },
                    err.message
                );
            }
            if !err.retryable || *cancel.borrow() {
                return Outcome::Failed;
            }
            let wait = err.delay.unwrap_or(backoff);
            backoff = (backoff * 2).min(BACKOFF_CAP);
            if Instant::now() + wait > deadline {
                return Outcome::Failed;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.changed() => return Outcome::Failed,
            }
            stats.retries.fetch_add(1, Relaxed);
        }
    }

    async fn grpc_attempt(
        &self,
        mut grpc: tonic::client::Grpc<Channel>,
        metadata: &MetadataMap,
        payload: &Bytes,
    ) -> Result<u64, AttemptError> {
        grpc.ready().await.map_err(|e| AttemptError {
            retryable: true,
            delay: None,
            message: format!("channel not ready: {e}"),
        })?;
        let mut req = tonic::Request::new(payload.clone());
        *req.metadata_mut() = metadata.clone();
        req.set_timeout(self.timeout);
        let path = PathAndQuery::from_static(EXPORT_PATH);
        match grpc.unary(req, path, PassThroughCodec).await {
            Ok(resp) => Ok(rejected(resp.get_ref())),
            Err(status) => Err(classify_status(&status)),
        }
    }
}

/// OTLP/gRPC retry policy: the spec's retryable codes, RESOURCE_EXHAUSTED
/// only when the server sent RetryInfo (otherwise it is a hard limit).
fn classify_status(status: &tonic::Status) -> AttemptError {
    let delay = retry_info_delay(status);
    let retryable = match status.code() {
        Code::Unavailable
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::DataLoss => true,
        Code::ResourceExhausted => delay.is_some(),
        // tonic reports a connection that died mid-call (collector crash) as
        // Unknown with the transport error attached; a server-sent Unknown
        // has no source. The former is a connection error: retry it.
        Code::Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    };
    AttemptError {
        retryable,
        delay,
        message: match std::error::Error::source(status) {
            Some(src) => format!(
                "grpc {:?}: {}: {}",
                status.code(),
                status.message(),
                error_chain(src)
            ),
            None => format!("grpc {:?}: {}", status.code(), status.message()),
        },
    }
}

async fn http_attempt(
    client: &reqwest::Client,
    url: &str,
    headers: &reqwest::header::HeaderMap,
    payload: &Bytes,
) -> Result<u64, AttemptError> {
    let resp = client
        .post(url)
        .headers(headers.clone())
        .body(payload.clone())
        .send()
        .await
        .map_err(|e| AttemptError {
            // Connection refused/reset, timeouts: all transient.
            retryable: !e.is_builder(),
            delay: None,
            message: format!("http: {}", error_chain(&e)),
        })?;
    let status = resp.status();
    if status.is_success() {
        let body = resp.bytes().await.map_err(|e| AttemptError {
            retryable: true,
            delay: None,
            message: format!("http: reading response: {e}"),
        })?;
        // An undecodable body still means the server took the data.
        let parsed = ExportTraceServiceResponse::decode(body).unwrap_or_default();
        return Ok(rejected(&parsed));
    }
    let delay = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let retryable = matches!(status.as_u16(), 429 | 502 | 503 | 504);
    let text = resp.text().await.unwrap_or_default();
    Err(AttemptError {
        retryable,
        delay,
        message: format!(
            "http {status}: {}",
            text.chars().take(200).collect::<String>()
        ),
    })
}

fn rejected(resp: &ExportTraceServiceResponse) -> u64 {
    resp.partial_success
        .as_ref()
        .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
}

// -- RetryInfo ----------------------------------------------------------------

/// The delay a RetryInfo in the status details asks for, if any.
fn retry_info_delay(status: &tonic::Status) -> Option<Duration> {
    status.get_details_retry_info()?.retry_delay
}

/// grpc-status-details-bin bytes carrying a RetryInfo (test servers).
pub fn retry_info_details(delay: Duration) -> Vec<u8> {
    tonic::Status::with_error_details(
        Code::ResourceExhausted,
        "",
        ErrorDetails::with_retry_info(Some(delay)),
    )
    .details()
    .to_vec()
}

// -- pass-through codec -------------------------------------------------------

/// Writes an already-encoded ExportTraceServiceRequest as the gRPC message
/// and decodes the response with prost.
#[derive(Debug, Clone, Copy, Default)]
struct PassThroughCodec;

#[derive(Debug, Clone, Copy, Default)]
struct PassThroughEncoder;

#[derive(Debug, Clone, Copy, Default)]
struct ResponseDecoder;

impl Codec for PassThroughCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = PassThroughEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        PassThroughEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ResponseDecoder
    }
}

impl Encoder for PassThroughEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| {
                tonic::Status::internal(format!("decoding ExportTraceServiceResponse: {e}"))
            })
    }
}

// -- ledger -------------------------------------------------------------------

/// Append-only record of acknowledged valid spans. Written and flushed per
/// ack so a killed generator leaves an exact account for the crash test.
pub struct Ledger {
    file: Mutex<File>,
}

impl Ledger {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Ledger {
            file: Mutex::new(file),
        })
    }

    pub fn append(&self, lines: &str) -> anyhow::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut f = self
            .file
            .lock()
            .map_err(|_| anyhow::anyhow!("ledger lock poisoned"))?;
        // One write of whole lines: a kill can only cut the last request.
        f.write_all(lines.as_bytes())?;
        f.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_info_round_trips() {
        let bytes = retry_info_details(Duration::from_millis(1500));
        let status = tonic::Status::with_details(Code::Unavailable, "", bytes.into());
        assert_eq!(retry_info_delay(&status), Some(Duration::from_millis(1500)));
        assert_eq!(retry_info_delay(&tonic::Status::unavailable("x")), None);
    }

    #[test]
    fn resource_exhausted_needs_retry_info() {
        let plain = tonic::Status::resource_exhausted("full");
        assert!(!classify_status(&plain).retryable);
        let with = tonic::Status::with_details(
            Code::ResourceExhausted,
            "full",
            retry_info_details(Duration::from_millis(200)).into(),
        );
        let e = classify_status(&with);
        assert!(e.retryable);
        assert_eq!(e.delay, Some(Duration::from_millis(200)));
        assert!(!classify_status(&tonic::Status::invalid_argument("bad")).retryable);
        assert!(classify_status(&tonic::Status::unavailable("down")).retryable);
        assert!(!classify_status(&tonic::Status::unknown("server said so")).retryable);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let broken = tonic::Status::from_error(Box::new(io));
        assert!(classify_status(&broken).retryable, "{broken:?}");
    }
}
