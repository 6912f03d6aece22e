//! Which files a lineage graph lacks, and reading them: what lets the graph follow a running
//! collector (a file every few seconds) and compaction (files replaced by one holding the same
//! rows) without reading millions of edges again.

use std::collections::{HashMap, HashSet};

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use idtrail_schemas::layout;
use object_store::GetOptions;
use object_store::path::Path as ObjectPath;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::ParquetMetaDataReader;

use super::graph::Stamp;
use crate::error::{QueryError, Result};
use crate::store::TableStore;

/// Files read at once when loading a graph.
const READ_CONCURRENCY: usize = 4;

/// The files to read to bring a graph built from the files `then` up to the files `now`, or
/// `None` when only a full load is right: a file changed in place or disappeared other than
/// by compaction, or a compacted file merged some files the graph holds and some it does not.
/// A compacted file whose sources the graph holds adds nothing, and its sources' departure is
/// expected.
pub(super) async fn files_to_add(
    store: &TableStore,
    then: &Stamp,
    now: &Stamp,
) -> Result<Option<Vec<ObjectPath>>> {
    let held: HashMap<&ObjectPath, (u64, chrono::DateTime<chrono::Utc>)> =
        then.iter().map(|(p, size, at)| (p, (*size, *at))).collect();
    let mut to_read = Vec::new();
    let mut taken_over: HashSet<ObjectPath> = HashSet::new();
    for (path, size, at) in now {
        match held.get(path) {
            Some(&(s, a)) if s == *size && a == *at => continue,
            Some(_) => return Ok(None),
            None => {}
        }
        let name = path.filename().unwrap_or_default();
        if layout::parse_file_name(name).is_some_and(|f| f.is_compacted()) {
            let Some(sources) = compacted_from(store, path, *size).await? else {
                return Ok(None);
            };
            let dir = path.as_ref().rsplit_once('/').map_or("", |(dir, _)| dir);
            let sources: Vec<ObjectPath> = sources
                .iter()
                .map(|s| ObjectPath::from(format!("{dir}/{s}")))
                .collect();
            let holding = sources.iter().filter(|s| held.contains_key(s)).count();
            if holding == sources.len() {
                taken_over.extend(sources);
                continue;
            }
            if holding > 0 {
                return Ok(None);
            }
        }
        to_read.push(path.clone());
    }
    let listed: HashSet<&ObjectPath> = now.iter().map(|(p, _, _)| p).collect();
    let vanished = then
        .iter()
        .any(|(p, _, _)| !listed.contains(p) && !taken_over.contains(p));
    Ok((!vanished).then_some(to_read))
}

/// The sources a compacted file names in its footer; `None` for a file without the entry.
async fn compacted_from(
    store: &TableStore,
    path: &ObjectPath,
    size: u64,
) -> Result<Option<Vec<String>>> {
    let reading = |e: String| QueryError::storage(format!("reading the footer of {path}"), e);
    if size < 8 {
        return Err(reading("shorter than a Parquet footer".into()));
    }
    let tail = get_range(store, path, size - 8..size).await?;
    let length = u64::from(u32::from_le_bytes(
        tail.get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| reading("no footer length".into()))?,
    ));
    if length + 8 > size {
        return Err(reading(format!("footer of {length} bytes in {size}")));
    }
    let footer = get_range(store, path, size - 8 - length..size - 8).await?;
    let metadata =
        ParquetMetaDataReader::decode_metadata(&footer).map_err(|e| reading(e.to_string()))?;
    Ok(metadata
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == layout::COMPACTED_FROM_KEY))
        .and_then(|e| e.value.as_deref())
        .map(|names| names.split(',').map(str::to_string).collect()))
}

async fn get_range(
    store: &TableStore,
    path: &ObjectPath,
    range: std::ops::Range<u64>,
) -> Result<Bytes> {
    store
        .store()
        .get_ranges(path, &[range])
        .await
        .map_err(|e| QueryError::storage(format!("reading {path}"), e))?
        .pop()
        .ok_or_else(|| QueryError::storage(format!("reading {path}"), "no bytes returned"))
}

