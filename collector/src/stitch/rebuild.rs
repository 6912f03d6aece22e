//! `idtrail restitch`: rebuilds the `chains` and `edges` tables from the `spans` files: a backfill
//! after running with the stitcher off, or a rebuild after the stitcher changed.
//!
//! - Spans partitions are read in time order, the files of one in name order. A trace is complete
//!   once no span of it appeared in the last hour of span time: before the partition starting at
//!   `t` is read, every trace whose newest span is before `t − 1 h` is stitched (and at the end,
//!   all). A trace with a gap of more than an hour becomes two, as a late span does in `serve`.
//! - Stitched traces are kept one more hour of span time, so that a consumer trace linked to a
//!   producer trace takes the producer's head (see [`LinkResolver`]). Traces holding nothing a
//!   head is made of (user, session, agent, credential) would lend nothing and are not kept.
//! - Memory stays under `stitcher.max_buffer_bytes`: past it, kept traces are forgotten first,
//!   then the traces whose newest span is oldest are stitched early (counted in
//!   [`Summary::traces_split`]).
//! - Every chain is revision 1 (a fresh rebuild). Edges are aggregated over the whole run: one
//!   row per edge and partition of first sight, as [`EdgeAggregate`] does per flush in `serve`.
//! - A partition is written once no unstitched trace has a span in it: its new chains and edges
//!   files are published as `serve` publishes them (same properties, atomic rename), then the
//!   chains and edges files that were there before the run are removed. A reader in between sees
//!   both sets; a crash in between leaves both, and running restitch again replaces both.
//! - With a time range, only partitions overlapping it are rebuilt (their old files removed even
//!   when no row replaces them). One hour on each side is read as context, for traces and links
//!   crossing the boundary; rows falling outside the range are dropped.
//! - The data directory's lock is held throughout: restitch refuses to run beside `serve`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use idtrail_schemas::layout::TimeRange;
use idtrail_schemas::layout::{self, HOUR_NANOS, Partition};
use idtrail_schemas::{chains, edges as edges_table, spans};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::ParquetMetaDataReader;
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use super::chain::{ChainRow, Head, LinkResolver, build_chains, head_of_span};
use super::edges::{self, EdgeAggregate};
use super::span::{Interner, LineageSpan, SpanId, TraceId};
use super::trace::Trace;
use super::{from_spans, output};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::server::lock_data_dir;
use crate::wal::{WalPosition, sync_dir};
use crate::writer::publisher::{chains_properties, edges_properties, encode, sort_chains};
use crate::writer::sink::{FileSequence, LocalDirSink, TableSink};
use crate::writer::{STITCHED_THROUGH_KEY, WAL_END_KEY};

/// Rows per record batch read from a spans file.
const BATCH_ROWS: usize = 8192;

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Hour partitions whose chains and edges were rebuilt.
    pub partitions: usize,
    pub files_read: usize,
    pub bytes_read: u64,
    pub spans_read: u64,
    /// Rows with malformed ids, left out.
    pub spans_skipped: u64,
    pub traces: u64,
    /// Traces stitched before they were quiet for an hour, to stay within the memory bound.
    pub traces_split: u64,
    pub chains: u64,
    pub edges: u64,
    pub files_written: usize,
    /// Chains and edges files from before the run, removed once replaced.
    pub files_removed: usize,
    pub elapsed_ms: u64,
}

/// Told how a run goes (a progress bar); every method defaults to nothing.
pub trait Progress {
    /// The run will read `files` spans files, `bytes` bytes in all.
    fn planned(&mut self, _files: usize, _bytes: u64) {}
    /// The counts moved on: after each record batch read and each partition written.
    fn advanced(&mut self, _summary: &Summary) {}
}

impl Progress for () {}

