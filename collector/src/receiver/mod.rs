//! OTLP receivers. Both protocols decode into the same request type and go through
//! [`Ingest::export`]: the one path from a decoded request to an acknowledgement.

pub mod admission;
pub mod grpc;
pub mod http;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use crate::auth::BearerKeys;
use crate::error::{Error, Result};
use crate::extract::Extractor;
use crate::listener::Peer;
use crate::telemetry::Telemetry;
use crate::wal::Wal;
use admission::Admission;

/// Shared state of the receivers.
pub struct Ingest {
    extractor: Extractor,
    /// Set once the WAL is replayed; the receivers serve health and readiness before that.
    wal: OnceLock<Wal>,
    telemetry: Arc<Telemetry>,
    ready: AtomicBool,
    inflight_bytes: AtomicUsize,
    max_inflight_bytes: usize,
    ack_timeout: Duration,
    /// `receivers.auth_keys_file`, when ingest requires a key.
    auth: Option<BearerKeys>,
    /// Memory and WAL limits, checked before anything else of a request is done.
    admission: Arc<Admission>,
    pub max_request_bytes: usize,
}

/// Releases a request's share of the in-flight budget when it finishes, however it finishes.
struct InflightGuard<'a> {
    ingest: &'a Ingest,
    bytes: usize,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.ingest
            .inflight_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
        self.ingest
            .telemetry
            .add_inflight_bytes(-(self.bytes as i64));
    }
}

impl Ingest {
    pub fn new(
        extractor: Extractor,
        telemetry: Arc<Telemetry>,
        max_request_bytes: usize,
        max_inflight_bytes: usize,
        ack_timeout: Duration,
        auth: Option<BearerKeys>,
        admission: Arc<Admission>,
    ) -> Ingest {
        Ingest {
            extractor,
            wal: OnceLock::new(),
            telemetry,
            ready: AtomicBool::new(false),
            inflight_bytes: AtomicUsize::new(0),
            max_inflight_bytes,
            ack_timeout,
            auth,
            admission,
            max_request_bytes,
        }
    }

    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Starts accepting exports into `wal` (replayed).
    pub fn open(&self, wal: Wal) {
        if self.wal.set(wal).is_err() {
            tracing::error!("the WAL was opened twice; keeping the first");
        }
        self.set_ready(true);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Stops accepting exports and lets queued WAL appends finish.
    pub fn close(&self) {
        self.set_ready(false);
        if let Some(wal) = self.wal.get() {
            wal.close();
        }
    }

    /// The request's principal: `mtls:<identity>` from a verified client certificate and
    /// `key:<id>` from its `Authorization` header, each when this listener requires it (both
    /// joined by `;`), nothing when neither is required; refused when a required one is
    /// missing. Called before the body is read, so a refused client costs nothing more.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        peer: Option<&Peer>,
    ) -> Result<Option<String>> {
        let certificate = peer.map(Peer::principal).transpose()?.flatten();
        let key = match &self.auth {
            None => None,
            Some(keys) => Some(
                keys.check(authorization)
                    .map(|id| format!("key:{id}"))
                    .ok_or_else(|| {
                        Error::Unauthenticated(
                        "send Authorization: Bearer <key> with a key from receivers.auth_keys_file"
                            .into(),
                    )
                    })?,
            ),
        };
        Ok(match (certificate, key) {
            (Some(certificate), Some(key)) => Some(format!("{certificate};{key}")),
            (certificate, key) => certificate.or(key),
        })
    }

    /// Refuses new exports, as retryable, while the collector is not ready or is over a
    /// memory or WAL limit. Cheap: the HTTP receiver calls it before reading the body.
    pub fn admit(&self) -> Result<&Wal> {
        let wal = match self.wal.get() {
            Some(wal) if self.is_ready() => wal,
            _ => return Err(Error::NotReady),
        };
        self.admission.check()?;
        Ok(wal)
    }

    fn reserve(&self, bytes: usize) -> Result<InflightGuard<'_>> {
        let previous = self.inflight_bytes.fetch_add(bytes, Ordering::AcqRel);
        let guard = InflightGuard {
            ingest: self,
            bytes,
        };
        self.telemetry.add_inflight_bytes(bytes as i64);
        // One request is always let through, however large, so progress never stops.
        if previous > 0 && previous + bytes > self.max_inflight_bytes {
            return Err(Error::Overloaded(format!(
                "{previous} bytes already in flight (limit {})",
                self.max_inflight_bytes
            )));
        }
        Ok(guard)
    }

    /// Validates, scrubs and extracts the request, makes it durable, and answers with the
    /// partial success of any invalid spans. Nothing is acknowledged unless it is in the WAL.
    pub async fn export(
        &self,
        protocol: &'static str,
        request: ExportTraceServiceRequest,
        decoded_bytes: usize,
        principal: Option<String>,
    ) -> Result<ExportTraceServiceResponse> {
        let wal = self.admit()?;
        let _guard = self.reserve(decoded_bytes)?;
        self.telemetry.request_received(protocol, decoded_bytes);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let extracted = self.extractor.extract(request, principal, now);
        let rejected = extracted.rejected_count();
        self.telemetry
            .spans_received(extracted.batch.spans.len() + rejected);
        let rejection_message = extracted.rejection_message();
        for (reason, n) in &extracted.rejected {
            self.telemetry.spans_rejected(*n, reason);
        }
        let accepted = extracted.batch.spans.len();
        if accepted > 0 {
            tokio::time::timeout(self.ack_timeout, wal.append(extracted.batch))
                .await
                .map_err(|_| {
                    Error::Overloaded(format!(
                        "spans not durable within {:?}; the writer is behind",
                        self.ack_timeout
                    ))
                })??;
        }
        self.telemetry.spans_accepted(accepted);
        self.telemetry.request_finished(protocol, "ok");
        Ok(ExportTraceServiceResponse {
            partial_success: rejection_message.map(|message| ExportTracePartialSuccess {
                rejected_spans: rejected as i64,
                error_message: message,
            }),
        })
    }
}
