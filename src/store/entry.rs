//! The value moka stores: the Python object plus what moka's policies need to
//! know about it, computed before the insert so that moka never calls Python.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pyo3::prelude::*;

use crate::store::deferred::PyOwned;

pub(crate) struct Entry {
    /// The cached object, stored by reference (released outside moka).
    pub(crate) obj: PyOwned,
    /// The weigher's result (1 without a weigher), read by moka's weigher.
    pub(crate) weight: u32,
    /// Set by a read that found the entry older than the cache's
    /// `refresh_after` (see `expiry.rs`); it fits in the
    /// padding after `weight`, so the entry does not grow.
    stale: AtomicBool,
    /// Per-entry expiration, read by `expiry.rs`; boxed, so
    /// that the common entry without it stays small (one allocation of
    /// 40 bytes with its `Arc`, instead of 64).
    deadlines: Option<Box<Deadlines>>,
}

/// Per-entry `ttl` and `tti` (at least one of them is set).
struct Deadlines {
    ttl: Option<Duration>,
    tti: Option<Duration>,
}

impl Entry {
    pub(crate) fn new(
        obj: Py<PyAny>,
        weight: u32,
        ttl: Option<Duration>,
        tti: Option<Duration>,
    ) -> Self {
        let deadlines = (ttl.is_some() || tti.is_some()).then(|| Box::new(Deadlines { ttl, tti }));
        Entry {
            obj: PyOwned::new(obj),
            weight,
            stale: AtomicBool::new(false),
            deadlines,
        }
    }

    /// Per-entry time to live.
    pub(crate) fn ttl(&self) -> Option<Duration> {
        self.deadlines.as_ref().and_then(|d| d.ttl)
    }

    /// Per-entry time to idle.
    pub(crate) fn tti(&self) -> Option<Duration> {
        self.deadlines.as_ref().and_then(|d| d.tti)
    }

    /// Whether a read found this entry due for a refresh.
    #[inline]
    pub(crate) fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_stale(&self) {
        if !self.is_stale() {
            self.stale.store(true, Ordering::Relaxed);
        }
    }
}
