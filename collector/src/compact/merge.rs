//! A k-way merge of Parquet files that are each sorted the same way into one file sorted that
//! way, a batch of each source in memory at a time: compacting an hour of a busy collector
//! must not need the hour in memory.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use arrow::array::RecordBatch;
use arrow::compute::{SortOptions, interleave_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, Rows, SortField};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};

/// Rows read from each source at a time. The merge holds one batch per source (up to
/// [`super::MAX_SOURCES`] of them) plus the output batch.
const SOURCE_BATCH_ROWS: usize = 1024;
/// Rows handed to the Parquet writer at a time.
const OUTPUT_BATCH_ROWS: usize = 8192;

fn parquet_error(what: &str, path: &Path) -> impl Fn(parquet::errors::ParquetError) -> Error {
    let context = format!("{what} {}", path.display());
    move |e| Error::Parquet(format!("{context}: {e}"))
}

/// What a source's footer says about it, read before deciding to merge it.
#[derive(Debug, Clone)]
pub struct SourceFooter {
    pub rows: u64,
    pub schema: SchemaRef,
    /// The order every row group declares; `None` when row groups disagree or declare none.
    pub sorting: Option<Vec<SortingColumn>>,
    pub key_value: Vec<KeyValue>,
}

pub fn read_footer(path: &Path) -> Result<SourceFooter> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_error("reading the footer of", path))?;
    let metadata = builder.metadata();
    let mut orders = metadata
        .row_groups()
        .iter()
        .map(|rg| rg.sorting_columns().cloned());
    let first = orders.next().flatten();
    let sorting = first.filter(|s| !s.is_empty() && orders.all(|o| o.as_ref() == Some(s)));
    Ok(SourceFooter {
        rows: metadata.file_metadata().num_rows().max(0) as u64,
        schema: builder.schema().clone(),
        sorting,
        key_value: metadata
            .file_metadata()
            .key_value_metadata()
            .cloned()
            .unwrap_or_default(),
    })
}

/// One source being read: its current batch, that batch's sort keys, and the next row.
struct Cursor {
    reader: ParquetRecordBatchReader,
    /// Index of the current batch in the merge's batch list.
    slot: usize,
    keys: Rows,
    next: usize,
    rows: usize,
}

/// Merges `sources` (each sorted by `sorting`, all with `schema`) into `out`, written with
/// `properties` and the extra footer entries `footer`. Rows that compare equal keep the order
/// of `sources` (oldest file first). Returns the rows written.
pub fn merge_sorted(
    sources: &[&Path],
    schema: &SchemaRef,
    sorting: &[SortingColumn],
    properties: WriterProperties,
    footer: &[KeyValue],
    out: &mut File,
) -> Result<u64> {
    let fields = sorting
        .iter()
        .map(|c| {
            let field = schema.fields().get(c.column_idx as usize).ok_or_else(|| {
                Error::Parquet(format!(
                    "sorting column {} is not in the schema",
                    c.column_idx
                ))
            })?;
            Ok(SortField::new_with_options(
                field.data_type().clone(),
                SortOptions {
                    descending: c.descending,
                    nulls_first: c.nulls_first,
                },
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let converter = RowConverter::new(fields).map_err(|e| Error::Parquet(e.to_string()))?;
    let key_columns: Vec<usize> = sorting.iter().map(|c| c.column_idx as usize).collect();
    let keys_of = |batch: &RecordBatch| -> Result<Rows> {
        let columns: Vec<_> = key_columns
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        converter
            .convert_columns(&columns)
            .map_err(|e| Error::Parquet(e.to_string()))
    };

    // Every batch a pending output row may point into; cleared down to the cursors' current
    // batches after each output batch.
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut cursors: Vec<Cursor> = Vec::with_capacity(sources.len());
    for path in sources {
        let file =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let mut reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(parquet_error("reading", path))?
            .with_batch_size(SOURCE_BATCH_ROWS)
            .build()
            .map_err(parquet_error("reading", path))?;
        if let Some(batch) = reader.next() {
            let batch = batch.map_err(|e| Error::Parquet(format!("{}: {e}", path.display())))?;
            if batch.schema().fields() != schema.fields() {
                return Err(Error::Parquet(format!(
                    "{} has another schema than the files it would be merged with",
                    path.display()
                )));
            }
            cursors.push(Cursor {
                reader,
                slot: batches.len(),
                keys: keys_of(&batch)?,
                next: 0,
                rows: batch.num_rows(),
            });
            batches.push(batch);
        }
    }

    let mut writer = ArrowWriter::try_new(&mut *out, schema.clone(), Some(properties))
        .map_err(|e| Error::Parquet(e.to_string()))?;
    let mut pending: Vec<(usize, usize)> = Vec::with_capacity(OUTPUT_BATCH_ROWS);
    let mut written = 0u64;
    loop {
        // The smallest next row; k is at most MAX_SOURCES, so a scan beats a heap's upkeep.
        let mut smallest: Option<usize> = None;
        for (i, cursor) in cursors.iter().enumerate() {
            if cursor.next >= cursor.rows {
                continue;
            }
            let better = match smallest {
                None => true,
                Some(s) => {
                    let best = &cursors[s];
                    cursor.keys.row(cursor.next) < best.keys.row(best.next)
                }
            };
            if better {
                smallest = Some(i);
            }
        }
        let done = smallest.is_none();
        if let Some(i) = smallest {
            let cursor = &mut cursors[i];
            pending.push((cursor.slot, cursor.next));
            cursor.next += 1;
            if cursor.next == cursor.rows
                && let Some(batch) = cursor.reader.next()
            {
                let batch = batch.map_err(|e| Error::Parquet(e.to_string()))?;
                cursor.keys = keys_of(&batch)?;
                cursor.next = 0;
                cursor.rows = batch.num_rows();
                cursor.slot = batches.len();
                batches.push(batch);
            }
        }
        if !pending.is_empty() && (done || pending.len() == OUTPUT_BATCH_ROWS) {
            let batch = flush(schema, &mut batches, &mut cursors, &mut pending)?;
            written += batch.num_rows() as u64;
            writer
                .write(&batch)
                .map_err(|e| Error::Parquet(e.to_string()))?;
        }
        if done {
            break;
        }
    }
    for entry in footer {
        writer.append_key_value_metadata(entry.clone());
    }
    writer.close().map_err(|e| Error::Parquet(e.to_string()))?;
    out.flush()
        .map_err(|e| Error::io("writing a compacted file", e))?;
    Ok(written)
}

/// The pending rows as one batch; then drops the batches no cursor still reads.
fn flush(
    schema: &SchemaRef,
    batches: &mut Vec<RecordBatch>,
    cursors: &mut [Cursor],
    pending: &mut Vec<(usize, usize)>,
) -> Result<RecordBatch> {
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    let merged =
        interleave_record_batch(&refs, pending).map_err(|e| Error::Parquet(e.to_string()))?;
    // The sources' schemas carry their own footers' entries; the output carries the table's.
    let batch = RecordBatch::try_new(schema.clone(), merged.columns().to_vec())
        .map_err(|e| Error::Parquet(e.to_string()))?;
    pending.clear();
    let mut kept = Vec::with_capacity(cursors.len());
    for cursor in cursors.iter_mut() {
        if cursor.next < cursor.rows {
            kept.push(batches[cursor.slot].clone());
            cursor.slot = kept.len() - 1;
        }
    }
    *batches = kept;
    Ok(batch)
}
