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
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use idtrail_schemas::layout::Partition;
use idtrail_schemas::{SCHEMA_VERSION, SCHEMA_VERSION_KEY, chains, edges, spans};
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tokio::sync::oneshot;

use super::sink::{FileSequence, TableSink};
use super::{PartitionBuffer, STITCHED_THROUGH_KEY, WAL_END_KEY, WRITER_ID_KEY, spans_batch};
use crate::config::WriterConfig;
use crate::error::{Error, Result};
use crate::stitch::{ChainRow, EdgeRow, output};
use crate::telemetry::Telemetry;
use crate::wal::{Wal, WalPosition};

/// Longest pause between attempts to publish a flush that keeps failing (disk full, store
/// down). Its spans stay in the WAL meanwhile, so nothing acknowledged is at risk.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// One flush: every span partition buffered up to `wal_end`, and the chains and edges of the
/// traces stitched since the last flush.
pub struct PublishJob {
    pub buffers: BTreeMap<Partition, PartitionBuffer>,
    pub wal_end: WalPosition,
    pub chains: BTreeMap<Partition, Vec<ChainRow>>,
    pub edges: BTreeMap<Partition, Vec<EdgeRow>>,
    /// Footer of the chains and edges files: the last position of the last trace stitched.
    pub stitched_through: Option<WalPosition>,
    /// Where the WAL may be checkpointed once all is published: `wal_end`, or earlier while
    /// open traces still need older records.
    pub checkpoint: WalPosition,
    /// Told when the job is published and the WAL checkpointed.
    pub done: Option<oneshot::Sender<Result<()>>>,
}

pub struct Publisher {
    sink: Arc<dyn TableSink>,
    wal_dir: PathBuf,
    properties: WriterProperties,
    /// See [`WriterConfig::cluster_spans_by_credential`].
    cluster_by_credential: bool,
    chains_properties: WriterProperties,
    edges_properties: WriterProperties,
    telemetry: Arc<Telemetry>,
    seq: FileSequence,
    checkpointed: Option<WalPosition>,
}

