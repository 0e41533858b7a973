//! Cache statistics (`Moka(..., stats=True)`): what the cache records, and
//! the figures of a snapshot (which `py/stats.rs` hands to Python).
//!
//! Every figure is a striped [`Counter`] (`counter.rs`): threads add to their
//! own cache line, so recording costs one uncontended atomic add and threads
//! never contend on it. A cache made without `stats=True` has no `Stats` at
//! all and pays one branch on an `Option`.
//!
//! Where each figure is recorded:
//! * `hits`/`misses`: every read that asks for a value (`get`, `[]`,
//!   `get_with`, `get_many`, `aget_with`, `@cached` calls); `in` does not.
//! * `loads`/`load_failures`/`load_time`: every initializer call (`get_with`,
//!   `@cached`, `aget_with`, refreshes), by the thread that ran it.
//! * `evictions`/`evicted_weight`/`expirations`: in moka's eviction listener,
//!   which only adds (no Python code runs there).
//! * `stale_served`: each load that raised and was answered with an expired
//!   value instead (`stale_if_error`); once per load, however many callers
//!   waited for it.
//!
//! A snapshot sums each counter separately while other threads may be
//! recording, so under load its figures are each exact for some instant
//! close to the call, and exact once the other threads are done.
//!
//! The counters only grow for the life of the cache. `reset_stats()` does
//! not touch them: it records their sums as a baseline, which `stats()`
//! subtracts from then on; `stats(cumulative=True)` (what an exporter reads)
//! ignores the baseline, so a reset never makes an exported counter go down.
//! The baseline's lock is taken by `stats()` and `reset_stats()` only, for a
//! copy of a few integers: no Python code runs under it and no recording
//! thread waits on it.

use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use moka::notification::RemovalCause;

use crate::store::counter::Counter;

#[derive(Default)]
pub(crate) struct Stats {
    hits: Counter,
    misses: Counter,
    loads: Counter,
    load_failures: Counter,
    load_nanos: Counter,
    evictions: Counter,
    evicted_weight: Counter,
    expirations: Counter,
    stale_served: Counter,
    /// The sums at the last `reset()` (zero before any).
    baseline: Mutex<Sums>,
}

impl Stats {
    #[inline]
    pub(crate) fn hit(&self) {
        self.hits.add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn miss(&self) {
        self.misses.add(1, Ordering::Relaxed);
    }

    /// An initializer call that took `elapsed` and returned (`ok`) or raised.
    pub(crate) fn load(&self, elapsed: Duration, ok: bool) {
        if ok {
            self.loads.add(1, Ordering::Relaxed);
        } else {
            self.load_failures.add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.load_nanos.add(nanos, Ordering::Relaxed);
    }

    /// A failed load answered with an expired value (`stale_if_error`).
    pub(crate) fn stale_served(&self) {
        self.stale_served.add(1, Ordering::Relaxed);
    }

    /// An entry of `weight` left the cache for `cause` (from moka's listener).
    pub(crate) fn removed(&self, cause: RemovalCause, weight: u32) {
        match cause {
            RemovalCause::Size => {
                self.evictions.add(1, Ordering::Relaxed);
                self.evicted_weight
                    .add(u64::from(weight), Ordering::Relaxed);
            }
            RemovalCause::Expired => self.expirations.add(1, Ordering::Relaxed),
            RemovalCause::Explicit | RemovalCause::Replaced => {}
        }
    }

    /// The figures since the last `reset()`, or (`cumulative`) since the
    /// cache was made.
    pub(crate) fn snapshot(&self, cumulative: bool) -> Figures {
        let now = self.sums();
        if cumulative {
            return now.into();
        }
        let base = *self.baseline.lock().unwrap_or_else(PoisonError::into_inner);
        now.since(&base).into()
    }

    /// Makes `snapshot(false)` count from now on; the counters keep growing.
    pub(crate) fn reset(&self) {
        let now = self.sums();
        *self.baseline.lock().unwrap_or_else(PoisonError::into_inner) = now;
    }

    fn sums(&self) -> Sums {
        let sum = |c: &Counter| c.sum(Ordering::Relaxed);
        Sums {
            hits: sum(&self.hits),
            misses: sum(&self.misses),
            loads: sum(&self.loads),
            load_failures: sum(&self.load_failures),
            load_nanos: sum(&self.load_nanos),
            evictions: sum(&self.evictions),
            evicted_weight: sum(&self.evicted_weight),
            expirations: sum(&self.expirations),
            stale_served: sum(&self.stale_served),
        }
    }
}

/// The counters' sums at one moment (a snapshot's figures before the
/// subtraction of the baseline).
#[derive(Clone, Copy, Default)]
struct Sums {
    hits: u64,
    misses: u64,
    loads: u64,
    load_failures: u64,
    load_nanos: u64,
    evictions: u64,
    evicted_weight: u64,
    expirations: u64,
    stale_served: u64,
}

impl Sums {
    /// What was added since `base` (taken earlier: every counter only grows).
    fn since(&self, base: &Sums) -> Sums {
        let d = |now: u64, then: u64| now.saturating_sub(then);
        Sums {
            hits: d(self.hits, base.hits),
            misses: d(self.misses, base.misses),
            loads: d(self.loads, base.loads),
            load_failures: d(self.load_failures, base.load_failures),
            load_nanos: d(self.load_nanos, base.load_nanos),
            evictions: d(self.evictions, base.evictions),
            evicted_weight: d(self.evicted_weight, base.evicted_weight),
            expirations: d(self.expirations, base.expirations),
            stale_served: d(self.stale_served, base.stale_served),
        }
    }
}

impl From<Sums> for Figures {
    fn from(s: Sums) -> Self {
        Figures {
            hits: s.hits,
            misses: s.misses,
            loads: s.loads,
            load_failures: s.load_failures,
            #[allow(clippy::cast_precision_loss)]
            load_time: s.load_nanos as f64 / 1e9,
            evictions: s.evictions,
            evicted_weight: s.evicted_weight,
            expirations: s.expirations,
            stale_served: s.stale_served,
        }
    }
}

/// The figures of one snapshot (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Figures {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) loads: u64,
    pub(crate) load_failures: u64,
    /// Seconds.
    pub(crate) load_time: f64,
    pub(crate) evictions: u64,
    pub(crate) evicted_weight: u64,
    pub(crate) expirations: u64,
    pub(crate) stale_served: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_moves_the_baseline_and_never_the_counters() {
        let stats = Stats::default();
        stats.hit();
        stats.hit();
        stats.miss();
        stats.load(Duration::from_millis(5), true);
        stats.load(Duration::from_millis(5), false);
        stats.reset();
        assert_eq!(stats.snapshot(false).hits, 0);
        assert_eq!(stats.snapshot(false).load_time, 0.0);
        stats.hit();
        stats.removed(RemovalCause::Size, 3);
        let since = stats.snapshot(false);
        assert_eq!((since.hits, since.misses, since.loads), (1, 0, 0));
        assert_eq!((since.evictions, since.evicted_weight), (1, 3));
        let all = stats.snapshot(true);
        assert_eq!((all.hits, all.misses), (3, 1));
        assert_eq!((all.loads, all.load_failures), (1, 1));
        assert!((all.load_time - 0.01).abs() < 1e-9);
    }
}
