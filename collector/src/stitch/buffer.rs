//! The trace buffer: holds each trace's spans until the trace has been quiet for the window,
//! then stitches it; keeps stitched traces a while longer so a late span can re-stitch them.
//!
//! Traces are stitched in the order of their last span's WAL position (which is also the order
//! of their last arrival, as spans reach the buffer in log order). That order is what makes a
//! restart exactly-once: every chains and edges file records the position its traces reach
//! (`idtrail.stitched_through`), and a replayed trace at or before it is not written again.
//! See docs/adr/0004-stitching-and-the-wal-checkpoint.md.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

// aHash, not SipHash: these maps are keyed per span (BENCHMARKS.md, stop 13). Randomly seeded,
// so client-chosen trace ids cannot aim at one bucket.
use ahash::AHashMap as HashMap;
use idtrail_schemas::layout::Partition;
use idtrail_schemas::{chains, edges as edges_table};

use super::chain::{ChainRow, Head, LinkResolver, build_chains, head_of_span};
use super::edges::{self, EdgeAggregate, EdgeKey};
use super::span::{Interner, LineageSpan, SpanId, TraceId};
use super::trace::Trace;
use crate::config::StitcherConfig;
use crate::record::SpanBatch;
use crate::telemetry::Telemetry;
use crate::wal::WalPosition;

/// Why a trace was stitched before its quiet window ended (a label of
/// `idtrail_traces_stitched_early`).
#[derive(Clone, Copy, Debug)]
pub enum EarlyStitch {
    /// The buffer reached `stitcher.max_buffer_bytes`.
    BufferFull,
    /// The process's memory in use neared `receivers.memory_soft_limit_bytes`.
    MemoryPressure,
}

impl EarlyStitch {
    pub fn label(self) -> &'static str {
        match self {
            EarlyStitch::BufferFull => "buffer_full",
            EarlyStitch::MemoryPressure => "memory_pressure",
        }
    }
}

/// What stitching produced since the last flush.
#[derive(Default)]
pub struct Stitched {
    pub chains: BTreeMap<Partition, Vec<ChainRow>>,
    pub edges: EdgeAggregate,
    /// The last position of the last trace stitched: every trace ending at or before it is in
    /// these rows or earlier files.
    pub stitched_through: Option<WalPosition>,
}

impl Stitched {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.edges.is_empty() && self.stitched_through.is_none()
    }

    /// Takes back rows whose publication failed, so the next flush writes them.
    pub fn restore(
        &mut self,
        chains: BTreeMap<Partition, Vec<ChainRow>>,
        edges: BTreeMap<Partition, Vec<super::EdgeRow>>,
        stitched_through: Option<WalPosition>,
    ) {
        for (partition, rows) in chains {
            self.chains.entry(partition).or_default().extend(rows);
        }
        for row in edges.into_values().flatten() {
            self.edges.add(
                row.key,
                row.count,
                row.first_seen,
                row.last_seen,
                &row.sample_trace_id,
            );
        }
        self.stitched_through = self.stitched_through.max(stitched_through);
    }
}