/// Rebuilds chains and edges of the partitions overlapping `range` (all when `None`) from the
/// spans files under `config.data_dir`, written under `config.writer_id` with the writer's
/// settings. Fails while another idtrail process holds the data directory.
pub fn rebuild(
    config: &Config,
    range: Option<TimeRange>,
    progress: &mut dyn Progress,
) -> Result<Summary> {
    let started = Instant::now();
    let data_dir = &config.data_dir;
    if !data_dir.is_dir() {
        return Err(Error::config(format!(
            "no data directory at {}",
            data_dir.display()
        )));
    }
    let _lock = lock_data_dir(config)?;
    // A compaction beside it could merge chains or edges files this run is about to replace
    // into one it does not know, and keep them alive.
    let _compaction = crate::compact::lock(&config.data_dir)?;
    let plan = Plan::list(data_dir, range)?;
    progress.planned(plan.files, plan.bytes);

    let mut old_files = BTreeMap::new();
    for partition in &plan.rebuilt {
        let mut files = existing_files(data_dir, chains::TABLE, partition)?;
        files.extend(existing_files(data_dir, edges_table::TABLE, partition)?);
        old_files.insert(*partition, files);
    }
    let mut run = Rebuild {
        sink: LocalDirSink::new(data_dir, &config.writer_id),
        chains_properties: chains_properties(&config.writer, &config.writer_id)?,
        edges_properties: edges_properties(&config.writer, &config.writer_id)?,
        // `serve`, replaying its WAL after a restart, skips a trace whose last position is at or
        // before the newest chains/edges file's `stitched_through`. A flush publishes every
        // record up to its `wal_end`, so every trace ending at or before the highest `wal_end`
        // of the spans files read was rebuilt here from all its spans: the same promise, and a
        // restart after restitch writes those traces' chains once. (Two limits: a trace reaching
        // past the partitions read is cut there anyway; and spans files of a flush that a crash
        // interrupted are not all published until `serve` restarts, so run restitch after it.)
        footer: plan
            .wal_end
            .map(|end| (STITCHED_THROUGH_KEY, end.to_string())),
        first_rebuilt: plan
            .rebuilt
            .first()
            .map_or(i64::MAX, Partition::start_nanos),
        rebuilt: plan.rebuilt.clone(),
        old_files,
        pending: VecDeque::new(),
        open: HashMap::new(),
        open_by_newest: BTreeSet::new(),
        kept: HashMap::new(),
        kept_by_newest: BTreeSet::new(),
        open_bytes: 0,
        kept_bytes: 0,
        max_bytes: config.stitcher.buffer_cap(),
        chains: BTreeMap::new(),
        edges: BTreeMap::new(),
        interner: Interner::default(),
        summary: Summary::default(),
        seq: FileSequence::default(),
        progress,
    };
    for (partition, files) in &plan.partitions {
        let start = partition.start_nanos();
        run.stitch_quiet(start.saturating_sub(HOUR_NANOS));
        run.forget_kept(start.saturating_sub(2 * HOUR_NANOS));
        run.write_finished(start)?;
        if run.rebuilt.contains(partition) {
            run.pending.push_back(*partition);
        }
        for file in files {
            run.read_file(&file.path, file.bytes)?;
        }
    }
    run.stitch_quiet(i64::MAX);
    run.write_finished(i64::MAX)?;
    run.summary.partitions = plan.rebuilt.len();
    run.summary.elapsed_ms = started.elapsed().as_millis() as u64;
    run.progress.advanced(&run.summary);
    Ok(run.summary)
}

struct SpansFile {
    path: PathBuf,
    bytes: u64,
}

/// The spans files to read, by partition, and which partitions are rebuilt.
struct Plan {
    partitions: BTreeMap<Partition, Vec<SpansFile>>,
    rebuilt: BTreeSet<Partition>,
    files: usize,
    bytes: u64,
    /// The highest `idtrail.wal_end` among the files.
    wal_end: Option<WalPosition>,
}

