//! Compaction: merges a writer's small files of an hour partition, once they are a few minutes
//! old, into a few large ones, in the order the files declare (spans by credential then time,
//! chains and edges by time).
//!
//! A query pays a fixed cost per file (listing, statistics, footer, bloom filter), and a busy
//! hour is published as a file every few seconds; fewer files make point lookups cheaper and
//! one credential's spans contiguous across the hour (BENCHMARKS.md, "Compaction").
//!
//! Readers never see a row twice or miss one (docs/adr/0011-compaction.md):
//! - the output is named `<writer>-<first>-<last>.parquet` after the sequence numbers of the
//!   files it merges, which must be all of that writer's visible files in that range;
//! - it is written hidden, fsync'd and renamed into place; from then on every reader of the
//!   layout ([`layout::retain_visible`]) skips the files it covers;
//! - then the sources are deleted. A crash in between leaves them covered, and the next pass
//!   deletes them.
//!
//! A publication into the same partition meanwhile takes a sequence number above every file
//! there, so a compaction never covers a file it did not read. One compaction runs per data
//! directory at a time (`.compaction.lock`); it runs beside `serve` (which calls it every
//! `compaction.interval`) or as `idtrail compact`.

mod merge;

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arrow::datatypes::SchemaRef;
use idtrail_schemas::layout;
use idtrail_schemas::{chains, edges, spans};
use parquet::file::metadata::KeyValue;
use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::telemetry::Telemetry;
use crate::wal::sync_dir;
use crate::writer::publisher::table_properties;
use crate::writer::{STITCHED_THROUGH_KEY, WAL_END_KEY};
use merge::{SourceFooter, read_footer};

/// Most files merged into one: the merge holds a batch of each in memory.
pub const MAX_SOURCES: usize = 64;

/// What a pass did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    /// Partitions (of any table) where files were merged.
    pub partitions: usize,
    /// Files merged away, and the files written in their place.
    pub files_merged: usize,
    pub files_written: usize,
    pub rows: u64,
    /// Files a compacted file already covered (left by a crash after its rename), deleted.
    pub leftovers_deleted: usize,
    /// Runs of files left alone because they do not declare one sort order (written with
    /// another `writer` setting or by another version) or their schemas differ.
    pub runs_skipped: usize,
    pub seconds: f64,
}

/// Holds `.compaction.lock` in the data directory: one compaction at a time.
pub fn lock(data_dir: &Path) -> Result<File> {
    crate::server::lock_file_in(
        data_dir,
        ".compaction.lock",
        format!("another compaction of {} is running", data_dir.display()),
    )
}