impl Publisher {
    pub fn new(
        sink: Arc<dyn TableSink>,
        wal_dir: PathBuf,
        config: &WriterConfig,
        telemetry: Arc<Telemetry>,
    ) -> Result<Publisher> {
        let writer_id = sink.writer_id();
        Ok(Publisher {
            properties: spans_properties(config, writer_id)?,
            cluster_by_credential: config.cluster_spans_by_credential,
            chains_properties: chains_properties(config, writer_id)?,
            edges_properties: edges_properties(config, writer_id)?,
            sink,
            wal_dir,
            telemetry,
            seq: FileSequence::default(),
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
        let stitched_through = job
            .stitched_through
            .map(|p| (STITCHED_THROUGH_KEY, p.to_string()));
        while let Some((partition, mut rows)) = job.chains.pop_first() {
            sort_chains(&mut rows);
            let published = output::chains_batch(&rows)
                .map_err(|e| Error::Parquet(format!("building the chains batch: {e}")))
                .and_then(|batch| {
                    let properties = self.chains_properties.clone();
                    self.write_file(
                        chains::TABLE,
                        &partition,
                        &batch,
                        properties,
                        &stitched_through,
                    )
                });
            if let Err(e) = published {
                job.chains.insert(partition, rows);
                return Err(e);
            }
        }
        while let Some((partition, rows)) = job.edges.pop_first() {
            let published = output::edges_batch(&rows)
                .map_err(|e| Error::Parquet(format!("building the edges batch: {e}")))
                .and_then(|batch| {
                    let properties = self.edges_properties.clone();
                    self.write_file(
                        edges::TABLE,
                        &partition,
                        &batch,
                        properties,
                        &stitched_through,
                    )
                });
            if let Err(e) = published {
                job.edges.insert(partition, rows);
                return Err(e);
            }
        }
        if self.checkpointed.is_none_or(|done| done < job.checkpoint) {
            Wal::checkpoint(&self.wal_dir, job.checkpoint)?;
            self.checkpointed = Some(job.checkpoint);
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
        let batch = spans_batch::sorted_for_file(&buffer.batches, self.cluster_by_credential)
            .map_err(|e| Error::Parquet(format!("sorting the spans batch: {e}")))?;
        let footer = Some((WAL_END_KEY, wal_end.to_string()));
        self.write_file(
            spans::TABLE,
            partition,
            &batch,
            self.properties.clone(),
            &footer,
        )
    }

    /// Encodes one file of `table` (with `footer` in its key-value metadata) and publishes it.
    fn write_file(
        &mut self,
        table: &'static str,
        partition: &Partition,
        batch: &RecordBatch,
        properties: WriterProperties,
        footer: &Option<(&str, String)>,
    ) -> Result<()> {
        let bytes = encode(batch, properties, footer)?;
        let seq = self.seq.next_seq();
        let path = self.sink.publish(table, partition, seq, &bytes)?;
        self.telemetry
            .file_published(table, &path, batch.num_rows(), bytes.len());
        Ok(())
    }
}

/// Chains files are sorted by the credential nearest the effect (chains without one last), then
/// by time, as `chains_properties` declares: one credential's chains sit together in a page or
/// two per column of each file, so a report on a credential used all day decodes those pages
/// instead of every page of every file (ADR 14). The trace and effect make the order total.
pub(crate) fn sort_chains(rows: &mut [ChainRow]) {
    fn key(c: &ChainRow) -> (bool, Option<&str>, i64, &str, &str) {
        (
            c.credential_fp.is_none(),
            c.credential_fp.as_deref(),
            c.time,
            &c.trace_id,
            &c.effect_span_id,
        )
    }
    rows.sort_by(|a, b| key(a).cmp(&key(b)));
}

/// One Parquet file holding `batch`, with `footer` added to its key-value metadata.
pub(crate) fn encode(
    batch: &RecordBatch,
    properties: WriterProperties,
    footer: &Option<(&str, String)>,
) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(batch.num_rows() * 64);
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(properties))
        .map_err(|e| Error::Parquet(e.to_string()))?;
    writer
        .write(batch)
        .map_err(|e| Error::Parquet(e.to_string()))?;
    if let Some((key, value)) = footer {
        writer.append_key_value_metadata(KeyValue::new(key.to_string(), value.clone()));
    }
    writer.close().map_err(|e| Error::Parquet(e.to_string()))?;
    Ok(bytes)
}

/// Columns of `spans` whose values rarely repeat, so a dictionary only costs: the writer
/// interns every value until the dictionary page overflows, then falls back and compresses both.
/// Measured on the benchmark's spans (BENCHMARKS.md, "Stop 13"): times sorted or close to it
/// shrink by half with delta encoding (start_time 4.9 → 2.5 B/span, end_time and duration_ns
/// 6.5 → 4.1), and random ids lose their 4-byte length prefixes with delta-length encoding
/// (span_id 11.1 → 8.3, parent_span_id 8.3 → 6.9). DataFusion, DuckDB and pyarrow read both
/// encodings; they are part of the Parquet format, not an idtrail extension.
const SPANS_COLUMN_ENCODINGS: &[(&str, Encoding)] = &[
    (spans::col::START_TIME, Encoding::DELTA_BINARY_PACKED),
    ("end_time", Encoding::DELTA_BINARY_PACKED),
    ("duration_ns", Encoding::DELTA_BINARY_PACKED),
    ("ingested_at", Encoding::DELTA_BINARY_PACKED),
    (spans::col::SPAN_ID, Encoding::DELTA_LENGTH_BYTE_ARRAY),
    ("parent_span_id", Encoding::DELTA_LENGTH_BYTE_ARRAY),
];

/// Properties of `spans` files (also those compaction writes).
pub(crate) fn spans_properties(config: &WriterConfig, writer_id: &str) -> Result<WriterProperties> {
    writer_properties(
        config,
        writer_id,
        &spans::schema(),
        if config.cluster_spans_by_credential {
            &[spans::col::CREDENTIAL_FP, spans::col::START_TIME]
        } else {
            &[spans::col::START_TIME]
        },
        &config.bloom_filter_columns,
        SPANS_COLUMN_ENCODINGS,
    )
}

/// Properties of `table`'s files, as publication writes them.
pub(crate) fn table_properties(
    table: &str,
    config: &WriterConfig,
    writer_id: &str,
) -> Result<WriterProperties> {
    match table {
        spans::TABLE => spans_properties(config, writer_id),
        chains::TABLE => chains_properties(config, writer_id),
        edges::TABLE => edges_properties(config, writer_id),
        other => Err(Error::config(format!("no table named {other}"))),
    }
}

/// Properties of `chains` files (also those `idtrail restitch` writes).
pub(crate) fn chains_properties(
    config: &WriterConfig,
    writer_id: &str,
) -> Result<WriterProperties> {
    writer_properties(
        config,
        writer_id,
        &chains::schema(),
        &["credential_fp", "time"],
        &["trace_id".into(), "credential_fp".into()],
        &[],
    )
}

/// Properties of `edges` files (also those `idtrail restitch` writes).
pub(crate) fn edges_properties(config: &WriterConfig, writer_id: &str) -> Result<WriterProperties> {
    writer_properties(
        config,
        writer_id,
        &edges::schema(),
        &["first_seen"],
        &["src_id".into(), "dst_id".into()],
        &[],
    )
}

fn writer_properties(
    config: &WriterConfig,
    writer_id: &str,
    schema: &SchemaRef,
    sorted_by: &[&str],
    bloom_filter_columns: &[String],
    column_encodings: &[(&str, Encoding)],
) -> Result<WriterProperties> {
    let level = ZstdLevel::try_new(config.zstd_level).map_err(|e| Error::config(e.to_string()))?;
    let sorting_columns = sorted_by
        .iter()
        .map(|column| {
            let index = schema
                .index_of(column)
                .map_err(|e| Error::config(e.to_string()))?;
            Ok(SortingColumn {
                column_idx: index as i32,
                descending: false,
                nulls_first: false,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(config.row_group_rows.max(1)))
        .set_data_page_row_count_limit(config.page_rows.max(1))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_sorting_columns(Some(sorting_columns))
        .set_key_value_metadata(Some(vec![
            KeyValue::new(SCHEMA_VERSION_KEY.to_string(), SCHEMA_VERSION.to_string()),
            KeyValue::new(WRITER_ID_KEY.to_string(), writer_id.to_string()),
        ]));
    // Lists and maps (scopes, links, attributes) get no statistics: no filter prunes on a min
    // or max of list items or map entries, yet every query plan merges each file's statistics,
    // and comparing nested values there was a fifth of a point lookup's planning time.
    let parquet_schema = ArrowSchemaConverter::new()
        .convert(schema)
        .map_err(|e| Error::config(e.to_string()))?;
    for column in parquet_schema.columns() {
        if column.path().parts().len() > 1 {
            builder = builder
                .set_column_statistics_enabled(column.path().clone(), EnabledStatistics::None);
        }
    }
    for column in bloom_filter_columns {
        builder = builder.set_column_bloom_filter_enabled(ColumnPath::from(column.as_str()), true);
    }
    for &(column, encoding) in column_encodings {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), encoding);
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_keep_each_credential_together_in_time_order_with_the_rest_last() {
        // (trace, credential, time): arrival order mixes credentials and times.
        let arrivals = [
            ("t1", Some("kb:2"), 5),
            ("t2", None, 1),
            ("t3", Some("ka:1"), 9),
            ("t4", Some("kb:2"), 2),
            ("t5", None, 0),
            ("t6", Some("ka:1"), 3),
        ];
        let mut rows: Vec<ChainRow> = arrivals
            .iter()
            .map(|&(trace, credential, time)| ChainRow {
                trace_id: trace.into(),
                effect_span_id: "e".into(),
                credential_fp: credential.map(str::to_string),
                time,
                ..ChainRow::default()
            })
            .collect();
        sort_chains(&mut rows);
        let order: Vec<&str> = rows.iter().map(|r| r.trace_id.as_str()).collect();
        assert_eq!(order, ["t6", "t3", "t4", "t1", "t5", "t2"]);
        // What the files declare, in the same order.
        let properties = chains_properties(&WriterConfig::default(), "w").unwrap();
        let declared: Vec<(String, bool)> = properties
            .sorting_columns()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    chains::schema().field(c.column_idx as usize).name().clone(),
                    c.nulls_first,
                )
            })
            .collect();
        assert_eq!(
            declared,
            [
                ("credential_fp".to_string(), false),
                ("time".to_string(), false)
            ]
        );
    }
}