impl Plan {
    fn list(data_dir: &Path, range: Option<TimeRange>) -> Result<Plan> {
        let context = range.map(|r| TimeRange {
            start: r.start.saturating_sub(HOUR_NANOS),
            end: r.end.saturating_add(HOUR_NANOS),
        });
        let paths = idtrail_schemas::layout::published_files(data_dir, spans::TABLE, context)
            .map_err(|e| Error::io(format!("listing spans files in {}", data_dir.display()), e))?;
        let mut plan = Plan {
            partitions: BTreeMap::new(),
            rebuilt: BTreeSet::new(),
            files: 0,
            bytes: 0,
            wal_end: None,
        };
        for path in paths {
            let Some(partition) = partition_of(&path) else {
                continue;
            };
            let file = File::open(&path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            let bytes = file
                .metadata()
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
                .len();
            let metadata = ParquetMetaDataReader::new()
                .parse_and_finish(&file)
                .map_err(|e| Error::Parquet(format!("{}: {e}", path.display())))?;
            let wal_end = metadata
                .file_metadata()
                .key_value_metadata()
                .and_then(|kv| kv.iter().find(|kv| kv.key == WAL_END_KEY))
                .and_then(|kv| kv.value.as_deref())
                .and_then(|v| v.parse::<WalPosition>().ok());
            plan.wal_end = plan.wal_end.max(wal_end);
            if range.is_none_or(|r| overlaps(&r, &partition)) {
                plan.rebuilt.insert(partition);
            }
            plan.files += 1;
            plan.bytes += bytes;
            plan.partitions
                .entry(partition)
                .or_default()
                .push(SpansFile { path, bytes });
        }
        Ok(plan)
    }
}

fn overlaps(range: &TimeRange, partition: &Partition) -> bool {
    let start = partition.start_nanos();
    start < range.end && start.saturating_add(HOUR_NANOS) > range.start
}

/// The partition of a file at `<table>/date=…/hour=…/<name>`.
fn partition_of(path: &Path) -> Option<Partition> {
    let hour = path.parent()?;
    let date = hour.parent()?;
    Partition::parse(
        &date.file_name()?.to_string_lossy(),
        &hour.file_name()?.to_string_lossy(),
    )
}

/// Published files of `table` in `partition`, whoever wrote them.
fn existing_files(data_dir: &Path, table: &str, partition: &Partition) -> Result<Vec<PathBuf>> {
    let dir = data_dir.join(partition.dir(table));
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if layout::is_published_name(&name) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

struct OpenTrace {
    spans: Vec<LineageSpan>,
    oldest: i64,
    newest: i64,
    bytes: usize,
}

struct KeptTrace {
    spans: Vec<LineageSpan>,
    newest: i64,
    bytes: usize,
}

struct Rebuild<'a> {
    sink: LocalDirSink,
    chains_properties: WriterProperties,
    edges_properties: WriterProperties,
    footer: Option<(&'static str, String)>,
    rebuilt: BTreeSet<Partition>,
    /// Start of the first rebuilt partition: a trace ending before it yields no kept row.
    first_rebuilt: i64,
    /// Per rebuilt partition, its chains and edges files from before the run.
    old_files: BTreeMap<Partition, Vec<PathBuf>>,
    /// Rebuilt partitions read from, not yet written, oldest first.
    pending: VecDeque<Partition>,
    open: HashMap<TraceId, OpenTrace>,
    open_by_newest: BTreeSet<(i64, TraceId)>,
    /// Stitched traces, for links to them.
    kept: HashMap<TraceId, KeptTrace>,
    /// Entries of traces kept again since are stale and skipped.
    kept_by_newest: BTreeSet<(i64, TraceId)>,
    open_bytes: usize,
    kept_bytes: usize,
    max_bytes: usize,
    chains: BTreeMap<Partition, Vec<ChainRow>>,
    edges: BTreeMap<Partition, EdgeAggregate>,
    interner: Interner,
    summary: Summary,
    seq: FileSequence,
    progress: &'a mut dyn Progress,
}

impl Rebuild<'_> {
    fn read_file(&mut self, path: &Path, bytes: u64) -> Result<()> {
        let parquet =
            |e: parquet::errors::ParquetError| Error::Parquet(format!("{}: {e}", path.display()));
        let file =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet)?;
        let rows = builder.metadata().file_metadata().num_rows().max(1) as u64;
        let mask = from_spans::projection(builder.parquet_schema());
        let reader = builder
            .with_projection(mask)
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(parquet)?;
        let base = self.summary.bytes_read;
        let mut seen = 0u64;
        for batch in reader {
            let batch = batch.map_err(|e| Error::Parquet(format!("{}: {e}", path.display())))?;
            let decoded = from_spans::decode(&batch, &mut self.interner)
                .map_err(|e| Error::Parquet(format!("{}: {e}", path.display())))?;
            seen += batch.num_rows() as u64;
            self.summary.spans_read += decoded.spans.len() as u64;
            self.summary.spans_skipped += decoded.skipped as u64;
            for (trace_id, span) in decoded.spans {
                self.add(trace_id, span);
            }
            self.bound_memory();
            self.summary.bytes_read = base + bytes * seen.min(rows) / rows;
            self.progress.advanced(&self.summary);
        }
        self.summary.bytes_read = base + bytes;
        self.summary.files_read += 1;
        self.progress.advanced(&self.summary);
        Ok(())
    }