/// Compacts the files of `spans`, `chains` and `edges` this config's writer published at
/// least `compaction.min_age` before `now`, in every hour partition (the current one too: a
/// publication meanwhile takes a number above every file there, so it is never covered). Takes
/// the compaction lock.
pub fn compact(config: &Config, now: SystemTime) -> Result<Summary> {
    let _lock = lock(&config.data_dir)?;
    let started = Instant::now();
    let settled_before = now
        .checked_sub(config.compaction.min_age)
        .unwrap_or(UNIX_EPOCH);
    let mut summary = Summary::default();
    for (table, schema) in [
        (spans::TABLE, spans::schema()),
        (chains::TABLE, chains::schema()),
        (edges::TABLE, edges::schema()),
    ] {
        let table_dir = config.data_dir.join(table);
        let dirs = layout::partition_dirs(&table_dir)
            .map_err(|e| Error::io(format!("listing {}", table_dir.display()), e))?;
        for (_, dir) in dirs {
            let merged =
                compact_partition(config, (table, &schema), &dir, settled_before, &mut summary)?;
            summary.partitions += usize::from(merged);
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// A published file of this writer in the partition being compacted.
struct Candidate {
    name: String,
    first: u64,
    last: u64,
    /// When it was published (or written by a compaction).
    modified: SystemTime,
    footer: SourceFooter,
}

/// Merges runs of this writer's small files in `dir`. Returns whether anything was merged.
fn compact_partition(
    config: &Config,
    (table, schema): (&str, &SchemaRef),
    dir: &Path,
    settled_before: SystemTime,
    summary: &mut Summary,
) -> Result<bool> {
    let writer_id = config.writer_id.as_str();
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| layout::parse_file_seq(writer_id, n).is_some())
        .collect();
    // What a compacted file covers is garbage once it is in place: a crash came in between.
    let all = names.clone();
    layout::retain_visible(&mut names, |n| n);
    for leftover in all.iter().filter(|n| !names.contains(n)) {
        remove(&dir.join(leftover))?;
        summary.leftovers_deleted += 1;
    }
    let mut listed: Vec<(String, u64, u64, SystemTime)> = names
        .into_iter()
        .filter_map(|name| {
            let seqs = layout::parse_file_name(&name)?;
            let (first, last) = (seqs.first, seqs.last);
            let modified = fs::metadata(dir.join(&name))
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| SystemTime::now());
            Some((name, first, last, modified))
        })
        .collect();
    listed.sort_by_key(|f| f.1);
    // Footers are read only where a merge is possible.
    if listed.iter().filter(|f| f.3 <= settled_before).count() < 2 {
        return Ok(false);
    }
    let files = listed
        .into_iter()
        .map(|(name, first, last, modified)| {
            let footer = read_footer(&dir.join(&name))?;
            Ok(Candidate {
                name,
                first,
                last,
                modified,
                footer,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut merged_any = false;
    for run in runs(&files, config.compaction.target_rows, settled_before) {
        let run = &files[run];
        let footers: Vec<&SourceFooter> = run.iter().map(|f| &f.footer).collect();
        let first = footers[0];
        // Parquet footers carry each file's own key-value entries in the Arrow schema's
        // metadata (its WAL position, for one): the columns are what must agree, with the
        // table's schema as this version writes it.
        let same = footers.iter().all(|f| {
            f.sorting.is_some()
                && f.sorting == first.sorting
                && f.schema.fields() == schema.fields()
        });
        let Some(sorting) = first.sorting.clone().filter(|_| same) else {
            tracing::warn!(
                dir = %dir.display(),
                files = run.len(),
                "files not merged: they do not all declare one sort order and schema"
            );
            summary.runs_skipped += 1;
            continue;
        };
        let (lo, hi) = (run[0].first, run[run.len() - 1].last);
        // The newest source's position in the WAL travels with its rows: replay after a restart
        // reads it from the partition's newest file to skip what was published.
        let mut footer: Vec<KeyValue> = footers[footers.len() - 1]
            .key_value
            .iter()
            .filter(|kv| kv.key == WAL_END_KEY || kv.key == STITCHED_THROUGH_KEY)
            .cloned()
            .collect();
        let sources_named = run
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        footer.push(KeyValue::new(
            layout::COMPACTED_FROM_KEY.to_string(),
            sources_named,
        ));
        let properties = table_properties(table, &config.writer, writer_id)?
            .into_builder()
            .set_sorting_columns(Some(sorting.clone()))
            .build();
        let temp = dir.join(layout::compacted_temp_file_name(writer_id, lo, hi));
        let target = dir.join(layout::compacted_file_name(writer_id, lo, hi));
        let sources: Vec<PathBuf> = run.iter().map(|f| dir.join(&f.name)).collect();
        let source_refs: Vec<&Path> = sources.iter().map(PathBuf::as_path).collect();
        let write = || -> Result<u64> {
            let mut out = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)
                .map_err(|e| Error::io(format!("creating {}", temp.display()), e))?;
            let rows = merge::merge_sorted(
                &source_refs,
                schema,
                &sorting,
                properties,
                &footer,
                &mut out,
            )?;
            out.sync_all()
                .map_err(|e| Error::io(format!("syncing {}", temp.display()), e))?;
            fs::rename(&temp, &target)
                .map_err(|e| Error::io(format!("publishing {}", target.display()), e))?;
            sync_dir(dir).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
            Ok(rows)
        };
        let rows = match write() {
            Ok(rows) => rows,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        };
        let expected: u64 = footers.iter().map(|f| f.rows).sum();
        if rows != expected {
            // Cannot happen short of a reader bug; keep the sources and take the output back.
            let _ = fs::remove_file(&target);
            return Err(Error::Parquet(format!(
                "compacting {}: wrote {rows} rows from {expected}; sources kept",
                dir.display()
            )));
        }
        for source in &sources {
            remove(source)?;
        }
        sync_dir(dir).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
        summary.files_merged += run.len();
        summary.files_written += 1;
        summary.rows += rows;
        merged_any = true;
    }
    Ok(merged_any)
}

/// Runs of consecutive files (by sequence number) worth merging: each made of files under half
/// of `target_rows` published before `settled_before`, at most `target_rows` rows and
/// [`MAX_SOURCES`] files together, and at least two files. A large or recent file breaks a run,
/// so what compaction wrote is left alone and a run never skips a file inside its range.
fn runs(
    files: &[Candidate],
    target_rows: u64,
    settled_before: SystemTime,
) -> Vec<std::ops::Range<usize>> {
    let rows = |f: &Candidate| f.footer.rows;
    let mut runs = Vec::new();
    let mut start = 0;
    let mut total = 0u64;
    for (i, file) in files.iter().enumerate() {
        let mergeable = rows(file) < target_rows / 2 && file.modified <= settled_before;
        let fits = total + rows(file) <= target_rows && i - start < MAX_SOURCES;
        if !mergeable || !fits {
            if i - start >= 2 {
                runs.push(start..i);
            }
            start = if mergeable { i } else { i + 1 };
            total = if mergeable { rows(file) } else { 0 };
        } else {
            total += rows(file);
        }
    }
    if files.len() - start >= 2 {
        runs.push(start..files.len());
    }
    runs
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

/// `serve`'s compaction: a pass every `compaction.interval` until `stop` turns true. A pass cut
/// short by the process ending leaves a hidden temp file, removed at the next start, and
/// sources that are either all in place or covered.
pub async fn run_periodically(
    config: Config,
    telemetry: Arc<Telemetry>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let config = Arc::new(config);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.compaction.interval) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let pass_config = config.clone();
        let pass = tokio::task::spawn_blocking(move || compact(&pass_config, SystemTime::now()));
        match pass.await {
            Ok(Ok(summary)) => telemetry.compaction_finished(&summary),
            Ok(Err(error)) => telemetry.compaction_failed(&error),
            Err(error) => tracing::error!(%error, "the compaction pass panicked"),
        }
    }
}
