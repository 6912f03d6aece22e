//! The Parquet writer: buffers durable spans per hour partition and publishes them as files.
//!
//! The intake thread (here) receives batches in WAL order, drops retried duplicates and buffers
//! the rest; a flush hands the whole buffer to the publisher thread (`publisher.rs`) and starts
//! the next. The publisher writes one file per partition, each recording in its footer the WAL
//! position it covers (`idtrail.wal_end`), and only then checkpoints the WAL; a failed flush is
//! retried, never dropped. The footer makes replay exactly-once: after a crash between
//! publishing and checkpointing, replayed records at or before a partition's published position
//! are already in its files and are skipped.

pub mod dedup;
pub mod publisher;
pub mod sink;
pub mod spans_batch;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::{Array, RecordBatch, StringArray};
use idtrail_schemas::layout::{HOUR_NANOS, Partition};
use idtrail_schemas::{chains, edges, spans};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::ParquetMetaDataReader;
use tokio::sync::oneshot;

use crate::config::{DedupConfig, StitcherConfig, WriterConfig};
use crate::error::{Error, Result};
use crate::record::SpanBatch;
use crate::stitch::{PublishedCheck, TraceBuffer};
use crate::telemetry::Telemetry;
use crate::wal::WalPosition;
use dedup::Dedup;
use publisher::{PublishJob, Publisher};
use sink::TableSink;

/// Footer key holding the WAL position a file's rows reach.
pub const WAL_END_KEY: &str = "idtrail.wal_end";
/// Footer key of chains and edges files: every trace whose last span is at or before this WAL
/// position is in this file or an earlier one of its partition.
pub const STITCHED_THROUGH_KEY: &str = "idtrail.stitched_through";
/// Footer key naming the collector that wrote a file.
pub const WRITER_ID_KEY: &str = "idtrail.writer_id";

enum Message {
    Durable {
        batch: SpanBatch,
        position: WalPosition,
        replayed: bool,
    },
    Flush(oneshot::Sender<Result<()>>),
    /// Look at the shed request now: the writer may be idle, waiting for a deadline.
    Wake,
}

/// Sends durable batches to the writer thread. Cloneable; the thread stops when all are gone.
#[derive(Clone)]
pub struct WriterHandle {
    tx: SyncSender<Message>,
    /// Bytes the stitch buffer is asked to give back; 0 when nothing is asked.
    shed_request: Arc<AtomicUsize>,
}

impl WriterHandle {
    /// Hands over a durable batch. Blocks when the writer is far behind, which slows the WAL
    /// and, through it, acknowledgements: backpressure instead of unbounded memory.
    pub fn durable(&self, batch: SpanBatch, position: WalPosition, replayed: bool) {
        let sent = self.tx.send(Message::Durable {
            batch,
            position,
            replayed,
        });
        if sent.is_err() {
            tracing::error!("parquet writer is gone; durable spans stay in the WAL until restart");
        }
    }

    /// Publishes everything buffered now (shutdown, tests).
    pub async fn flush(&self) -> Result<()> {
        let (reply, done) = oneshot::channel();
        // The queue may be full: wait for a slot off the async runtime's threads.
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || tx.send(Message::Flush(reply)))
            .await
            .map_err(|_| Error::ShuttingDown)?
            .map_err(|_| Error::ShuttingDown)?;
        done.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Asks the stitch buffer to give back about `bytes` because memory in use nears the soft
    /// limit. Never blocks: a newer request replaces one not yet taken (it is measured later),
    /// and a wake-up is queued only when none is pending, so a writer busy with batches (which
    /// takes the request after each) is not handed a pile of them.
    pub fn shed_stitch_buffer(&self, bytes: usize) {
        if bytes > 0 && self.shed_request.swap(bytes, Ordering::AcqRel) == 0 {
            let _ = self.tx.try_send(Message::Wake);
        }
    }
}

/// Spans of one hour partition waiting to be published, as the columns of the batches they came
/// in: a flush sorts them into the file's order and encodes them.
#[derive(Default)]
pub struct PartitionBuffer {
    batches: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
}

/// Where flushes go: published inline (before `spawn`, and in tests) or handed to the
/// publisher thread.
enum PublishTo {
    Inline(Box<Publisher>),
    Thread {
        jobs: SyncSender<PublishJob>,
        thread: JoinHandle<()>,
    },
}

