//! Publication: buffered partitions → Parquet files → WAL checkpoint, on a thread of its own.
//!
//! Encoding a flush takes a while (zstd, page statistics, bloom filters). Doing it on the intake
//! thread would stop intake, fill the queue, and stall WAL commits and acknowledgements for the
//! whole flush. Here the intake hands over a full buffer and goes on filling the next: at most
//! one flush is being published and one accumulating.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use idtrail_schemas::layout::Partition;
use idtrail_schemas::{SCHEMA_VERSION, SCHEMA_VERSION_KEY, spans};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tokio::sync::oneshot;

use super::sink::TableSink;
use super::{PartitionBuffer, WAL_END_KEY, WRITER_ID_KEY, spans_batch};
use crate::config::WriterConfig;
use crate::error::{Error, Result};
use crate::telemetry::Telemetry;
use crate::wal::{Wal, WalPosition};

/// Longest pause between attempts to publish a flush that keeps failing (disk full, store
/// down). Its spans stay in the WAL meanwhile, so nothing acknowledged is at risk.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// One flush: every partition buffered up to `wal_end`.
pub struct PublishJob {
    pub buffers: BTreeMap<Partition, PartitionBuffer>,
    pub wal_end: WalPosition,
    /// Told when the job is published and the WAL checkpointed.
    pub done: Option<oneshot::Sender<Result<()>>>,
}

pub struct Publisher {
    sink: Arc<dyn TableSink>,
    wal_dir: PathBuf,
    properties: WriterProperties,
    telemetry: Arc<Telemetry>,
    last_seq: u64,
    checkpointed: Option<WalPosition>,
}

impl Publisher {
    pub fn new(
        sink: Arc<dyn TableSink>,
        wal_dir: PathBuf,
        config: &WriterConfig,
        telemetry: Arc<Telemetry>,
    ) -> Result<Publisher> {
        Ok(Publisher {
            properties: writer_properties(config, sink.writer_id())?,
            sink,
            wal_dir,
            telemetry,
            last_seq: 0,
            checkpointed: None,
        })
    }

    /// Publishes jobs in order until the intake side hangs up, retrying each until it lands.
    pub fn run(mut self, jobs: Receiver<PublishJob>) {
        for mut job in jobs {
            let mut delay = Duration::from_millis(100);
            // A job is never dropped: the next job's checkpoint would delete WAL records that
            // are in no file. A waiter (shutdown, tests) hears of the first failure, and the
            // job goes on being retried; if the process exits meanwhile, the WAL still has it.
            while let Err(error) = self.publish(&mut job) {
                tracing::error!(%error, retry_in_ms = delay.as_millis() as u64, "parquet flush failed; retrying");
                if let Some(done) = job.done.take() {
                    let _ = done.send(Err(error));
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
            if let Some(done) = job.done.take() {
                let _ = done.send(Ok(()));
            }
        }
    }

    /// Publishes every partition of the job (dropping each from it once published, so a retry
    /// never writes one twice), then checkpoints the WAL.
    pub fn publish(&mut self, job: &mut PublishJob) -> Result<()> {
        let started = Instant::now();
        while let Some((partition, buffer)) = job.buffers.pop_first() {
            if let Err(e) = self.publish_partition(&partition, &buffer, job.wal_end) {
                job.buffers.insert(partition, buffer);
                return Err(e);
            }
        }
        if self.checkpointed != Some(job.wal_end) {
            Wal::checkpoint(&self.wal_dir, job.wal_end)?;
            self.checkpointed = Some(job.wal_end);
        }
        self.telemetry.flush_finished(started.elapsed());
        Ok(())
    }

    fn publish_partition(
        &mut self,
        partition: &Partition,
        buffer: &PartitionBuffer,
        wal_end: WalPosition,
    ) -> Result<()> {
        let mut order: Vec<(u32, u32)> = Vec::with_capacity(buffer.rows);
        for (b, batch) in buffer.batches.iter().enumerate() {
            order.extend((0..batch.spans.len() as u32).map(|i| (b as u32, i)));
        }
        let start = |&(b, i): &(u32, u32)| buffer.batches[b as usize].spans[i as usize].start_time;
        order.sort_by_key(start);
        let batch = spans_batch::to_record_batch(&buffer.batches, &order)
            .map_err(|e| Error::Parquet(format!("building the spans batch: {e}")))?;
        let mut bytes = Vec::with_capacity(buffer.rows * 64);
        let mut writer =
            ArrowWriter::try_new(&mut bytes, spans::schema(), Some(self.properties.clone()))
                .map_err(|e| Error::Parquet(e.to_string()))?;
        writer
            .write(&batch)
            .map_err(|e| Error::Parquet(e.to_string()))?;
        writer
            .append_key_value_metadata(KeyValue::new(WAL_END_KEY.to_string(), wal_end.to_string()));
        writer.close().map_err(|e| Error::Parquet(e.to_string()))?;
        let seq = self.next_seq();
        let path = self.sink.publish(spans::TABLE, partition, seq, &bytes)?;
        self.telemetry
            .file_published(spans::TABLE, &path, buffer.rows, bytes.len());
        Ok(())
    }

    /// File sequence numbers: microseconds since the epoch, strictly increasing, so names sort
    /// by publication across restarts without a scan of earlier files.
    fn next_seq(&mut self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.last_seq = now.max(self.last_seq + 1);
        self.last_seq
    }
}

fn writer_properties(config: &WriterConfig, writer_id: &str) -> Result<WriterProperties> {
    let level = ZstdLevel::try_new(config.zstd_level).map_err(|e| Error::config(e.to_string()))?;
    let start_time_index = spans::schema()
        .index_of(spans::col::START_TIME)
        .map_err(|e| Error::config(e.to_string()))?;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(config.row_group_rows.max(1)))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: start_time_index as i32,
            descending: false,
            nulls_first: false,
        }]))
        .set_key_value_metadata(Some(vec![
            KeyValue::new(SCHEMA_VERSION_KEY.to_string(), SCHEMA_VERSION.to_string()),
            KeyValue::new(WRITER_ID_KEY.to_string(), writer_id.to_string()),
        ]));
    for column in &config.bloom_filter_columns {
        builder = builder.set_column_bloom_filter_enabled(ColumnPath::from(column.as_str()), true);
    }
    Ok(builder.build())
}