    fn add(&mut self, trace_id: TraceId, span: LineageSpan) {
        let bytes = span.estimated_bytes();
        let at = span.start_time;
        let trace = self.open.entry(trace_id).or_insert_with(|| OpenTrace {
            spans: Vec::new(),
            oldest: at,
            newest: at,
            bytes: 0,
        });
        if trace.spans.is_empty() || at > trace.newest {
            self.open_by_newest.remove(&(trace.newest, trace_id));
            trace.newest = trace.newest.max(at);
            self.open_by_newest.insert((trace.newest, trace_id));
        }
        trace.oldest = trace.oldest.min(at);
        trace.spans.push(span);
        trace.bytes += bytes;
        self.open_bytes += bytes;
    }

    /// Stitches every open trace whose newest span is before `before`, oldest first.
    fn stitch_quiet(&mut self, before: i64) {
        while let Some(&(newest, id)) = self.open_by_newest.first() {
            if newest >= before {
                break;
            }
            self.stitch(id);
        }
    }

    /// Forgets kept traces whose newest span is before `before`.
    fn forget_kept(&mut self, before: i64) {
        while self
            .kept_by_newest
            .first()
            .is_some_and(|&(newest, _)| newest < before)
        {
            self.forget_oldest_kept();
        }
    }

    fn forget_oldest_kept(&mut self) {
        let Some((newest, id)) = self.kept_by_newest.pop_first() else {
            return;
        };
        if self.kept.get(&id).is_some_and(|k| k.newest == newest)
            && let Some(kept) = self.kept.remove(&id)
        {
            self.kept_bytes -= kept.bytes;
        }
    }

    /// Past the memory bound: forget kept traces, then stitch the stalest open ones early.
    fn bound_memory(&mut self) {
        while self.open_bytes + self.kept_bytes > self.max_bytes {
            if !self.kept_by_newest.is_empty() {
                self.forget_oldest_kept();
            } else if let Some(&(_, id)) = self.open_by_newest.first() {
                self.summary.traces_split += 1;
                self.stitch(id);
            } else {
                break;
            }
        }
    }

    fn stitch(&mut self, id: TraceId) {
        let Some(trace) = self.open.remove(&id) else {
            return;
        };
        self.open_by_newest.remove(&(trace.newest, id));
        self.open_bytes -= trace.bytes;
        self.summary.traces += 1;
        if self.summary.traces.is_multiple_of(1024) {
            self.progress.advanced(&self.summary);
        }
        // A trace ending before the first rebuilt partition has rows only in context partitions.
        if trace.newest >= self.first_rebuilt {
            let view = Trace::new(id, &trace.spans);
            let known = KnownTraces {
                open: &self.open,
                kept: &self.kept,
            };
            for chain in build_chains(&view, &known) {
                let partition = Partition::of_nanos(chain.time);
                if self.rebuilt.contains(&partition) {
                    self.chains.entry(partition).or_default().push(chain);
                }
            }
            let trace_hex = hex::encode(id);
            for (key, (count, first, last)) in edges::count(&edges::observe(&view)) {
                let partition = Partition::of_nanos(first);
                if self.rebuilt.contains(&partition) {
                    self.edges
                        .entry(partition)
                        .or_default()
                        .add(key, count, first, last, &trace_hex);
                }
            }
        }
        if lends_a_head(&trace.spans) {
            if let Some(previous) = self.kept.remove(&id) {
                self.kept_bytes -= previous.bytes;
            }
            self.kept_bytes += trace.bytes;
            self.kept_by_newest.insert((trace.newest, id));
            self.kept.insert(
                id,
                KeptTrace {
                    spans: trace.spans,
                    newest: trace.newest,
                    bytes: trace.bytes,
                },
            );
        }
    }