pub struct SpanWriter {
    sink: Arc<dyn TableSink>,
    config: WriterConfig,
    telemetry: Arc<Telemetry>,
    dedup: Dedup,
    buffers: BTreeMap<Partition, PartitionBuffer>,
    buffered_bytes: usize,
    buffered_rows: usize,
    oldest: Option<Instant>,
    last_position: Option<WalPosition>,
    published: PublishedEnds,
    /// The trace buffer, when stitching is on: it sees what the writer keeps.
    stitcher: Option<TraceBuffer>,
    /// Shared with every [`WriterHandle`]: see [`WriterHandle::shed_stitch_buffer`].
    shed_request: Arc<AtomicUsize>,
    publish_to: PublishTo,
    /// The WAL position of the first batch whose columns could not be built (a defect: the
    /// schema is fixed, so it never happens for one batch and not the rest). From then on the
    /// writer takes and publishes nothing, as when publication keeps failing: a later file's
    /// footer would cover that record and replay would skip it. Everything stays in the WAL,
    /// whose cap then refuses exports as retryable, until a fixed collector replays it.
    unbuffered_since: Option<WalPosition>,
}

/// Per table partition: the WAL position its newest published file reaches, read from the
/// footer once and then kept up to date by each flush (replay skip).
pub struct PublishedEnds {
    sink: Arc<dyn TableSink>,
    ends: HashMap<(&'static str, Partition), Option<WalPosition>>,
}

impl PublishedEnds {
    fn get(&mut self, table: &'static str, partition: &Partition) -> Option<WalPosition> {
        if let Some(known) = self.ends.get(&(table, *partition)) {
            return *known;
        }
        let key = if table == spans::TABLE {
            WAL_END_KEY
        } else {
            STITCHED_THROUGH_KEY
        };
        let end = self
            .sink
            .list(table, partition)
            .ok()
            .and_then(|files| files.last().cloned())
            .and_then(|newest| self.sink.read(table, partition, &newest.name).ok())
            .and_then(|bytes| footer_value(&bytes, key))
            .and_then(|v| v.parse().ok());
        self.ends.insert((table, *partition), end);
        end
    }

    fn set(&mut self, table: &'static str, partition: Partition, end: WalPosition) {
        self.ends.insert((table, partition), Some(end));
    }
}

impl PublishedCheck for PublishedEnds {
    fn covers(&mut self, table: &'static str, partition: &Partition, last: WalPosition) -> bool {
        self.get(table, partition).is_some_and(|end| last <= end)
    }
}

impl SpanWriter {
    pub fn new(
        sink: Arc<dyn TableSink>,
        wal_dir: PathBuf,
        config: &WriterConfig,
        dedup: &DedupConfig,
        stitcher: &StitcherConfig,
        telemetry: Arc<Telemetry>,
    ) -> Result<SpanWriter> {
        let publisher = Publisher::new(sink.clone(), wal_dir, config, telemetry.clone())?;
        Ok(SpanWriter {
            published: PublishedEnds {
                sink: sink.clone(),
                ends: HashMap::new(),
            },
            stitcher: stitcher
                .enabled
                .then(|| TraceBuffer::new(stitcher, telemetry.clone())),
            sink,
            config: config.clone(),
            telemetry,
            dedup: Dedup::new(dedup),
            buffers: BTreeMap::new(),
            buffered_bytes: 0,
            buffered_rows: 0,
            oldest: None,
            last_position: None,
            shed_request: Arc::new(AtomicUsize::new(0)),
            publish_to: PublishTo::Inline(Box::new(publisher)),
            unbuffered_since: None,
        })
    }