/// Tells whether a replayed trace's rows for a table partition are already published, i.e. the
/// newest file there records a `stitched_through` at or past the trace's last position.
pub trait PublishedCheck {
    fn covers(&mut self, table: &'static str, partition: &Partition, last: WalPosition) -> bool;
}

/// What a trace has already contributed, so a re-stitch writes only what changed.
#[derive(Default)]
struct History {
    /// Per effect span: current revision and content hash.
    revisions: HashMap<SpanId, (u32, u64)>,
    /// Per edge: observations already counted.
    edges: HashMap<EdgeKey, u64>,
}

struct OpenTrace {
    spans: Vec<LineageSpan>,
    /// WAL position of the first span since the trace was (re)opened: the WAL must keep it.
    first: WalPosition,
    last: WalPosition,
    last_arrival: Instant,
    bytes: usize,
    /// Some span came from WAL replay, so its rows may already be published.
    replayed: bool,
    history: History,
}

struct RetainedTrace {
    spans: Vec<LineageSpan>,
    bytes: usize,
    stitched_at: Instant,
    history: History,
}

pub struct TraceBuffer {
    config: StitcherConfig,
    telemetry: Arc<Telemetry>,
    open: HashMap<TraceId, OpenTrace>,
    /// Open traces by last position: the front is the next to go quiet.
    by_last: BTreeSet<(WalPosition, TraceId)>,
    retained: HashMap<TraceId, RetainedTrace>,
    /// Retained traces by stitch time; entries of traces re-opened since are stale and skipped.
    retained_order: VecDeque<(Instant, TraceId)>,
    open_bytes: usize,
    open_spans: usize,
    retained_bytes: usize,
    interner: Interner,
    /// Highest position replayed from the WAL at start-up.
    replay_end: Option<WalPosition>,
    /// Highest revision of each chain published before the restart (within the dedup window),
    /// for traces re-stitched after it whose history died with the old process.
    published_revisions: HashMap<(TraceId, SpanId), u32>,
    pub out: Stitched,
}

impl TraceBuffer {
    pub fn new(config: &StitcherConfig, telemetry: Arc<Telemetry>) -> TraceBuffer {
        TraceBuffer {
            config: config.clone(),
            telemetry,
            open: HashMap::new(),
            by_last: BTreeSet::new(),
            retained: HashMap::new(),
            retained_order: VecDeque::new(),
            open_bytes: 0,
            open_spans: 0,
            retained_bytes: 0,
            interner: Interner::default(),
            replay_end: None,
            published_revisions: HashMap::new(),
            out: Stitched::default(),
        }
    }

    /// Adds the spans of a durable batch that `keep` admits (the writer's dedup decides).
    pub fn add_batch(
        &mut self,
        batch: &SpanBatch,
        keep: &[bool],
        position: WalPosition,
        replayed: bool,
        now: Instant,
    ) {
        if replayed {
            self.replay_end = self.replay_end.max(Some(position));
        }
        for (row, _) in batch.spans.iter().zip(keep).filter(|(_, k)| **k) {
            let span = LineageSpan::from_row(row, batch.resource_of(row), &mut self.interner);
            self.add(row.trace_id, span, position, replayed, now);
        }
        self.telemetry
            .set_stitch_buffer(self.open_spans, self.buffered_bytes());
    }

    fn add(
        &mut self,
        trace_id: TraceId,
        span: LineageSpan,
        position: WalPosition,
        replayed: bool,
        now: Instant,
    ) {
        let bytes = span.estimated_bytes();
        let trace = match self.open.entry(trace_id) {
            std::collections::hash_map::Entry::Occupied(entry) => {
                let trace = entry.into_mut();
                self.by_last.remove(&(trace.last, trace_id));
                trace
            }
            std::collections::hash_map::Entry::Vacant(entry) => {
                // A span for a trace stitched a moment ago: re-open it with what it had.
                let (spans, history, reopened_bytes) = match self.retained.remove(&trace_id) {
                    Some(r) => {
                        self.retained_bytes -= r.bytes;
                        self.open_spans += r.spans.len();
                        self.telemetry.late_span();
                        (r.spans, r.history, r.bytes)
                    }
                    None => (Vec::new(), History::default(), 0),
                };
                self.open_bytes += reopened_bytes;
                entry.insert(OpenTrace {
                    spans,
                    first: position,
                    last: position,
                    last_arrival: now,
                    bytes: reopened_bytes,
                    replayed: false,
                    history,
                })
            }
        };
        trace.spans.push(span);
        trace.last = position;
        trace.last_arrival = now;
        trace.bytes += bytes;
        trace.replayed |= replayed;
        self.open_bytes += bytes;
        self.open_spans += 1;
        self.by_last.insert((position, trace_id));
    }

    /// Remembers a chain revision published by an earlier run.
    pub fn seed_revision(&mut self, trace_id: TraceId, effect: SpanId, revision: u32) {
        let known = self
            .published_revisions
            .entry((trace_id, effect))
            .or_insert(revision);
        *known = (*known).max(revision);
    }

