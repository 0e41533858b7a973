//! Counters that many threads update at once without contending: each thread
//! adds to its own stripe (a cache line of its own), a reader sums them.
//! Lock-free; the sum is exact once the writers are done.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const STRIPES: usize = 16;

#[repr(align(128))]
struct Padded(AtomicU64);

/// A counter split over cache lines, one picked per thread.
pub(crate) struct Counter([Padded; STRIPES]);

/// The stripe of the calling thread: assigned on first use, round-robin.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        s.get()
    })
}

impl Counter {
    pub(crate) const fn new() -> Self {
        Counter([const { Padded(AtomicU64::new(0)) }; STRIPES])
    }

    pub(crate) fn add(&self, n: u64, order: Ordering) {
        self.0[stripe()].0.fetch_add(n, order);
    }

    /// Takes back what this thread added (a stripe may wrap below zero on
    /// its own; the sum does not).
    pub(crate) fn sub(&self, n: u64, order: Ordering) {
        self.0[stripe()].0.fetch_sub(n, order);
    }

    pub(crate) fn sum(&self, order: Ordering) -> u64 {
        self.0
            .iter()
            .fold(0u64, |sum, p| sum.wrapping_add(p.0.load(order)))
    }

    pub(crate) fn reset(&self) {
        for p in &self.0 {
            p.0.store(0, Ordering::Relaxed);
        }
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}