    /// Starts the intake thread (and the publisher thread behind it).
    pub fn spawn(mut self, queue: usize) -> Result<(WriterHandle, JoinHandle<()>)> {
        if let PublishTo::Inline(publisher) = self.publish_to {
            // One flush publishing while the next accumulates: no more in memory than that.
            let (jobs, pending) = std::sync::mpsc::sync_channel(0);
            let thread = std::thread::Builder::new()
                .name("idtrail-publish".into())
                .spawn(move || publisher.run(pending))
                .map_err(|e| Error::io("starting the publisher thread", e))?;
            self.publish_to = PublishTo::Thread { jobs, thread };
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(queue);
        let shed_request = self.shed_request.clone();
        let thread = std::thread::Builder::new()
            .name("idtrail-writer".into())
            .spawn(move || self.run(rx))
            .map_err(|e| Error::io("starting the writer thread", e))?;
        Ok((WriterHandle { tx, shed_request }, thread))
    }

    fn run(mut self, rx: Receiver<Message>) {
        loop {
            let file_due = self.oldest.map(|t| t + self.config.max_file_age);
            let stitch_due = self.stitcher.as_ref().and_then(|s| s.next_deadline());
            let wait = match file_due.into_iter().chain(stitch_due).min() {
                Some(due) => due.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            let received = rx.recv_timeout(wait);
            // Taken even with the stitcher off, so a request never stays pending (which would
            // keep later ones from queueing their wake-up).
            let shed = self.shed_request.swap(0, Ordering::AcqRel);
            if let Some(stitcher) = &mut self.stitcher {
                if shed > 0 {
                    let freed = stitcher.shed(shed, Instant::now(), &mut self.published);
                    self.telemetry.stitch_buffer_shed(shed, freed);
                }
                stitcher.expire(Instant::now(), &mut self.published);
                if self.oldest.is_none() && !stitcher.out.is_empty() {
                    // Chains and edges become visible within one file age, like spans.
                    self.oldest = Some(Instant::now());
                }
            }
            match received {
                Ok(Message::Durable {
                    batch,
                    position,
                    replayed,
                }) => {
                    self.accept(batch, position, replayed);
                    if self.buffered_bytes >= self.config.max_buffer_bytes {
                        self.submit(None);
                    }
                }
                Ok(Message::Flush(reply)) => self.submit(Some(reply)),
                Ok(Message::Wake) => {}
                Err(RecvTimeoutError::Timeout) => {
                    if self
                        .oldest
                        .is_some_and(|t| t.elapsed() >= self.config.max_file_age)
                    {
                        self.submit(None);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.submit(None);
                    if let PublishTo::Thread { jobs, thread } = self.publish_to {
                        drop(jobs);
                        let _ = thread.join();
                    }
                    return;
                }
            }
        }
    }

    /// Buffers a durable batch, dropping retried duplicates and, on replay, rows already
    /// published.
    pub fn accept(&mut self, batch: SpanBatch, position: WalPosition, replayed: bool) {
        if self.unbuffered_since.is_some() {
            return;
        }
        // Per span: does the stitcher see it (not a retried duplicate), and does the writer
        // store it (not a duplicate, and not already in a published file).
        let mut stitch = Vec::with_capacity(batch.spans.len());
        let mut write = Vec::with_capacity(batch.spans.len());
        let mut duplicates = 0;
        for row in &batch.spans {
            let published = replayed
                && self.published.covers(
                    spans::TABLE,
                    &Partition::of_nanos(row.start_time),
                    position,
                );
            let fresh = self.dedup.insert(&row.trace_id, &row.span_id);
            // An id already published and replayed is remembered, not a duplicate.
            duplicates += usize::from(!fresh && !published);
            stitch.push(fresh || published);
            write.push(fresh && !published);
        }
        if let Some(stitcher) = &mut self.stitcher {
            stitcher.add_batch(&batch, &stitch, position, replayed, Instant::now());
        }
        let SpanBatch { header, mut spans } = batch;
        let mut keep = write.into_iter();
        spans.retain(|_| keep.next().unwrap_or(false));
        self.telemetry.spans_duplicate(duplicates);
        self.last_position = Some(position);
        let Some(first) = spans.first() else {
            return;
        };
        // Almost always one batch is one hour: keep it whole. Otherwise split it by hour.
        let hour = |row: &crate::record::SpanRow| row.start_time.div_euclid(HOUR_NANOS);
        let first_hour = hour(first);
        if spans.iter().all(|row| hour(row) == first_hour) {
            self.buffer(SpanBatch { header, spans }, position);
        } else {
            let mut by_hour: BTreeMap<i64, Vec<crate::record::SpanRow>> = BTreeMap::new();
            for row in spans {
                by_hour.entry(hour(&row)).or_default().push(row);
            }
            for spans in by_hour.into_values() {
                let batch = SpanBatch {
                    header: header.clone(),
                    spans,
                };
                self.buffer(batch, position);
            }
        }
        self.telemetry.set_buffered_spans(self.buffered_rows);
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
    }

    /// Adds a batch whose spans all fall in one hour partition, as columns; its rows are
    /// dropped here.
    fn buffer(&mut self, batch: SpanBatch, position: WalPosition) {
        let Some(first) = batch.spans.first() else {
            return;
        };
        let partition = Partition::of_nanos(first.start_time);
        let columns = match spans_batch::to_record_batch(&batch) {
            Ok(columns) => columns,
            Err(error) => {
                tracing::error!(%error, %position, spans = batch.spans.len(),
                    "could not build the spans columns of a WAL record; publication stops and the WAL keeps everything from it on");
                self.unbuffered_since.get_or_insert(position);
                return;
            }
        };
        let (rows, bytes) = (columns.num_rows(), columns.get_array_memory_size());
        let buffer = self.buffers.entry(partition).or_default();
        buffer.rows += rows;
        buffer.bytes += bytes;
        self.buffered_rows += rows;
        self.buffered_bytes += bytes;
        buffer.batches.push(columns);
    }

    /// Hands everything buffered to publication; `reply` learns when it is published.
    fn submit(&mut self, reply: Option<oneshot::Sender<Result<()>>>) {
        if let Some(position) = self.unbuffered_since {
            // No file is due any more: without this the intake loop would wake at once, again
            // and again.
            self.oldest = None;
            if let Some(reply) = reply {
                let _ = reply.send(Err(Error::Parquet(format!(
                    "the spans of WAL record {position} could not be built into columns; \
                     nothing is published from there on and the WAL keeps everything"
                ))));
            }
            return;
        }
        let Some(wal_end) = self.last_position else {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(()));
            }
            return;
        };
        let buffers = std::mem::take(&mut self.buffers);
        // Publication retries until it succeeds, so these partitions will reach `wal_end`.
        for partition in buffers.keys() {
            self.published.set(spans::TABLE, *partition, wal_end);
        }
        let (chains, edges, stitched_through, checkpoint) = match &mut self.stitcher {
            Some(stitcher) => {
                let out = std::mem::take(&mut stitcher.out);
                let mut edges_out = out.edges;
                let edges_rows = edges_out.take();
                if let Some(through) = out.stitched_through {
                    for partition in out.chains.keys() {
                        self.published.set(chains::TABLE, *partition, through);
                    }
                    for partition in edges_rows.keys() {
                        self.published.set(edges::TABLE, *partition, through);
                    }
                }
                // Records of open traces stay in the WAL: a crash must not lose what no chain
                // has seen yet.
                let checkpoint = stitcher.oldest_needed().map_or(wal_end, |p| p.min(wal_end));
                (out.chains, edges_rows, out.stitched_through, checkpoint)
            }
            None => (BTreeMap::new(), BTreeMap::new(), None, wal_end),
        };
        self.buffered_rows = 0;
        self.buffered_bytes = 0;
        self.oldest = None;
        self.telemetry.set_buffered_spans(0);
        let mut job = PublishJob {
            buffers,
            wal_end,
            chains,
            edges,
            stitched_through,
            checkpoint,
            done: reply,
        };
        match &mut self.publish_to {
            PublishTo::Thread { jobs, .. } => {
                if jobs.send(job).is_err() {
                    tracing::error!(
                        "publisher thread is gone; spans stay in the WAL until restart"
                    );
                }
            }
            PublishTo::Inline(publisher) => {
                let result = publisher.publish(&mut job);
                if let Err(error) = &result {
                    tracing::error!(%error, "parquet flush failed");
                    // Unpublished partitions go back to the buffer: nothing is checkpointed
                    // past them, and the next flush tries again.
                    for (partition, buffer) in std::mem::take(&mut job.buffers) {
                        self.buffered_rows += buffer.rows;
                        self.buffered_bytes += buffer.bytes;
                        self.buffers.insert(partition, buffer);
                    }
                    if let Some(stitcher) = &mut self.stitcher {
                        stitcher.out.restore(
                            std::mem::take(&mut job.chains),
                            std::mem::take(&mut job.edges),
                            job.stitched_through,
                        );
                    }
                }
                if let Some(done) = job.done.take() {
                    let _ = done.send(result);
                }
            }
        }
    }

    /// Publishes everything buffered and checkpoints the WAL, on the caller's thread (before
    /// `spawn`; tests).
    pub fn flush(&mut self) -> Result<()> {
        let (reply, mut done) = oneshot::channel();
        self.submit(Some(reply));
        done.try_recv().unwrap_or(Err(Error::ShuttingDown))
    }

    /// Remembers what was published within the dedup window: span ids, so a retry that arrives
    /// after a restart is still recognised, and chain revisions, so a trace re-stitched after a
    /// restart (a retried or late span) continues its revisions instead of repeating them.
    pub fn seed_from_recent_files(&mut self, window: Duration) -> Result<(usize, usize)> {
        let mut spans_seeded = 0;
        for (partition, name) in self.recent_files(spans::TABLE, window)? {
            let bytes = self.sink.read(spans::TABLE, &partition, &name)?;
            spans_seeded += self.seed_from_file(bytes)?;
        }
        let mut chains_seeded = 0;
        if self.stitcher.is_some() {
            for (partition, name) in self.recent_files(chains::TABLE, window)? {
                let bytes = self.sink.read(chains::TABLE, &partition, &name)?;
                chains_seeded += self.seed_revisions_from_file(bytes)?;
            }
        }
        Ok((spans_seeded, chains_seeded))
    }

    /// Files of `table` modified within `window`, in the hour partitions that window reaches.
    fn recent_files(&self, table: &str, window: Duration) -> Result<Vec<(Partition, String)>> {
        let now = SystemTime::now();
        let now_nanos = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let hours = window.as_secs() / 3600 + 2;
        let mut files = Vec::new();
        for back in 0..hours as i64 {
            let partition = Partition::of_nanos(now_nanos - back * HOUR_NANOS);
            for file in self.sink.list(table, &partition)? {
                let recent = now
                    .duration_since(file.modified)
                    .map_or(true, |age| age <= window);
                if recent {
                    files.push((partition, file.name));
                }
            }
        }
        Ok(files)
    }

    fn seed_revisions_from_file(&mut self, bytes: bytes::Bytes) -> Result<usize> {
        let Some(stitcher) = &mut self.stitcher else {
            return Ok(0);
        };
        let parquet_err = |e: parquet::errors::ParquetError| Error::Parquet(e.to_string());
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(parquet_err)?;
        let mask = parquet::arrow::ProjectionMask::columns(
            builder.parquet_schema(),
            ["trace_id", "effect_span_id", "revision"],
        );
        let reader = builder.with_projection(mask).build().map_err(parquet_err)?;
        let mut seeded = 0;
        for batch in reader {
            let batch = batch.map_err(|e| Error::Parquet(e.to_string()))?;
            let (Some(traces), Some(spans), Some(revisions)) = (
                batch.column(0).as_any().downcast_ref::<StringArray>(),
                batch.column(1).as_any().downcast_ref::<StringArray>(),
                batch
                    .column(2)
                    .as_any()
                    .downcast_ref::<arrow::array::UInt32Array>(),
            ) else {
                continue;
            };
            for i in 0..batch.num_rows() {
                let mut t = [0u8; 16];
                let mut s = [0u8; 8];
                if hex::decode_to_slice(traces.value(i), &mut t).is_ok()
                    && hex::decode_to_slice(spans.value(i), &mut s).is_ok()
                {
                    stitcher.seed_revision(t, s, revisions.value(i));
                    seeded += 1;
                }
            }
        }
        Ok(seeded)
    }

    fn seed_from_file(&mut self, bytes: bytes::Bytes) -> Result<usize> {
        let parquet_err = |e: parquet::errors::ParquetError| Error::Parquet(e.to_string());
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(parquet_err)?;
        let mask = parquet::arrow::ProjectionMask::columns(
            builder.parquet_schema(),
            [spans::col::TRACE_ID, spans::col::SPAN_ID],
        );
        let reader = builder.with_projection(mask).build().map_err(parquet_err)?;
        let mut seeded = 0;
        for batch in reader {
            let batch = batch.map_err(|e| Error::Parquet(e.to_string()))?;
            let (Some(traces), Some(spans)) = (
                batch.column(0).as_any().downcast_ref::<StringArray>(),
                batch.column(1).as_any().downcast_ref::<StringArray>(),
            ) else {
                continue;
            };
            for i in 0..batch.num_rows() {
                if traces.is_null(i) || spans.is_null(i) {
                    continue;
                }
                let mut t = [0u8; 16];
                let mut s = [0u8; 8];
                if hex::decode_to_slice(traces.value(i), &mut t).is_ok()
                    && hex::decode_to_slice(spans.value(i), &mut s).is_ok()
                {
                    self.dedup.insert(&t, &s);
                    seeded += 1;
                }
            }
        }
        Ok(seeded)
    }
}

fn footer_value(bytes: &bytes::Bytes, key: &str) -> Option<String> {
    let metadata = ParquetMetaDataReader::new().parse_and_finish(bytes).ok()?;
    metadata
        .file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SpanRow;
    use sink::LocalDirSink;

    fn batch(first_span: u8, n: u8) -> SpanBatch {
        SpanBatch {
            header: Default::default(),
            spans: (first_span..first_span + n)
                .map(|i| SpanRow {
                    trace_id: [1; 16],
                    span_id: [i; 8],
                    start_time: 1_795_355_100_000_000_000,
                    end_time: 1_795_355_100_000_000_100,
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn writer(dir: &std::path::Path) -> SpanWriter {
        std::fs::create_dir_all(dir.join("wal")).unwrap();
        writer_with(
            Arc::new(LocalDirSink::new(dir, "w")),
            dir.join("wal"),
            &StitcherConfig::default(),
        )
    }

    /// A writer with default writer and dedup settings over `sink`, checkpointing `wal_dir`.
    fn writer_with(
        sink: Arc<dyn TableSink>,
        wal_dir: PathBuf,
        stitcher: &StitcherConfig,
    ) -> SpanWriter {
        SpanWriter::new(
            sink,
            wal_dir,
            &WriterConfig::default(),
            &DedupConfig::default(),
            stitcher,
            Arc::new(Telemetry::new()),
        )
        .unwrap()
    }

    fn pos(offset: u64) -> WalPosition {
        WalPosition { segment: 1, offset }
    }

    #[test]
    fn replayed_rows_already_published_are_skipped_by_footer_position() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = writer(dir.path());
        first.accept(batch(1, 3), pos(100), false);
        first.flush().unwrap();

        // A restarted writer with an empty dedup window: only the footer's wal_end can tell it
        // that the records up to 1:100 are already published.
        let mut restarted = writer(dir.path());
        restarted.accept(batch(1, 3), pos(100), true);
        assert_eq!(
            restarted.buffered_rows, 0,
            "published rows are not written again"
        );
        restarted.accept(batch(10, 2), pos(200), true);
        assert_eq!(
            restarted.buffered_rows, 2,
            "rows past the published position are"
        );
        restarted.flush().unwrap();

        let files = restarted
            .sink
            .list(
                spans::TABLE,
                &Partition::of_nanos(1_795_355_100_000_000_000),
            )
            .unwrap();
        assert_eq!(files.len(), 2);
        let newest = restarted
            .sink
            .read(
                spans::TABLE,
                &Partition::of_nanos(1_795_355_100_000_000_000),
                &files[1].name,
            )
            .unwrap();
        assert_eq!(footer_value(&newest, WAL_END_KEY).as_deref(), Some("1:200"));
        assert_eq!(
            footer_value(&newest, idtrail_schemas::SCHEMA_VERSION_KEY),
            Some(idtrail_schemas::SCHEMA_VERSION.to_string())
        );
    }

    #[test]
    fn spans_files_keep_each_credential_together_in_time_order_with_the_rest_last() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let t0 = 1_795_355_100_000_000_000;
        // (span, credential, start offset): arrival order mixes credentials and times.
        let arrivals = [
            (1, Some("kb:2"), 5),
            (2, None, 1),
            (3, Some("ka:1"), 9),
            (4, Some("kb:2"), 2),
            (5, None, 0),
            (6, Some("ka:1"), 3),
        ];
        let spans = arrivals
            .iter()
            .map(|&(i, fingerprint, offset)| SpanRow {
                trace_id: [1; 16],
                span_id: [i; 8],
                start_time: t0 + offset,
                end_time: t0 + offset + 1,
                credential: fingerprint.map(|f: &str| crate::record::Credential {
                    fingerprint: f.to_string(),
                    kind: crate::record::CredentialKind::Bearer,
                    attribute: "http.request.header.authorization".into(),
                }),
                ..Default::default()
            })
            .collect();
        let header = Default::default();
        w.accept(SpanBatch { header, spans }, pos(100), false);
        w.flush().unwrap();

        let partition = Partition::of_nanos(t0);
        let file = w.sink.list(spans::TABLE, &partition).unwrap()[0].clone();
        let bytes = w.sink.read(spans::TABLE, &partition, &file.name).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let schema = reader.schema().clone();
        let declared: Vec<String> = reader
            .metadata()
            .row_group(0)
            .sorting_columns()
            .unwrap()
            .iter()
            .map(|c| schema.field(c.column_idx as usize).name().clone())
            .collect();
        assert_eq!(declared, ["credential_fp", "start_time"]);
        let batch = reader.build().unwrap().next().unwrap().unwrap();
        let span_ids = batch.column_by_name("span_id").unwrap();
        let span_ids = span_ids.as_any().downcast_ref::<StringArray>().unwrap();
        let order: Vec<&str> = span_ids.iter().map(|s| &s.unwrap()[..2]).collect();
        // ka:1 (times 3, 9), kb:2 (2, 5), then no credential (0, 1).
        assert_eq!(order, ["06", "03", "04", "01", "05", "02"]);
    }

    #[test]
    fn spans_files_split_a_credential_column_into_pages_the_page_index_can_skip() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let t0 = 1_795_355_100_000_000_000;
        // 20,000 spans of 40 credentials, interleaved on arrival.
        let spans = (0..20_000u32)
            .map(|i| SpanRow {
                trace_id: [1; 16],
                span_id: (u64::from(i) + 1).to_be_bytes(),
                start_time: t0 + i64::from(i),
                end_time: t0 + i64::from(i) + 1,
                credential: Some(crate::record::Credential {
                    fingerprint: format!("k{:02}", i % 40),
                    kind: crate::record::CredentialKind::Bearer,
                    attribute: "http.request.header.authorization".into(),
                }),
                attributes: vec![("k".into(), "v".into())],
                ..Default::default()
            })
            .collect();
        w.accept(
            SpanBatch {
                header: Default::default(),
                spans,
            },
            pos(100),
            false,
        );
        w.flush().unwrap();

        let partition = Partition::of_nanos(t0);
        let file = w.sink.list(spans::TABLE, &partition).unwrap()[0].clone();
        let bytes = w.sink.read(spans::TABLE, &partition, &file.name).unwrap();
        let options = parquet::arrow::arrow_reader::ArrowReaderOptions::new()
            .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required);
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(bytes, options).unwrap();
        let metadata = reader.metadata();
        let row_group = metadata.row_group(0);
        let column = |name: &str| {
            (0..row_group.num_columns())
                .find(|&c| row_group.column(c).column_path().string() == name)
                .unwrap()
        };
        let fingerprint = column("credential_fp");
        let pages = &metadata.offset_index().unwrap()[0][fingerprint].page_locations;
        // Pages of at most 8192 rows (checked every 1024): three of them here.
        assert_eq!(pages.len(), 3, "{pages:?}");
        // Sorted by credential, each page covers a narrow run of credentials, in order.
        let parquet::file::page_index::column_index::ColumnIndexMetaData::BYTE_ARRAY(index) =
            &metadata.column_index().unwrap()[0][fingerprint]
        else {
            panic!("credential_fp has a byte-array column index")
        };
        let bounds: Vec<(String, String)> = (0..pages.len())
            .map(|p| {
                let text = |b: Option<&[u8]>| String::from_utf8(b.unwrap().to_vec()).unwrap();
                (text(index.min_value(p)), text(index.max_value(p)))
            })
            .collect();
        assert_eq!(bounds[0].0, "k00");
        assert_eq!(bounds[2].1, "k39");
        assert!(bounds.windows(2).all(|w| w[0].1 <= w[1].0), "{bounds:?}");
        // Map entries carry no statistics: nothing prunes on them, and planning merges them.
        let attributes = row_group.column(column("attributes.entries.key"));
        assert!(attributes.statistics().is_none());
        assert!(row_group.column(fingerprint).statistics().is_some());
    }

    /// Fails publications while `failing` is set, otherwise writes to a local directory.
    struct FlakySink {
        inner: LocalDirSink,
        failing: std::sync::atomic::AtomicBool,
    }

    impl TableSink for FlakySink {
        fn publish(&self, table: &str, p: &Partition, seq: u64, bytes: &[u8]) -> Result<String> {
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Error::io("test", std::io::Error::other("disk full")));
            }
            self.inner.publish(table, p, seq, bytes)
        }
        fn list(&self, table: &str, p: &Partition) -> Result<Vec<sink::FileEntry>> {
            self.inner.list(table, p)
        }
        fn read(&self, table: &str, p: &Partition, name: &str) -> Result<bytes::Bytes> {
            self.inner.read(table, p, name)
        }
        fn writer_id(&self) -> &str {
            self.inner.writer_id()
        }
    }