    /// When the next trace goes quiet, if any is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        let (_, id) = self.by_last.first()?;
        let trace = self.open.get(id)?;
        Some(trace.last_arrival + self.config.quiet_window)
    }

    /// Stitches the traces quiet since the window, forgets retained traces past the late
    /// window, and stitches the oldest early while memory is over its bound.
    pub fn expire(&mut self, now: Instant, published: &mut dyn PublishedCheck) {
        while let Some(&(_, id)) = self.by_last.first() {
            let quiet = self
                .open
                .get(&id)
                .is_none_or(|t| t.last_arrival + self.config.quiet_window <= now);
            if !quiet {
                break;
            }
            self.stitch_oldest(now, published);
        }
        while let Some(&(at, id)) = self.retained_order.front() {
            if at + self.config.late_window > now {
                break;
            }
            self.retained_order.pop_front();
            self.forget_retained(id, at);
        }
        self.shrink_to(
            self.config.buffer_cap(),
            EarlyStitch::BufferFull,
            now,
            published,
        );
        self.telemetry
            .set_stitch_buffer(self.open_spans, self.buffered_bytes());
    }

    /// Gives back about `bytes` (estimated) now, because the process's memory in use nears
    /// its soft limit: forgets retained traces first, then stitches the oldest open traces
    /// early. Returns the estimated bytes freed.
    pub fn shed(
        &mut self,
        bytes: usize,
        now: Instant,
        published: &mut dyn PublishedCheck,
    ) -> usize {
        let before = self.buffered_bytes();
        self.shrink_to(
            before.saturating_sub(bytes),
            EarlyStitch::MemoryPressure,
            now,
            published,
        );
        self.telemetry
            .set_stitch_buffer(self.open_spans, self.buffered_bytes());
        before - self.buffered_bytes()
    }

    /// Estimated bytes of open and retained traces.
    pub fn buffered_bytes(&self) -> usize {
        self.open_bytes + self.retained_bytes
    }

    fn shrink_to(
        &mut self,
        target: usize,
        why: EarlyStitch,
        now: Instant,
        published: &mut dyn PublishedCheck,
    ) {
        while self.buffered_bytes() > target {
            if let Some((at, id)) = self.retained_order.pop_front() {
                self.forget_retained(id, at);
            } else if !self.by_last.is_empty() {
                self.telemetry.trace_stitched_early(why);
                self.stitch_oldest(now, published);
            } else {
                break;
            }
        }
    }

    /// Stitches every open trace now (restitch, tests).
    pub fn stitch_all(&mut self, now: Instant, published: &mut dyn PublishedCheck) {
        while !self.by_last.is_empty() {
            self.stitch_oldest(now, published);
        }
        self.telemetry
            .set_stitch_buffer(self.open_spans, self.buffered_bytes());
    }

    /// The oldest WAL position an open trace still needs: the WAL must not be checkpointed past
    /// it, or a crash would lose spans no chain has seen.
    pub fn oldest_needed(&self) -> Option<WalPosition> {
        self.open.values().map(|t| t.first).min()
    }

    pub fn open_traces(&self) -> usize {
        self.open.len()
    }

    fn forget_retained(&mut self, id: TraceId, stitched_at: Instant) {
        if self
            .retained
            .get(&id)
            .is_some_and(|r| r.stitched_at == stitched_at)
            && let Some(r) = self.retained.remove(&id)
        {
            self.retained_bytes -= r.bytes;
        }
    }

    fn stitch_oldest(&mut self, now: Instant, published: &mut dyn PublishedCheck) {
        let Some((_, id)) = self.by_last.pop_first() else {
            return;
        };
        let Some(mut trace) = self.open.remove(&id) else {
            return;
        };
        self.open_bytes -= trace.bytes;
        self.open_spans -= trace.spans.len();

        let (chains, observations) = {
            let view = Trace::new(id, &trace.spans);
            let links = KnownTraces {
                open: &self.open,
                retained: &self.retained,
            };
            (build_chains(&view, &links), edges::observe(&view))
        };

        // A replayed trace may have been stitched and published before the restart.
        let maybe_published = trace.replayed && self.replay_end.is_some_and(|e| trace.last <= e);
        let mut covered = |table: &'static str, partition: &Partition| {
            maybe_published && published.covers(table, partition, trace.last)
        };

