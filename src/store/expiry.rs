//! Per-entry expiration (`set(..., ttl=, tti=)`).
//!
//! moka enforces the cache-wide `ttl`/`tti` on its own and this policy on top,
//! and an entry expires at whichever deadline comes first: a per-entry value
//! can only shorten the cache-wide policy. An entry set without per-entry
//! values has no per-entry deadline, so re-setting a key without them clears
//! the ones it had.
//!
//! moka calls the read hook on every read with the time the entry was last
//! written, which is all `refresh_after` needs: the hook marks an entry older
//! than that as stale, and `get_with` starts its reload (`refresh.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use crate::store::entry::Entry;
use crate::store::key::Key;

pub(crate) struct PerEntry {
    /// The cache's `refresh_after`.
    pub(crate) refresh_after: Option<Duration>,
    /// The cache's `stale_if_error`: how much longer than its `ttl` moka
    /// keeps an entry (reads treat it as expired, see `Entry::current`).
    pub(crate) grace: Duration,
}

impl PerEntry {
    /// An entry's own `ttl`, as moka enforces it.
    fn ttl(&self, entry: &Entry) -> Option<Duration> {
        entry.ttl().map(|ttl| ttl.saturating_add(self.grace))
    }

    fn first_deadline(&self, entry: &Entry) -> Option<Duration> {
        match (self.ttl(entry), entry.tti()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Expiry<Key, Arc<Entry>> for PerEntry {
    fn expire_after_create(&self, _: &Key, entry: &Arc<Entry>, _: Instant) -> Option<Duration> {
        self.first_deadline(entry)
    }

    fn expire_after_read(
        &self,
        _: &Key,
        entry: &Arc<Entry>,
        read_at: Instant,
        duration_until_expiry: Option<Duration>,
        last_modified_at: Instant,
    ) -> Option<Duration> {
        if self.refresh_after.is_none() && !entry.has_extra() {
            // The most frequent read: nothing to mark, no idle deadline.
            return duration_until_expiry;
        }
        self.after_read(entry, read_at, duration_until_expiry, last_modified_at)
    }

    fn expire_after_update(
        &self,
        _: &Key,
        entry: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.first_deadline(entry)
    }
}

impl PerEntry {
    /// `expire_after_read` of an entry with per-entry settings, or in a
    /// cache with `refresh_after`.
    #[inline(never)]
    fn after_read(
        &self,
        entry: &Entry,
        read_at: Instant,
        duration_until_expiry: Option<Duration>,
        last_modified_at: Instant,
    ) -> Option<Duration> {
        if let Some(after) = self.refresh_after {
            if read_at.saturating_duration_since(last_modified_at) >= after {
                entry.mark_stale();
            }
        }
        let Some(tti) = entry.tti() else {
            return duration_until_expiry;
        };
        // A read restarts the idle clock, but never past the time to live.
        let age = read_at.saturating_duration_since(last_modified_at);
        Some(
            self.ttl(entry)
                .map_or(tti, |ttl| tti.min(ttl.saturating_sub(age))),
        )
    }
}
