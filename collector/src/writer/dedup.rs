//! Drops spans retried with a (trace_id, span_id) already stored.
//!
//! Exporters retry a request when they miss its acknowledgement, so the same spans can arrive
//! twice. Ids are remembered for a sliding window as two generations of 128-bit keys: memory
//! stays bounded by `max_entries` per generation, and an id is forgotten after one to two
//! half-windows.

use ahash::AHashSet as HashSet;
use std::time::{Duration, Instant};

use crate::config::DedupConfig;

pub struct Dedup {
    half_window: Duration,
    max_entries: usize,
    current: HashSet<u128>,
    previous: HashSet<u128>,
    rotated_at: Instant,
    hashers: (ahash::RandomState, ahash::RandomState),
}

impl Dedup {
    pub fn new(config: &DedupConfig) -> Dedup {
        Dedup {
            half_window: config.window / 2,
            max_entries: config.max_entries.max(1),
            current: HashSet::new(),
            previous: HashSet::new(),
            rotated_at: Instant::now(),
            // Fixed seeds: keys must not depend on the process, only on the ids.
            hashers: (
                ahash::RandomState::with_seeds(1, 2, 3, 4),
                ahash::RandomState::with_seeds(5, 6, 7, 8),
            ),
        }
    }

    fn key(&self, trace_id: &[u8; 16], span_id: &[u8; 8]) -> u128 {
        let a = self.hashers.0.hash_one((trace_id, span_id));
        let b = self.hashers.1.hash_one((trace_id, span_id));
        (u128::from(a) << 64) | u128::from(b)
    }

    /// Records the id; `false` if it was seen within the window (a duplicate).
    pub fn insert(&mut self, trace_id: &[u8; 16], span_id: &[u8; 8]) -> bool {
        if self.rotated_at.elapsed() >= self.half_window || self.current.len() >= self.max_entries {
            // The old generation's table becomes the new one, emptied but not freed: growing a
            // set from empty each rotation rehashed it a dozen times and had the kernel zero
            // its pages anew (most of the writer thread's page zeroing at full load).
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.clear();
            self.rotated_at = Instant::now();
        }
        let key = self.key(trace_id, span_id);
        !self.previous.contains(&key) && self.current.insert(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_sighting_is_a_duplicate_across_one_rotation() {
        let mut d = Dedup::new(&DedupConfig {
            window: Duration::from_secs(60),
            max_entries: 2,
        });
        assert!(d.insert(&[1; 16], &[1; 8]));
        assert!(!d.insert(&[1; 16], &[1; 8]));
        assert!(d.insert(&[1; 16], &[2; 8]));
        // current is full: the next insert rotates, and the old ids are still remembered.
        assert!(d.insert(&[2; 16], &[1; 8]));
        assert!(!d.insert(&[1; 16], &[1; 8]));
    }
}