        let trace_hex = hex::encode(id);
        for mut chain in chains {
            let Ok(effect) = hex_span_id(&chain.effect_span_id) else {
                continue;
            };
            let hash = chain.content_hash();
            let partition = Partition::of_nanos(chain.time);
            let published = self.published_revisions.get(&(id, effect)).copied();
            if covered(chains::TABLE, &partition) {
                // The same rows an earlier run published: remember, don't write again.
                let revision = published.unwrap_or(1);
                trace.history.revisions.insert(effect, (revision, hash));
                continue;
            }
            let revision = match trace.history.revisions.get(&effect) {
                // Stitched by an earlier run whose history died with it: the content it wrote
                // is unknown here, so this re-stitch writes the next revision.
                None => published.map_or(1, |p| p + 1),
                Some(&(_, known)) if known == hash => continue,
                Some(&(revision, _)) => revision + 1,
            };
            trace.history.revisions.insert(effect, (revision, hash));
            chain.revision = revision;
            self.telemetry.chain_stitched(revision);
            self.out.chains.entry(partition).or_default().push(chain);
        }
        for (key, (count, first, last)) in edges::count(&observations) {
            let before = trace.history.edges.get(&key).copied().unwrap_or(0);
            if count <= before {
                continue;
            }
            trace.history.edges.insert(key.clone(), count);
            if !covered(edges_table::TABLE, &Partition::of_nanos(first)) {
                self.out
                    .edges
                    .add(key, count - before, first, last, &trace_hex);
            }
        }
        self.out.stitched_through = self.out.stitched_through.max(Some(trace.last));
        self.telemetry.trace_stitched();

        self.retained_bytes += trace.bytes;
        self.retained_order.push_back((now, id));
        self.retained.insert(
            id,
            RetainedTrace {
                spans: trace.spans,
                bytes: trace.bytes,
                stitched_at: now,
                history: trace.history,
            },
        );
    }
}

fn hex_span_id(s: &str) -> Result<SpanId, hex::FromHexError> {
    let mut id = [0u8; 8];
    hex::decode_to_slice(s, &mut id)?;
    Ok(id)
}

/// The traces the buffer knows (open or retained), for resolving span links.
struct KnownTraces<'a> {
    open: &'a HashMap<TraceId, OpenTrace>,
    retained: &'a HashMap<TraceId, RetainedTrace>,
}

