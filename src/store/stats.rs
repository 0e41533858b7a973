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
//!
//! A snapshot sums each counter separately while other threads may be
//! recording, so under load its figures are each exact for some instant
//! close to the call, and exact once the other threads are done.

use std::sync::atomic::Ordering;
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

    pub(crate) fn snapshot(&self) -> Figures {
        let sum = |c: &Counter| c.sum(Ordering::Relaxed);
        Figures {
            hits: sum(&self.hits),
            misses: sum(&self.misses),
            loads: sum(&self.loads),
            load_failures: sum(&self.load_failures),
            #[allow(clippy::cast_precision_loss)]
            load_time: sum(&self.load_nanos) as f64 / 1e9,
            evictions: sum(&self.evictions),
            evicted_weight: sum(&self.evicted_weight),
            expirations: sum(&self.expirations),
        }
    }

    pub(crate) fn reset(&self) {
        for c in [
            &self.hits,
            &self.misses,
            &self.loads,
            &self.load_failures,
            &self.load_nanos,
            &self.evictions,
            &self.evicted_weight,
            &self.expirations,
        ] {
            c.reset();
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
}