    /// Writes every pending partition ending at or before `read_up_to` (the start of the next
    /// partition to read) that no open trace has a span in.
    fn write_finished(&mut self, read_up_to: i64) -> Result<()> {
        let oldest_open = self.open.values().map(|t| t.oldest).min();
        let limit = oldest_open.map_or(read_up_to, |o| o.min(read_up_to));
        while let Some(&partition) = self.pending.front() {
            if partition.start_nanos().saturating_add(HOUR_NANOS) > limit {
                break;
            }
            self.pending.pop_front();
            self.write_partition(partition)?;
        }
        Ok(())
    }

    /// Publishes the partition's new chains and edges files, then removes its old ones.
    fn write_partition(&mut self, partition: Partition) -> Result<()> {
        if let Some(mut rows) = self.chains.remove(&partition) {
            sort_chains(&mut rows);
            let batch = output::chains_batch(&rows)
                .map_err(|e| Error::Parquet(format!("building the chains batch: {e}")))?;
            let properties = self.chains_properties.clone();
            self.publish(chains::TABLE, &partition, &batch, properties)?;
            self.summary.chains += rows.len() as u64;
        }
        let edge_rows = self
            .edges
            .remove(&partition)
            .and_then(|mut aggregate| aggregate.take().remove(&partition));
        if let Some(rows) = edge_rows {
            let batch = output::edges_batch(&rows)
                .map_err(|e| Error::Parquet(format!("building the edges batch: {e}")))?;
            let properties = self.edges_properties.clone();
            self.publish(edges_table::TABLE, &partition, &batch, properties)?;
            self.summary.edges += rows.len() as u64;
        }
        let old = self.old_files.remove(&partition).unwrap_or_default();
        let mut dirs = BTreeSet::new();
        for path in old {
            match fs::remove_file(&path) {
                Ok(()) => self.summary.files_removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("removing {}", path.display()), e)),
            }
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        for dir in dirs {
            sync_dir(&dir).map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
        }
        self.progress.advanced(&self.summary);
        Ok(())
    }

    fn publish(
        &mut self,
        table: &str,
        partition: &Partition,
        batch: &arrow::array::RecordBatch,
        properties: WriterProperties,
    ) -> Result<()> {
        let bytes = encode(batch, properties, &self.footer)?;
        // Numbered as `serve` numbers its files: the new files sort after every file of this
        // writer (the sink also makes sure of it).
        let seq = self.seq.next_seq();
        self.sink.publish(table, partition, seq, &bytes)?;
        self.summary.files_written += 1;
        Ok(())
    }
}

/// Whether a chain linked to this trace could take anything from it: a head is made of users,
/// sessions, agents and the subjects and actors of credentials.
fn lends_a_head(spans: &[LineageSpan]) -> bool {
    spans.iter().any(|s| {
        s.facts().is_some_and(|f| {
            f.user_id.is_some()
                || f.session_id.is_some()
                || f.agent.is_some()
                || f.credential.is_some()
        })
    })
}

/// The traces the run knows (open or kept), for resolving span links.
struct KnownTraces<'a> {
    open: &'a HashMap<TraceId, OpenTrace>,
    kept: &'a HashMap<TraceId, KeptTrace>,
}