impl LinkResolver for KnownTraces<'_> {
    fn head_of_linked(&self, trace_id: &TraceId, span_id: &SpanId) -> Option<Head> {
        let spans = self
            .open
            .get(trace_id)
            .map(|t| &t.spans)
            .or_else(|| self.retained.get(trace_id).map(|t| &t.spans))?;
        head_of_span(trace_id, spans, span_id)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::record::{BatchHeader, EffectKind, SpanRow};

    struct NothingPublished;
    impl PublishedCheck for NothingPublished {
        fn covers(&mut self, _: &'static str, _: &Partition, _: WalPosition) -> bool {
            false
        }
    }

    fn effect_span(trace: u8, span: u8) -> SpanRow {
        SpanRow {
            trace_id: [trace; 16],
            span_id: [span; 8],
            start_time: 1_795_341_600_000_000_000,
            user_id: Some(format!("user-{trace}")),
            effect_kind: Some(EffectKind::Db),
            effect_target: Some("shop.orders".into()),
            ..Default::default()
        }
    }

    fn batch(rows: Vec<SpanRow>) -> SpanBatch {
        SpanBatch {
            header: Arc::new(BatchHeader::default()),
            spans: rows,
        }
    }

    fn pos(offset: u64) -> WalPosition {
        WalPosition { segment: 1, offset }
    }

    fn buffer(config: StitcherConfig) -> TraceBuffer {
        TraceBuffer::new(&config, Arc::new(Telemetry::new()))
    }

    #[test]
    fn over_the_memory_bound_the_oldest_traces_are_stitched_early() {
        let one_span = LineageSpan::from_row(&effect_span(1, 1), None, &mut Interner::default())
            .estimated_bytes();
        let mut b = buffer(StitcherConfig {
            quiet_window: Duration::from_secs(3600),
            max_buffer_bytes: Some(one_span * 2),
            late_window: Duration::ZERO,
            ..Default::default()
        });
        let now = Instant::now();
        for trace in 1..=3u8 {
            b.add_batch(
                &batch(vec![effect_span(trace, trace)]),
                &[true],
                pos(u64::from(trace)),
                false,
                now,
            );
        }
        b.expire(now, &mut NothingPublished);
        assert_eq!(b.open_traces(), 2, "one trace had to go early");
        let chains: Vec<_> = b.out.chains.values().flatten().collect();
        assert_eq!(chains.len(), 1);
        assert_eq!(
            chains[0].user_id.as_deref(),
            Some("user-1"),
            "the oldest one"
        );
        assert_eq!(
            b.oldest_needed(),
            Some(pos(2)),
            "the WAL is needed from trace 2 on"
        );
        assert_eq!(b.out.stitched_through, Some(pos(1)));
    }

    #[test]
    fn a_late_span_writes_a_new_revision_only_of_chains_it_changes() {
        let mut b = buffer(StitcherConfig {
            quiet_window: Duration::from_millis(10),
            ..Default::default()
        });
        let t0 = Instant::now();
        let mut child = effect_span(7, 2);
        child.user_id = None;
        child.parent_span_id = Some([1; 8]);
        let mut unrelated = effect_span(7, 3);
        unrelated.parent_span_id = None;
        b.add_batch(
            &batch(vec![child, unrelated]),
            &[true, true],
            pos(1),
            false,
            t0,
        );
        b.expire(t0 + Duration::from_millis(20), &mut NothingPublished);
        let first: Vec<_> = std::mem::take(&mut b.out.chains)
            .into_values()
            .flatten()
            .collect();
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|c| c.revision == 1));

        // The parent with the user arrives late: only the child's chain changes.
        let mut root = effect_span(7, 1);
        root.effect_kind = None;
        root.user_id = Some("carol".into());
        b.add_batch(
            &batch(vec![root]),
            &[true],
            pos(2),
            false,
            t0 + Duration::from_millis(30),
        );
        assert_eq!(
            b.oldest_needed(),
            Some(pos(2)),
            "only the late record is still needed"
        );
        b.expire(t0 + Duration::from_millis(50), &mut NothingPublished);
        let second: Vec<_> = b.out.chains.values().flatten().collect();
        assert_eq!(second.len(), 1, "the unchanged chain is not rewritten");
        assert_eq!(second[0].revision, 2);
        assert_eq!(second[0].effect_span_id, hex::encode([2u8; 8]));
        assert_eq!(second[0].user_id.as_deref(), Some("carol"));
    }

    #[test]
    fn replayed_traces_already_published_are_not_written_again() {
        struct AllPublished;
        impl PublishedCheck for AllPublished {
            fn covers(&mut self, _: &'static str, _: &Partition, _: WalPosition) -> bool {
                true
            }
        }
        let mut b = buffer(StitcherConfig::default());
        let now = Instant::now();
        b.add_batch(&batch(vec![effect_span(1, 1)]), &[true], pos(5), true, now);
        b.add_batch(&batch(vec![effect_span(2, 2)]), &[true], pos(9), false, now);
        b.stitch_all(now, &mut AllPublished);
        let chains: Vec<_> = b.out.chains.values().flatten().collect();
        assert_eq!(
            chains.len(),
            1,
            "the live trace is written, the replayed one is not"
        );
        assert_eq!(chains[0].trace_id, hex::encode([2u8; 16]));
    }
}
