//! Self-telemetry as named events: each method logs the event and counts it, so `/metrics` and
//! the log always tell the same story. Exposed as Prometheus text on the HTTP port.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::stitch::EarlyStitch;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub protocol: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: &'static str,
}

/// All of the collector's metrics, registered once.
pub struct Telemetry {
    registry: Registry,
    requests: Family<OutcomeLabel, Counter>,
    request_bytes: Family<ProtocolLabel, Counter>,
    spans_received: Counter,
    spans_accepted: Counter,
    spans_rejected: Counter,
    spans_duplicate: Counter,
    secrets_fingerprinted: Family<KindLabel, Counter>,
    wal_fsync_seconds: Histogram,
    wal_bytes: Counter,
    wal_write_errors: Counter,
    wal_replayed_spans: Counter,
    wal_torn_bytes: Counter,
    wal_torn_records: Counter,
    flush_seconds: Histogram,
    files_written: Family<TableLabel, Counter>,
    rows_written: Family<TableLabel, Counter>,
    file_bytes_written: Family<TableLabel, Counter>,
    buffered_spans: Gauge,
    inflight_bytes: Gauge,
    traces_stitched: Counter,
    traces_stitched_early: Family<ReasonLabel, Counter>,
    stitch_buffer_shed_bytes: Counter,
    late_spans: Counter,
    chains_stitched: Family<RevisionLabel, Counter>,
    stitch_buffer_spans: Gauge,
    stitch_buffer_bytes: Gauge,
    span_limit_cuts: Family<KindLabel, Counter>,
    resident_bytes: Gauge,
    allocated_bytes: Gauge,
    wal_size_bytes: Gauge,
    memory_hard_limit_reached: Counter,
    compaction_files_merged: Counter,
    compaction_files_written: Counter,
    compaction_failures: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabel {
    /// `first` for revision 1, `later` for revisions written because a late span changed a chain.
    pub revision: &'static str,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let mut registry = Registry::with_prefix("idtrail");
        let latency = || Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let t = Telemetry {
            requests: Family::default(),
            request_bytes: Family::default(),
            spans_received: Counter::default(),
            spans_accepted: Counter::default(),
            spans_rejected: Counter::default(),
            spans_duplicate: Counter::default(),
            secrets_fingerprinted: Family::default(),
            wal_fsync_seconds: latency(),
            wal_bytes: Counter::default(),
            wal_write_errors: Counter::default(),
            wal_replayed_spans: Counter::default(),
            wal_torn_bytes: Counter::default(),
            wal_torn_records: Counter::default(),
            flush_seconds: latency(),
            files_written: Family::default(),
            rows_written: Family::default(),
            file_bytes_written: Family::default(),
            buffered_spans: Gauge::default(),
            inflight_bytes: Gauge::default(),
            traces_stitched: Counter::default(),
            traces_stitched_early: Family::default(),
            stitch_buffer_shed_bytes: Counter::default(),
            late_spans: Counter::default(),
            chains_stitched: Family::default(),
            stitch_buffer_spans: Gauge::default(),
            stitch_buffer_bytes: Gauge::default(),
            span_limit_cuts: Family::default(),
            resident_bytes: Gauge::default(),
            allocated_bytes: Gauge::default(),
            wal_size_bytes: Gauge::default(),
            memory_hard_limit_reached: Counter::default(),
            compaction_files_merged: Counter::default(),
            compaction_files_written: Counter::default(),
            compaction_failures: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "export_requests",
            "Export requests by protocol and outcome",
            t.requests.clone(),
        );
        registry.register(
            "received_bytes",
            "Request body bytes received, after decompression",
            t.request_bytes.clone(),
        );
        registry.register(
            "spans_received",
            "Spans received in decodable requests",
            t.spans_received.clone(),
        );
        registry.register(
            "spans_accepted",
            "Spans acknowledged (durable in the WAL)",
            t.spans_accepted.clone(),
        );
        registry.register(
            "spans_rejected",
            "Invalid spans rejected through partial_success",
            t.spans_rejected.clone(),
        );
        registry.register(
            "spans_duplicate",
            "Spans dropped as retried duplicates of a stored (trace_id, span_id)",
            t.spans_duplicate.clone(),
        );
        registry.register(
            "secrets_fingerprinted",
            "Secret values replaced by keyed fingerprints, by credential kind",
            t.secrets_fingerprinted.clone(),
        );
        registry.register(
            "wal_fsync_seconds",
            "Duration of one WAL group commit (write + fdatasync)",
            t.wal_fsync_seconds.clone(),
        );
        registry.register(
            "wal_written_bytes",
            "Bytes appended to the WAL",
            t.wal_bytes.clone(),
        );
        registry.register(
            "wal_write_errors",
            "WAL writes or fsyncs that failed (requests refused as UNAVAILABLE)",
            t.wal_write_errors.clone(),
        );
        registry.register(
            "wal_replayed_spans",
            "Spans replayed from the WAL at startup",
            t.wal_replayed_spans.clone(),
        );
        registry.register(
            "wal_torn_bytes",
            "Bytes cut from torn or corrupt WAL tails at startup",
            t.wal_torn_bytes.clone(),
        );
        registry.register(
            "wal_torn_records",
            "Torn or corrupt WAL tails cut at startup",
            t.wal_torn_records.clone(),
        );
        registry.register(
            "flush_seconds",
            "Duration of one Parquet flush (encode, fsync, publish)",
            t.flush_seconds.clone(),
        );
        registry.register(
            "files_written",
            "Parquet files published, by table",
            t.files_written.clone(),
        );
        registry.register(
            "rows_written",
            "Rows written to published Parquet files, by table",
            t.rows_written.clone(),
        );
        registry.register(
            "file_written_bytes",
            "Bytes of published Parquet files, by table",
            t.file_bytes_written.clone(),
        );
        registry.register(
            "buffered_spans",
            "Spans acknowledged but not yet in a published Parquet file",
            t.buffered_spans.clone(),
        );
        registry.register(
            "inflight_bytes",
            "Decoded request bytes currently being processed",
            t.inflight_bytes.clone(),
        );
        registry.register(
            "traces_stitched",
            "Traces stitched into chains and edges (re-stitches after late spans included)",
            t.traces_stitched.clone(),
        );
        registry.register(
            "traces_stitched_early",
            "Traces stitched before their quiet window ended: the buffer was full (buffer_full) or memory neared the soft limit (memory_pressure)",
            t.traces_stitched_early.clone(),
        );
        registry.register(
            "stitch_buffer_shed_bytes",
            "Estimated bytes the stitch buffer gave back because memory in use neared receivers.memory_soft_limit_bytes",
            t.stitch_buffer_shed_bytes.clone(),
        );
        registry.register(
            "late_spans",
            "Spans that re-opened a trace already stitched",
            t.late_spans.clone(),
        );
        registry.register(
            "chains_stitched",
            "Chain rows written, first revisions and later ones",
            t.chains_stitched.clone(),
        );
        registry.register(
            "stitch_buffer_spans",
            "Spans held in open (not yet stitched) traces",
            t.stitch_buffer_spans.clone(),
        );
        registry.register(
            "stitch_buffer_bytes",
            "Estimated bytes of open and retained traces in the stitch buffer",
            t.stitch_buffer_bytes.clone(),
        );
        registry.register(
            "span_limit_cuts",
            "Attributes and links dropped and values truncated by span_limits, by kind",
            t.span_limit_cuts.clone(),
        );
        registry.register(
            "resident_memory_bytes",
            "Anonymous resident memory (heap, stacks) of the process, as admission control last sampled it",
            t.resident_bytes.clone(),
        );
        registry.register(
            "allocated_memory_bytes",
            "Bytes the allocator has handed out (what the memory soft limit compares)",
            t.allocated_bytes.clone(),
        );
        registry.register(
            "wal_size_bytes",
            "Bytes in write-ahead log segments (written, not yet published and deleted)",
            t.wal_size_bytes.clone(),
        );
        registry.register(
            "memory_hard_limit_reached",
            "Times resident memory passed receivers.memory_hard_limit_bytes and forced a publication",
            t.memory_hard_limit_reached.clone(),
        );
        registry.register(
            "compaction_files_merged",
            "Files removed by compaction: merged into a larger file, or left covered by a crash",
            t.compaction_files_merged.clone(),
        );
        registry.register(
            "compaction_files_written",
            "Compacted files written",
            t.compaction_files_written.clone(),
        );
        registry.register(
            "compaction_failures",
            "Compaction passes that failed (the files not yet replaced are kept)",
            t.compaction_failures.clone(),
        );
        Telemetry { registry, ..t }
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn request_received(&self, protocol: &'static str, bytes: usize) {
        self.request_bytes
            .get_or_create(&ProtocolLabel { protocol })
            .inc_by(bytes as u64);
    }

    pub fn request_finished(&self, protocol: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&OutcomeLabel { protocol, outcome })
            .inc();
    }

