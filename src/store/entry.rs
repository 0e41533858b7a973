//! The value moka stores: the Python object plus what moka's policies need to
//! know about it, computed before the insert so that moka never calls Python.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::store::deferred::PyOwned;
use crate::store::tags::Stamp;

pub(crate) struct Entry {
    /// The cached object, stored by reference (released outside moka).
    pub(crate) obj: PyOwned,
    /// The weigher's result (1 without a weigher), read by moka's weigher.
    pub(crate) weight: u32,
    /// Set by a read that found the entry older than the cache's
    /// `refresh_after` (see `expiry.rs`); it fits in the
    /// padding after `weight`, so the entry does not grow.
    stale: AtomicBool,
    /// Per-entry expiration, read by `expiry.rs`, and tags; boxed, so
    /// that the common entry without them stays small (one allocation of
    /// 40 bytes with its `Arc`, instead of 64).
    extra: Option<Box<Extra>>,
}

/// Per-entry `ttl` and `tti`, the tags, and the deadline of a cache with
/// `stale_if_error` (at least one of them is set).
struct Extra {
    ttl: Option<Duration>,
    tti: Option<Duration>,
    tags: Option<Stamp>,
    /// With `stale_if_error`: when the entry expires for every read. moka
    /// keeps it `stale_if_error` longer, for a failed load to return.
    expires: Option<Instant>,
}

impl Extra {
    fn tags_current(&self) -> bool {
        self.tags.as_ref().is_none_or(Stamp::current)
    }
}

impl Entry {
    pub(crate) fn new(
        obj: Py<PyAny>,
        weight: u32,
        ttl: Option<Duration>,
        tti: Option<Duration>,
        tags: Option<Stamp>,
        expires: Option<Instant>,
    ) -> Self {
        let extra =
            (ttl.is_some() || tti.is_some() || tags.is_some() || expires.is_some()).then(|| {
                Box::new(Extra {
                    ttl,
                    tti,
                    tags,
                    expires,
                })
            });
        Entry {
            obj: PyOwned::new(obj),
            weight,
            stale: AtomicBool::new(false),
            extra,
        }
    }

    /// Whether the entry has per-entry settings, tags or a deadline.
    #[inline(always)]
    pub(crate) fn has_extra(&self) -> bool {
        self.extra.is_some()
    }

    /// Per-entry time to live.
    pub(crate) fn ttl(&self) -> Option<Duration> {
        self.extra.as_ref().and_then(|d| d.ttl)
    }

    /// Per-entry time to idle.
    pub(crate) fn tti(&self) -> Option<Duration> {
        self.extra.as_ref().and_then(|d| d.tti)
    }

    /// The tags the entry was written with.
    pub(crate) fn tags(&self) -> Option<&Stamp> {
        self.extra.as_ref().and_then(|d| d.tags.as_ref())
    }

    /// Whether no tag of the entry was invalidated since it was written,
    /// and (with `stale_if_error`) it has not expired: an entry that is not
    /// current is absent to every read.
    #[inline]
    pub(crate) fn current(&self) -> bool {
        match &self.extra {
            None => true,
            Some(extra) => {
                extra.tags_current() && extra.expires.is_none_or(|at| Instant::now() < at)
            }
        }
    }

    /// Whether a failed load may return this entry (`stale_if_error`): it
    /// expired (moka keeps it for that long after), and no tag of it was
    /// invalidated.
    pub(crate) fn stale_servable(&self) -> bool {
        self.extra.as_ref().is_some_and(|extra| {
            extra.tags_current() && extra.expires.is_some_and(|at| Instant::now() >= at)
        })
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
