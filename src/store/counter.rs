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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sum_over_threads_is_exact_even_where_a_stripe_wraps() {
        let counter = Counter::new();
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let counter = &counter;
                s.spawn(move || {
                    for _ in 0..1000 {
                        counter.add(t + 1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(counter.sum(Ordering::Relaxed), 1000 * (1..=8).sum::<u64>());
        // A thread takes back more than it added: its stripe wraps below zero.
        std::thread::scope(|s| {
            s.spawn(|| counter.sub(1000, Ordering::Relaxed));
        });
        assert_eq!(counter.sum(Ordering::Relaxed), 1000 * 36 - 1000);
        counter.reset();
        assert_eq!(counter.sum(Ordering::Relaxed), 0);
    }
}