    pub fn request_refused(&self, protocol: &'static str, error: &crate::Error) {
        // Retryable refusals come by the thousand under overload: counted, logged at debug only
        // (the limits log their own crossing).
        let outcome = if error.is_retryable() {
            tracing::debug!(protocol, %error, "export request refused; the client will retry");
            "retryable_error"
        } else {
            tracing::warn!(protocol, %error, "export request refused");
            "rejected"
        };
        self.request_finished(protocol, outcome);
    }

    pub fn spans_received(&self, n: usize) {
        self.spans_received.inc_by(n as u64);
    }

    pub fn spans_accepted(&self, n: usize) {
        self.spans_accepted.inc_by(n as u64);
    }

    pub fn spans_rejected(&self, n: usize, reason: &str) {
        if n > 0 {
            tracing::debug!(count = n, reason, "invalid spans rejected");
            self.spans_rejected.inc_by(n as u64);
        }
    }

    pub fn spans_duplicate(&self, n: usize) {
        if n > 0 {
            tracing::debug!(count = n, "retried duplicate spans dropped");
            self.spans_duplicate.inc_by(n as u64);
        }
    }

    pub fn secret_fingerprinted(&self, kind: &'static str) {
        self.secrets_fingerprinted
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    pub fn wal_committed(&self, bytes: usize, took: Duration) {
        self.wal_bytes.inc_by(bytes as u64);
        self.wal_fsync_seconds.observe(took.as_secs_f64());
    }

    pub fn wal_write_failed(&self, error: &std::io::Error) {
        tracing::error!(%error, "WAL write failed; refusing exports until it recovers");
        self.wal_write_errors.inc();
    }

    pub fn wal_replayed(&self, spans: usize) {
        self.wal_replayed_spans.inc_by(spans as u64);
    }

    pub fn wal_tail_cut(&self, segment: &std::path::Path, offset: u64, bytes: u64) {
        tracing::warn!(
            segment = %segment.display(),
            offset,
            bytes,
            "cut torn or corrupt WAL tail at the last valid record"
        );
        self.wal_torn_records.inc();
        self.wal_torn_bytes.inc_by(bytes);
    }

    pub fn flush_finished(&self, took: Duration) {
        self.flush_seconds.observe(took.as_secs_f64());
    }

    pub fn file_published(&self, table: &'static str, path: &str, rows: usize, bytes: usize) {
        tracing::debug!(table, path, rows, bytes, "published parquet file");
        let label = TableLabel { table };
        self.files_written.get_or_create(&label).inc();
        self.rows_written.get_or_create(&label).inc_by(rows as u64);
        self.file_bytes_written
            .get_or_create(&label)
            .inc_by(bytes as u64);
    }

    pub fn compaction_finished(&self, summary: &crate::compact::Summary) {
        if summary.files_merged > 0 || summary.leftovers_deleted > 0 {
            tracing::info!(
                partitions = summary.partitions,
                files_merged = summary.files_merged,
                files_written = summary.files_written,
                rows = summary.rows,
                leftovers_deleted = summary.leftovers_deleted,
                seconds = summary.seconds,
                "compacted closed hours"
            );
        }
        self.compaction_files_merged
            .inc_by((summary.files_merged + summary.leftovers_deleted) as u64);
        self.compaction_files_written
            .inc_by(summary.files_written as u64);
    }

    pub fn compaction_failed(&self, error: &crate::Error) {
        tracing::warn!(%error, "a compaction pass failed; the files it had not replaced are kept");
        self.compaction_failures.inc();
    }

    pub fn set_buffered_spans(&self, n: usize) {
        self.buffered_spans.set(n as i64);
    }

    /// `n` attributes or links dropped, or values truncated (`kind`), by the span limits.
    pub fn span_limit_cut(&self, kind: &'static str, n: usize) {
        if n > 0 {
            tracing::debug!(kind, n, "span limits applied");
            self.span_limit_cuts
                .get_or_create(&KindLabel { kind })
                .inc_by(n as u64);
        }
    }

    pub fn set_resource_usage(&self, resident_bytes: u64, allocated_bytes: u64, wal_bytes: u64) {
        self.resident_bytes.set(resident_bytes as i64);
        self.allocated_bytes.set(allocated_bytes as i64);
        self.wal_size_bytes.set(wal_bytes as i64);
    }

    /// A limit of admission control passed (`over`) or fallen back under.
    pub fn limit_crossed(&self, limit: &'static str, over: bool, value: u64, max: u64) {
        if over {
            tracing::warn!(
                limit,
                value,
                max,
                "over the limit: refusing exports until under it"
            );
        } else {
            tracing::info!(
                limit,
                value,
                max,
                "under the limit again: accepting exports"
            );
        }
    }

    pub fn memory_hard_limit_reached(&self, resident_bytes: u64, limit: u64) {
        tracing::warn!(
            resident_bytes,
            limit,
            "resident memory over receivers.memory_hard_limit_bytes: publishing buffered spans and trimming the heap"
        );
        self.memory_hard_limit_reached.inc();
    }

    pub fn add_inflight_bytes(&self, delta: i64) {
        self.inflight_bytes.inc_by(delta);
    }

    pub fn trace_stitched(&self) {
        self.traces_stitched.inc();
    }

    pub fn trace_stitched_early(&self, why: EarlyStitch) {
        tracing::debug!(
            reason = why.label(),
            "stitching the oldest trace before its quiet window"
        );
        self.traces_stitched_early
            .get_or_create(&ReasonLabel {
                reason: why.label(),
            })
            .inc();
    }

    /// The stitch buffer gave memory back because memory in use neared the soft limit.
    pub fn stitch_buffer_shed(&self, asked_bytes: usize, freed_bytes: usize) {
        tracing::debug!(
            asked_bytes,
            freed_bytes,
            "memory near receivers.memory_soft_limit_bytes: the stitch buffer gave memory back"
        );
        self.stitch_buffer_shed_bytes.inc_by(freed_bytes as u64);
    }

    pub fn late_span(&self) {
        tracing::debug!("late span re-opened a stitched trace");
        self.late_spans.inc();
    }

    pub fn chain_stitched(&self, revision: u32) {
        let revision = if revision == 1 { "first" } else { "later" };
        self.chains_stitched
            .get_or_create(&RevisionLabel { revision })
            .inc();
    }

    pub fn set_stitch_buffer(&self, spans: usize, bytes: usize) {
        self.stitch_buffer_spans.set(spans as i64);
        self.stitch_buffer_bytes.set(bytes as i64);
    }
}