impl LinkResolver for KnownTraces<'_> {
    fn head_of_linked(&self, trace_id: &TraceId, span_id: &SpanId) -> Option<Head> {
        // A trace split by a long gap may be open and kept at once; the span is in one part.
        let open = self.open.get(trace_id).map(|t| &t.spans);
        let kept = self.kept.get(trace_id).map(|t| &t.spans);
        open.into_iter()
            .chain(kept)
            .find_map(|spans| head_of_span(trace_id, spans, span_id))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, StringArray};

    use super::*;
    use crate::record::{BatchHeader, EffectKind, ResourceInfo, SpanBatch, SpanKind, SpanRow};
    use crate::writer::spans_batch;

    /// 2026-11-22T10:00:00Z
    const T10: i64 = 1_795_341_600_000_000_000;
    const MINUTE: i64 = 60_000_000_000;

    fn span(trace: u8, id: u8, parent: Option<u8>, at: i64, kind: SpanKind) -> SpanRow {
        SpanRow {
            trace_id: [trace; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            start_time: at,
            end_time: at + 1000,
            name: format!("span {id}"),
            kind,
            ..Default::default()
        }
    }

    fn user(mut row: SpanRow, user: &str) -> SpanRow {
        row.user_id = Some(user.into());
        row
    }

    fn write(mut row: SpanRow, target: &str) -> SpanRow {
        row.effect_kind = Some(EffectKind::Db);
        row.effect_operation = Some("UPDATE".into());
        row.effect_target = Some(target.into());
        row.effect_is_write = Some(true);
        row
    }

    fn link(mut row: SpanRow, trace: u8, span: u8) -> SpanRow {
        row.links = vec![([trace; 16], [span; 8])];
        row
    }

    /// Publishes `rows` as spans files (one per partition), footed with `wal_end`.
    fn publish_spans(data_dir: &Path, rows: Vec<SpanRow>, wal_end: &str) {
        let sink = LocalDirSink::new(data_dir, "local");
        let mut by_partition: BTreeMap<Partition, Vec<SpanRow>> = BTreeMap::new();
        for row in rows {
            by_partition
                .entry(Partition::of_nanos(row.start_time))
                .or_default()
                .push(row);
        }
        for (partition, spans) in by_partition {
            let batch = SpanBatch {
                header: Arc::new(BatchHeader {
                    resources: vec![ResourceInfo {
                        service_name: Some("svc".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                spans,
            };
            let record = spans_batch::to_record_batch(&batch).unwrap();
            let footer = Some((WAL_END_KEY, wal_end.to_string()));
            let bytes = encode(&record, WriterProperties::default(), &footer).unwrap();
            sink.publish(spans::TABLE, &partition, 1, &bytes).unwrap();
        }
    }

    fn config(data_dir: &Path) -> Config {
        Config {
            data_dir: data_dir.to_path_buf(),
            ..Default::default()
        }
    }

    /// `(effect span id, user)` of every chain, with the partition it is in.
    fn chains_by_partition(data_dir: &Path) -> Vec<(String, String, Option<String>)> {
        let mut out = Vec::new();
        for path in idtrail_schemas::layout::published_files(data_dir, chains::TABLE, None).unwrap()
        {
            if fs::read(&path).unwrap() == b"old" {
                continue;
            }
            let partition = partition_of(&path).unwrap().to_string();
            let file = File::open(&path).unwrap();
            for batch in ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap()
            {
                let batch = batch.unwrap();
                let column = |name| {
                    batch
                        .column_by_name(name)
                        .unwrap()
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .unwrap()
                        .clone()
                };
                let (effects, users) = (column("effect_span_id"), column("user_id"));
                for i in 0..batch.num_rows() {
                    let user = (!users.is_null(i)).then(|| users.value(i).to_string());
                    out.push((partition.clone(), effects.value(i)[..2].to_string(), user));
                }
            }
        }
        out.sort();
        out
    }

    fn footer_of(path: &Path, key: &str) -> Option<String> {
        let file = File::open(path).unwrap();
        let metadata = ParquetMetaDataReader::new()
            .parse_and_finish(&file)
            .unwrap();
        metadata
            .file_metadata()
            .key_value_metadata()?
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
    }

    #[test]
    fn a_range_rebuilds_its_partitions_only_reading_an_hour_either_side() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        // alice at 09:50, her write at 10:10; bob's trace entirely at 11:30.
        publish_spans(
            data,
            vec![
                user(
                    span(1, 0x11, None, T10 - 10 * MINUTE, SpanKind::Server),
                    "alice",
                ),
                write(
                    span(1, 0x12, Some(0x11), T10 + 10 * MINUTE, SpanKind::Client),
                    "a.b",
                ),
                write(
                    span(1, 0x13, Some(0x11), T10 - 5 * MINUTE, SpanKind::Client),
                    "a.c",
                ),
                user(
                    span(2, 0x21, None, T10 + 90 * MINUTE, SpanKind::Server),
                    "bob",
                ),
                write(
                    span(2, 0x22, Some(0x21), T10 + 91 * MINUTE, SpanKind::Client),
                    "b.c",
                ),
            ],
            "3:100",
        );
        let old = |table: &str, hour: i64| {
            let partition = Partition::of_nanos(T10 + hour * HOUR_NANOS);
            let path = data
                .join(partition.dir(table))
                .join("local-000000000001.parquet");
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, b"old").unwrap();
            path
        };
        let (old_09, old_10, old_edges_10) = (old("chains", -1), old("chains", 0), old("edges", 0));

        let range = TimeRange {
            start: T10,
            end: T10 + HOUR_NANOS,
        };
        let summary = rebuild(&config(data), Some(range), &mut ()).unwrap();
        assert_eq!(summary.partitions, 1);
        assert_eq!(
            summary.files_read, 3,
            "hour 10 and an hour of context each side"
        );
        assert_eq!(summary.chains, 1);
        assert_eq!(summary.files_removed, 2);
        assert!(old_09.exists(), "outside the range: left alone");
        assert!(!old_10.exists() && !old_edges_10.exists(), "replaced");
        assert_eq!(
            chains_by_partition(data),
            vec![(
                "date=2026-11-22/hour=10".into(),
                "12".into(),
                Some("alice".into())
            )],
            "the 10:10 write is charged to alice, whose span is in the context hour"
        );
        let written = idtrail_schemas::layout::published_files(data, chains::TABLE, None).unwrap();
        let new = written.iter().find(|p| **p != old_09).unwrap();
        assert_eq!(
            footer_of(new, STITCHED_THROUGH_KEY).as_deref(),
            Some("3:100")
        );
        assert_eq!(
            footer_of(new, "idtrail.writer_id").as_deref(),
            Some("local")
        );
    }

    #[test]
    fn a_linked_consumer_takes_the_producer_head_for_an_hour_more() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let root = user(
            span(1, 0x11, None, T10 + 30 * MINUTE, SpanKind::Server),
            "alice",
        );
        let publish = span(1, 0x12, Some(0x11), T10 + 31 * MINUTE, SpanKind::Producer);
        // 50 minutes later: the producer trace is stitched, and kept.
        let soon = link(
            span(2, 0x21, None, T10 + 80 * MINUTE, SpanKind::Consumer),
            1,
            0x12,
        );
        let soon_write = write(
            span(2, 0x22, Some(0x21), T10 + 81 * MINUTE, SpanKind::Client),
            "x",
        );
        // Three hours later: forgotten.
        let late = link(
            span(3, 0x31, None, T10 + 210 * MINUTE, SpanKind::Consumer),
            1,
            0x12,
        );
        let late_write = write(
            span(3, 0x32, Some(0x31), T10 + 211 * MINUTE, SpanKind::Client),
            "x",
        );
        publish_spans(
            data,
            vec![root, publish, soon, soon_write, late, late_write],
            "1:1",
        );
        let summary = rebuild(&config(data), None, &mut ()).unwrap();
        assert_eq!(summary.traces, 3);
        let chains = chains_by_partition(data);
        assert_eq!(
            chains,
            vec![
                (
                    "date=2026-11-22/hour=11".into(),
                    "22".into(),
                    Some("alice".into())
                ),
                ("date=2026-11-22/hour=13".into(), "32".into(), None),
            ]
        );
    }

    #[test]
    fn the_memory_bound_stitches_early_and_a_long_gap_splits_a_trace() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        // A root at 10:00 and a write under it at 12:30: more than an hour apart.
        publish_spans(
            data,
            vec![
                user(span(1, 0x11, None, T10, SpanKind::Server), "alice"),
                write(
                    span(1, 0x12, Some(0x11), T10 + 150 * MINUTE, SpanKind::Client),
                    "x",
                ),
            ],
            "1:1",
        );
        let summary = rebuild(&config(data), None, &mut ()).unwrap();
        assert_eq!(summary.traces, 2, "two traces by the hour-quiet rule");
        assert_eq!(
            chains_by_partition(data),
            vec![("date=2026-11-22/hour=12".into(), "12".into(), None)]
        );

        let mut tiny = config(data);
        tiny.stitcher.max_buffer_bytes = Some(1);
        let bounded = rebuild(&tiny, None, &mut ()).unwrap();
        assert_eq!(bounded.traces_split, 2);
        assert_eq!(bounded.chains, 1);
        assert_eq!(bounded.files_removed, summary.files_written);
    }
}