    #[tokio::test]
    async fn a_failed_flush_is_retried_never_dropped_and_never_checkpointed_past() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        // Segment 1 holds the records of the failing flush; it must survive until they land.
        std::fs::write(wal_dir.join(format!("{:020}.wal", 1)), b"IDTWAL01").unwrap();
        let sink = Arc::new(FlakySink {
            inner: LocalDirSink::new(dir.path(), "w"),
            failing: std::sync::atomic::AtomicBool::new(true),
        });
        // Stitching holds the checkpoint back for open traces; this test is about spans.
        let writer = writer_with(
            sink.clone(),
            wal_dir.clone(),
            &StitcherConfig {
                enabled: false,
                ..Default::default()
            },
        );
        let (handle, thread) = writer.spawn(4).unwrap();
        handle.durable(
            batch(1, 3),
            WalPosition {
                segment: 1,
                offset: 100,
            },
            false,
        );
        assert!(
            handle.flush().await.is_err(),
            "the waiter hears of the failure"
        );
        // A later, empty flush reaching past segment 1 must not checkpoint it away while the
        // failed job is unpublished: it queues behind the job's retries.
        handle.durable(
            batch(1, 0),
            WalPosition {
                segment: 2,
                offset: 10,
            },
            false,
        );
        assert!(wal_dir.join(format!("{:020}.wal", 1)).exists());
        sink.failing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        handle.flush().await.unwrap();
        drop(handle);
        thread.join().unwrap();
        let partition = Partition::of_nanos(1_795_355_100_000_000_000);
        let files = sink.list(spans::TABLE, &partition).unwrap();
        assert_eq!(files.len(), 1, "the retried job was published once");
        assert!(
            !wal_dir.join(format!("{:020}.wal", 1)).exists(),
            "then checkpointed"
        );
    }

    #[test]
    fn live_duplicates_are_dropped_and_dedup_is_seeded_from_recent_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        w.accept(batch(1, 3), pos(100), false);
        w.accept(batch(1, 3), pos(200), false);
        assert_eq!(w.buffered_rows, 3);
        w.flush().unwrap();

        // Files are in the partition of their span times (2026-11-22T13h); seed from it.
        let mut restarted = writer(dir.path());
        let partition = Partition::of_nanos(1_795_355_100_000_000_000);
        let file = restarted.sink.list(spans::TABLE, &partition).unwrap()[0].clone();
        let bytes = restarted
            .sink
            .read(spans::TABLE, &partition, &file.name)
            .unwrap();
        assert_eq!(restarted.seed_from_file(bytes).unwrap(), 3);
        restarted.accept(batch(1, 3), pos(300), false);
        assert_eq!(
            restarted.buffered_rows, 0,
            "a retry after restart is recognised"
        );
    }

    /// A writer over a WAL directory holding segments 1 and 2, handed trace 1's three spans
    /// (in segment 1) and then an empty batch (in segment 2), so only an open trace holds
    /// segment 1 back from a checkpoint.
    fn writer_over_two_segments(
        dir: &std::path::Path,
        stitcher: &StitcherConfig,
    ) -> (WriterHandle, JoinHandle<()>, PathBuf, Arc<Telemetry>) {
        let wal_dir = dir.join("wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        for seq in [1, 2] {
            std::fs::write(wal_dir.join(format!("{seq:020}.wal")), b"IDTWAL01").unwrap();
        }
        let telemetry = Arc::new(Telemetry::new());
        let writer = SpanWriter::new(
            Arc::new(LocalDirSink::new(dir, "w")),
            wal_dir.clone(),
            &WriterConfig::default(),
            &DedupConfig::default(),
            stitcher,
            telemetry.clone(),
        )
        .unwrap();
        let (handle, thread) = writer.spawn(4).unwrap();
        handle.durable(batch(1, 3), pos(100), false);
        handle.durable(
            batch(9, 0),
            WalPosition {
                segment: 2,
                offset: 10,
            },
            false,
        );
        (handle, thread, wal_dir, telemetry)
    }

    #[tokio::test]
    async fn an_open_trace_holds_the_checkpoint_back_until_it_is_stitched() {
        let dir = tempfile::tempdir().unwrap();
        let stitcher = StitcherConfig {
            quiet_window: Duration::from_millis(300),
            ..Default::default()
        };
        let (handle, thread, wal_dir, _) = writer_over_two_segments(dir.path(), &stitcher);
        handle.flush().await.unwrap();
        assert!(
            wal_dir.join(format!("{:020}.wal", 1)).exists(),
            "spans are published, but their trace is not stitched yet"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        handle.flush().await.unwrap();
        assert!(
            !wal_dir.join(format!("{:020}.wal", 1)).exists(),
            "once stitched, the segment goes"
        );
        drop(handle);
        thread.join().unwrap();
    }

    #[tokio::test]
    async fn an_idle_writer_asked_to_shed_stitches_its_open_traces_at_once() {
        let dir = tempfile::tempdir().unwrap();
        // Quiet for an hour: only shedding can stitch the trace within this test.
        let stitcher = StitcherConfig {
            quiet_window: Duration::from_secs(3600),
            late_window: Duration::from_secs(3600),
            ..Default::default()
        };
        let (handle, thread, wal_dir, telemetry) = writer_over_two_segments(dir.path(), &stitcher);
        handle.flush().await.unwrap();
        let first_segment = wal_dir.join(format!("{:020}.wal", 1));
        assert!(first_segment.exists(), "the open trace holds segment 1");

        assert!(telemetry.encode().contains("idtrail_stitch_buffer_spans 3"));

        // The writer now waits for an hour-long deadline: the request alone must wake it.
        handle.shed_stitch_buffer(usize::MAX);
        let shed = "idtrail_traces_stitched_early_total{reason=\"memory_pressure\"} 1";
        for _ in 0..100 {
            if telemetry.encode().contains(shed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let metrics = telemetry.encode();
        assert!(metrics.contains(shed), "{metrics}");
        assert!(
            metrics.contains("idtrail_stitch_buffer_spans 0"),
            "{metrics}"
        );
        handle.flush().await.unwrap();
        assert!(
            !first_segment.exists(),
            "shed: the trace is stitched (and forgotten), so its segment goes"
        );
        drop(handle);
        thread.join().unwrap();
    }
}
