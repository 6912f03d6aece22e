//! Admission control: whether a new export may come in at all, decided from the memory the
//! process holds and the size of the write-ahead log.
//!
//! A monitor samples them every [`SAMPLE_EVERY`]; admission reads the last sample, so the
//! check on every request is two atomic loads. Past a limit new exports are refused as
//! UNAVAILABLE / 503 with a retry hint: exporters back off and resend, and nothing already
//! acknowledged is touched.
//!
//! Two measures, because one cannot serve both limits. The soft limit compares the
//! allocator's bytes in use (jemalloc's `stats.allocated`, see `lib.rs`), which fall as soon as
//! published buffers are freed; resident memory lags — freed pages go back to the kernel only
//! after jemalloc's decay — so a soft limit on it would refuse exports after the data left.
//! The hard limit compares resident memory, the figure the kernel and container limits see:
//! past it the writer publishes what it buffers and the allocator hands its free pages back at
//! once (`arena.<all>.purge`). Without jemalloc (the `jemalloc` feature off) both limits use
//! resident memory.
//!
//! Refusing is the last resort. From [`SHED_FROM_PERCENT`] of the soft limit on, the monitor
//! asks the stitch buffer — the one large consumer that would otherwise hold its memory until
//! its traces go quiet — to give back enough to bring memory in use down to
//! [`SHED_TO_PERCENT`], by stitching its oldest traces early. Without that, a burst that fills
//! the buffer keeps memory over the soft limit for a whole quiet window, refusing every export
//! meanwhile (BENCHMARKS.md, stop 14's burst).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::telemetry::Telemetry;

/// How often memory and WAL size are sampled. Between samples a burst can overshoot a limit by
/// what arrives in this long.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Share of the soft limit (percent) from which the stitch buffer is asked to give memory back.
pub const SHED_FROM_PERCENT: u64 = 90;

/// Share of the soft limit (percent) that memory in use is brought down to when shedding.
pub const SHED_TO_PERCENT: u64 = 80;

/// Least time between two forced publications at the hard limit.
const FORCED_FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The limits (0 turns one off) and the latest samples.
#[derive(Debug)]
pub struct Admission {
    memory_soft_limit: u64,
    memory_hard_limit: u64,
    wal_max_bytes: u64,
    /// What the soft limit compares: allocated bytes, else resident bytes.
    in_use_bytes: AtomicU64,
    wal_bytes: AtomicU64,
}

impl Admission {
    pub fn new(memory_soft_limit: u64, memory_hard_limit: u64, wal_max_bytes: u64) -> Admission {
        Admission {
            memory_soft_limit,
            memory_hard_limit,
            wal_max_bytes,
            in_use_bytes: AtomicU64::new(0),
            wal_bytes: AtomicU64::new(0),
        }
    }

    /// Refuses a new export, as retryable, while memory or the WAL is over its limit.
    pub fn check(&self) -> Result<()> {
        let in_use = self.in_use_bytes.load(Ordering::Relaxed);
        if over(in_use, self.memory_soft_limit) {
            return Err(Error::Overloaded(format!(
                "memory in use {in_use} bytes is over receivers.memory_soft_limit_bytes ({})",
                self.memory_soft_limit
            )));
        }
        let wal = self.wal_bytes.load(Ordering::Relaxed);
        if over(wal, self.wal_max_bytes) {
            return Err(Error::Overloaded(format!(
                "the write-ahead log holds {wal} bytes, over wal.max_bytes ({}): publication is behind",
                self.wal_max_bytes
            )));
        }
        Ok(())
    }

    /// Samples memory and the WAL in `wal_dir` until the server stops. Each sample with memory
    /// in use near the soft limit calls `shed_stitch_buffer` with the bytes to give back (see
    /// the module notes); while resident memory is over the hard limit, `publish_now` is called
    /// at most once a second, and should call [`release_free_memory`] once the publication is
    /// done.
    pub fn spawn_monitor(
        self: &Arc<Self>,
        wal_dir: PathBuf,
        telemetry: Arc<Telemetry>,
        shed_stitch_buffer: impl Fn(u64) + Send + 'static,
        publish_now: impl Fn() + Send + 'static,
    ) {
        let admission = Arc::downgrade(self);
        if (self.memory_soft_limit > 0 || self.memory_hard_limit > 0) && resident_bytes().is_none()
        {
            tracing::warn!(
                "resident memory cannot be read on this system (/proc/self/status): the memory limits are off"
            );
        }
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SAMPLE_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_forced: Option<Instant> = None;
            let mut memory = Crossing::new("receivers.memory_soft_limit_bytes");
            let mut wal_cap = Crossing::new("wal.max_bytes");
            loop {
                ticks.tick().await;
                let Some(admission) = admission.upgrade() else {
                    return;
                };
                let resident = resident_bytes().unwrap_or(0);
                let in_use = allocated_bytes().unwrap_or(resident);
                let wal = crate::wal::size_on_disk(&wal_dir);
                admission.in_use_bytes.store(in_use, Ordering::Relaxed);
                admission.wal_bytes.store(wal, Ordering::Relaxed);
                telemetry.set_resource_usage(resident, in_use, wal);
                memory.observe(in_use, admission.memory_soft_limit, &telemetry);
                wal_cap.observe(wal, admission.wal_max_bytes, &telemetry);
                if let Some(excess) = admission.excess_to_shed(in_use) {
                    shed_stitch_buffer(excess);
                }
                if over(resident, admission.memory_hard_limit) {
                    if last_forced.is_none_or(|t| t.elapsed() >= FORCED_FLUSH_EVERY) {
                        last_forced = Some(Instant::now());
                        telemetry.memory_hard_limit_reached(resident, admission.memory_hard_limit);
                        publish_now();
                    } else {
                        // Between forced publications, the pages freed since the last purge go
                        // back every sample: otherwise resident memory climbs past the hard
                        // limit by what a second of traffic frees and the allocator keeps.
                        let _ = tokio::task::spawn_blocking(release_free_memory).await;
                    }
                }
            }
        });
    }

    /// Bytes to give back for memory in use to fall to [`SHED_TO_PERCENT`] of the soft limit,
    /// once it has reached [`SHED_FROM_PERCENT`] of it; `None` below that or with the limit off.
    fn excess_to_shed(&self, in_use: u64) -> Option<u64> {
        let soft = self.memory_soft_limit;
        let share = |percent: u64| soft / 100 * percent + soft % 100 * percent / 100;
        (soft > 0 && in_use >= share(SHED_FROM_PERCENT)).then(|| in_use - share(SHED_TO_PERCENT))
    }
}