/// `columns` of every row of `paths`, read a few files at a time, decoded off the async
/// workers.
pub(super) async fn read_columns(
    store: &TableStore,
    paths: &[ObjectPath],
    columns: &'static [&'static str],
) -> Result<Vec<RecordBatch>> {
    let files: Vec<Vec<RecordBatch>> = stream::iter(paths.iter().cloned())
        .map(|path| async move {
            let name = path.to_string();
            let reading = move |e: String| QueryError::storage(format!("reading {name}"), e);
            let bytes = store
                .store()
                .get_opts(&path, GetOptions::default())
                .await
                .map_err(|e| reading(e.to_string()))?
                .bytes()
                .await
                .map_err(|e| reading(e.to_string()))?;
            tokio::task::spawn_blocking(move || decode(bytes, columns).map_err(reading))
                .await
                .map_err(|e| QueryError::Execution(format!("reading a table file: {e}")))?
        })
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(files.into_iter().flatten().collect())
}

fn decode(bytes: Bytes, columns: &[&str]) -> std::result::Result<Vec<RecordBatch>, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| e.to_string())?;
    let roots: Vec<usize> = columns
        .iter()
        .map(|c| builder.schema().index_of(c).map_err(|e| e.to_string()))
        .collect::<std::result::Result<_, _>>()?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| e.to_string())?
        .map(|batch| batch.map_err(|e| e.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use parquet::arrow::ArrowWriter;
    use parquet::file::metadata::KeyValue;

    use super::*;

    const HOUR: &str = "edges/date=2026-11-22/hour=13";

    /// A Parquet file of `rows` rows; a compacted one names its sources in its footer.
    fn write(root: &std::path::Path, name: &str, rows: i64, sources: Option<&[&str]>) {
        let dir = root.join(HOUR);
        std::fs::create_dir_all(&dir).unwrap();
        let batch = RecordBatch::try_from_iter([(
            "count",
            Arc::new(Int64Array::from_iter_values(0..rows)) as _,
        )])
        .unwrap();
        let mut writer = ArrowWriter::try_new(
            std::fs::File::create(dir.join(name)).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        writer.write(&batch).unwrap();
        if let Some(sources) = sources {
            writer.append_key_value_metadata(KeyValue::new(
                layout::COMPACTED_FROM_KEY.to_string(),
                sources.join(","),
            ));
        }
        writer.close().unwrap();
    }

    async fn stamp(store: &TableStore) -> Stamp {
        let mut files: Stamp = store
            .store()
            .list(Some(&store.table_prefix("edges")))
            .map_ok(|m| (m.location, m.size, m.last_modified))
            .try_collect()
            .await
            .unwrap();
        files.sort();
        files
    }

    fn names(paths: Option<Vec<ObjectPath>>) -> Option<Vec<String>> {
        paths.map(|p| {
            p.iter()
                .map(|p| p.filename().unwrap().to_string())
                .collect()
        })
    }

    #[tokio::test]
    async fn a_graph_reads_only_what_it_lacks_and_knows_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let store = TableStore::open(root).unwrap();
        let (a1, a2, a3) = (
            layout::file_name("w", 1),
            layout::file_name("w", 2),
            layout::file_name("w", 3),
        );
        write(root, &a1, 3, None);
        write(root, &a2, 3, None);
        let first = stamp(&store).await;
        write(root, &a3, 3, None);
        let second = stamp(&store).await;
        assert_eq!(
            names(files_to_add(&store, &first, &second).await.unwrap()),
            Some(vec![a3.clone()]),
            "a new file is read"
        );

        // Compaction of files the graph holds adds nothing, and their removal is expected.
        let compacted = layout::compacted_file_name("w", 1, 3);
        write(root, &compacted, 9, Some(&[&a1, &a2, &a3]));
        for name in [&a1, &a2, &a3] {
            std::fs::remove_file(root.join(HOUR).join(name)).unwrap();
        }
        let third = stamp(&store).await;
        assert_eq!(
            names(files_to_add(&store, &second, &third).await.unwrap()),
            Some(vec![])
        );
        // A graph that never saw a3 cannot tell which of the compacted rows it has.
        assert_eq!(files_to_add(&store, &first, &third).await.unwrap(), None);
        // One that saw none of them reads the compacted file.
        assert_eq!(
            names(files_to_add(&store, &Vec::new(), &third).await.unwrap()),
            Some(vec![compacted.clone()])
        );
        // A file gone without a compacted file taking it over (restitch, a deletion), or one
        // rewritten in place, needs a full load.
        assert_eq!(
            files_to_add(&store, &third, &Vec::new()).await.unwrap(),
            None
        );
        let mut rewritten = third.clone();
        rewritten[0].1 += 1;
        assert_eq!(
            files_to_add(&store, &third, &rewritten).await.unwrap(),
            None
        );
    }
}
