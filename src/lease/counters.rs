//! The metrics counters file of a state dir (`counters.json`): allocations by result, the wait-time histogram,
//! what gc did, ledger write failures; it must not plan, call NVML or name the allocator.
//!
//! Counters live beside the leases (read-modify-write under `alloc.lock`), not in the ledger: `migrun metrics`
//! must answer in milliseconds whatever the ledger's size. Like every counter Prometheus scrapes, they start
//! again from zero when the state dir does (a reboot empties `/run`); `rate()` and `increase()` handle that.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Upper bounds (seconds) of the wait-time histogram's buckets; `+Inf` is implied.
pub const WAIT_BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];

/// The counters, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// By result: `created`, `reused`, `no_room`, `refused_policy`, `unsatisfiable`, `failed` (bad input is
    /// not counted: it never was a request).
    pub allocations: BTreeMap<String, u64>,
    /// Per bucket of [`WAIT_BUCKETS`] (not cumulative), plus one for `+Inf` at the end.
    pub wait_buckets: Vec<u64>,
    pub wait_sum_s: f64,
    pub wait_count: u64,
    /// By action: `destroyed`, `drained`, `repaired`.
    pub gc: BTreeMap<String, u64>,
    pub ledger_write_errors: u64,
}

impl Counters {
    pub fn bump_allocation(&mut self, result: &str) {
        *self.allocations.entry(result.to_string()).or_default() += 1;
    }

    pub fn bump_gc(&mut self, action: &str, n: u64) {
        if n > 0 {
            *self.gc.entry(action.to_string()).or_default() += n;
        }
    }

    pub fn observe_wait(&mut self, seconds: f64) {
        self.wait_buckets.resize(WAIT_BUCKETS.len() + 1, 0);
        let i = WAIT_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(WAIT_BUCKETS.len());
        self.wait_buckets[i] += 1;
        self.wait_sum_s += seconds;
        self.wait_count += 1;
    }

    /// `(upper bound, count in that bucket)` for every finite bucket, not cumulative.
    pub fn wait_histogram(&self) -> Vec<(f64, u64)> {
        let mut b = self.wait_buckets.clone();
        b.resize(WAIT_BUCKETS.len() + 1, 0);
        WAIT_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(b)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_land_in_their_bucket() {
        let mut c = Counters::default();
        c.observe_wait(0.5);
        c.observe_wait(7.0);
        c.observe_wait(99999.0);
        let h = c.wait_histogram();
        assert_eq!(h[0], (1.0, 1));
        assert_eq!(h[2], (15.0, 1));
        assert_eq!(h.last().unwrap().1, 1);
        assert_eq!(c.wait_count, 3);
    }
}