/// Whether a limit is passed, so crossing it either way is logged once, not every sample.
struct Crossing {
    limit: &'static str,
    over: bool,
}

impl Crossing {
    fn new(limit: &'static str) -> Crossing {
        Crossing { limit, over: false }
    }

    fn observe(&mut self, value: u64, max: u64, telemetry: &Telemetry) {
        let now_over = over(value, max);
        if now_over != self.over {
            self.over = now_over;
            telemetry.limit_crossed(self.limit, now_over, value, max);
        }
    }
}

/// Whether `value` is at or past `limit`; a limit of 0 is off.
fn over(value: u64, limit: u64) -> bool {
    limit > 0 && value >= limit
}

/// Bytes the allocator has handed out and not had back (jemalloc's `stats.allocated`, refreshed
/// by advancing its epoch: a read of per-arena counters, no walk of the heap).
#[cfg(feature = "jemalloc")]
fn allocated_bytes() -> Option<u64> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    tikv_jemalloc_ctl::stats::allocated::read()
        .ok()
        .map(|b| b as u64)
}

#[cfg(not(feature = "jemalloc"))]
fn allocated_bytes() -> Option<u64> {
    None
}

/// Hands the allocator's free pages back to the system now, so resident memory follows what
/// was freed without waiting for jemalloc's decay. A no-op without jemalloc.
pub fn release_free_memory() {
    #[cfg(feature = "jemalloc")]
    // SAFETY: `arena.<MALLCTL_ARENAS_ALL>.purge` takes and returns no value (null pointers,
    // zero length) and only returns unused dirty pages of every arena to the kernel.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

/// The process's anonymous resident memory (heap, stacks), from `/proc/self/status` (Linux).
/// Pages of the mapped binary and of files are left out: they are shared and reclaimable, and
/// a debug binary alone maps hundreds of MiB.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_refuse_as_retryable_and_zero_turns_them_off() {
        let admission = Admission::new(100, 200, 1000);
        assert!(admission.check().is_ok());
        admission.in_use_bytes.store(150, Ordering::Relaxed);
        let refused = admission.check().unwrap_err();
        assert!(refused.is_retryable());
        assert!(
            refused.to_string().contains("memory_soft_limit"),
            "{refused}"
        );
        admission.in_use_bytes.store(0, Ordering::Relaxed);
        admission.wal_bytes.store(1000, Ordering::Relaxed);
        let refused = admission.check().unwrap_err();
        assert!(refused.is_retryable() && refused.to_string().contains("wal.max_bytes"));

        let off = Admission::new(0, 0, 0);
        off.in_use_bytes.store(u64::MAX, Ordering::Relaxed);
        off.wal_bytes.store(u64::MAX, Ordering::Relaxed);
        assert!(off.check().is_ok());
    }

    #[test]
    fn memory_near_the_soft_limit_asks_the_stitch_buffer_for_what_brings_it_to_80_percent() {
        let admission = Admission::new(1000, 2000, 0);
        assert_eq!(admission.excess_to_shed(0), None);
        assert_eq!(admission.excess_to_shed(899), None);
        assert_eq!(admission.excess_to_shed(900), Some(100));
        assert_eq!(admission.excess_to_shed(1500), Some(700));
        assert_eq!(Admission::new(0, 0, 0).excess_to_shed(u64::MAX), None);
        // No overflow at the top of the range.
        let huge = Admission::new(u64::MAX, 0, 0);
        assert_eq!(
            huge.excess_to_shed(u64::MAX),
            Some(u64::MAX - (u64::MAX / 100 * 80 + u64::MAX % 100 * 80 / 100))
        );
    }

    #[test]
    fn samples_this_process_and_a_wal_directory() {
        assert!(resident_bytes().is_some_and(|b| b > 1 << 20));
        let before = allocated_bytes();
        let held = vec![1u8; 64 << 20];
        let during = allocated_bytes();
        drop(held);
        if let (Some(before), Some(during)) = (before, during) {
            assert!(during >= before + (60 << 20), "{before} → {during}");
            let after = allocated_bytes().unwrap_or(0);
            assert!(
                after < during - (60 << 20),
                "freed memory is no longer in use"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00000000000000000001.wal"), [0u8; 300]).unwrap();
        std::fs::write(dir.path().join("other"), [0u8; 50]).unwrap();
        assert_eq!(crate::wal::size_on_disk(dir.path()), 300);
        assert_eq!(crate::wal::size_on_disk(&dir.path().join("missing")), 0);
    }
}
