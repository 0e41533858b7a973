//! Tags: `set(..., tags=[...])` and `invalidate_tags(*tags)`.
//!
//! Each tag a store has seen has a cell with an epoch; an entry written with
//! tags keeps the cells and the epochs they had when the write (or the load
//! that produced the value) began: its [`Stamp`]. `invalidate_tags` advances
//! the epochs of its tags, so every entry stamped before is out of date at
//! once, whatever their number: a read finds it so (a few atomic loads per
//! tag of the entry it found) and treats it as absent. The entries are left
//! for moka's eviction, or removed by the next `len()`/`run_pending_tasks()`
//! (see `Store::sweep`). A load in flight when the tag is invalidated stored
//! the epoch from before: its entry is out of date as soon as it is stored.
//!
//! Deleting the tagged entries instead would need an index from each tag to
//! its keys, kept on every write and every eviction, and `invalidate_tags`
//! would cost one removal per entry (the README has the measurements).
//!
//! Lock: `Tags::cells`, a `Mutex` around a map of Rust strings, held by a
//! stamp or an invalidation for one lookup per tag (and, rarely, a walk that
//! drops the cells no entry uses any more). No Python code runs under it
//! (the tags are Rust strings before it is taken) and nothing else is taken
//! under it, so a thread that waits on it waits only for such a walk.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// One tag's epoch: advanced by each invalidation of the tag.
pub(crate) struct TagCell {
    epoch: AtomicU64,
}

/// The tags of an entry, with the epoch of each when it was stamped.
#[derive(Clone)]
pub(crate) struct Stamp(Arc<[(Arc<TagCell>, u64)]>);

impl Stamp {
    /// Whether no tag of the entry was invalidated since it was stamped.
    #[inline]
    pub(crate) fn current(&self) -> bool {
        self.0
            .iter()
            .all(|(cell, epoch)| cell.epoch.load(Ordering::SeqCst) == *epoch)
    }

    /// The same tags, at their epochs now (a reload of the entry).
    pub(crate) fn renewed(&self) -> Stamp {
        Stamp(
            self.0
                .iter()
                .map(|(cell, _)| (Arc::clone(cell), cell.epoch.load(Ordering::SeqCst)))
                .collect(),
        )
    }
}

/// The tags of one store.
pub(crate) struct Tags {
    cells: Mutex<Cells>,
    /// Set by an invalidation, cleared by the sweep that removes the entries
    /// it made out of date.
    unswept: AtomicBool,
    /// Set once an entry with tags was written.
    used: AtomicBool,
}

struct Cells {
    map: HashMap<Box<str>, Weak<TagCell>>,
    /// The map's size after its last walk: the next walk is due when it has
    /// doubled, so the walks cost O(1) per new tag.
    walked_at: usize,
}

impl Tags {
    pub(crate) fn new() -> Self {
        Tags {
            cells: Mutex::new(Cells {
                map: HashMap::new(),
                walked_at: 0,
            }),
            unswept: AtomicBool::new(false),
            used: AtomicBool::new(false),
        }
    }

    /// The stamp of `tags` now (`None` for no tag); the cell of a tag not
    /// seen before is made.
    pub(crate) fn stamp(&self, tags: &[String]) -> Option<Stamp> {
        if tags.is_empty() {
            return None;
        }
        if !self.used.load(Ordering::Relaxed) {
            // Before the write: a thread that finds the entry sees the flag.
            self.used.store(true, Ordering::Release);
        }
        let mut cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        let stamped = tags
            .iter()
            .map(|tag| {
                let cell = match cells.map.get(tag.as_str()).and_then(Weak::upgrade) {
                    Some(cell) => cell,
                    None => {
                        let cell = Arc::new(TagCell {
                            epoch: AtomicU64::new(0),
                        });
                        cells.map.insert(tag.as_str().into(), Arc::downgrade(&cell));
                        cell
                    }
                };
                let epoch = cell.epoch.load(Ordering::SeqCst);
                (cell, epoch)
            })
            .collect();
        if cells.map.len() >= 2 * cells.walked_at.max(512) {
            cells.map.retain(|_, cell| cell.strong_count() > 0);
            cells.walked_at = cells.map.len();
        }
        Some(Stamp(stamped))
    }

    /// Makes every entry stamped with one of `tags` out of date. A tag no
    /// live entry (or load) carries has no cell: nothing to do for it.
    pub(crate) fn invalidate(&self, tags: &[String]) {
        let cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        let mut any = false;
        for tag in tags {
            if let Some(cell) = cells.map.get(tag.as_str()).and_then(Weak::upgrade) {
                cell.epoch.fetch_add(1, Ordering::SeqCst);
                any = true;
            }
        }
        drop(cells);
        if any {
            self.unswept.store(true, Ordering::Release);
        }
    }

    /// Whether an entry with tags may have been written.
    #[inline]
    pub(crate) fn used(&self) -> bool {
        self.used.load(Ordering::Acquire)
    }

    /// Whether an invalidation happened since the last call (which then
    /// sweeps the table).
    pub(crate) fn take_unswept(&self) -> bool {
        self.unswept.load(Ordering::Relaxed) && self.unswept.swap(false, Ordering::AcqRel)
    }

    /// The number of tags with a cell (for the tests).
    #[cfg(test)]
    pub(crate) fn cells(&self) -> usize {
        let cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        cells.map.values().filter(|c| c.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn an_invalidation_dates_every_stamp_of_its_tags_and_no_other() {
        let t = Tags::new();
        assert!(t.stamp(&[]).is_none());
        let a = t.stamp(&tags(&["a"])).unwrap();
        let ab = t.stamp(&tags(&["a", "b"])).unwrap();
        let b = t.stamp(&tags(&["b"])).unwrap();
        t.invalidate(&tags(&["a", "never-seen"]));
        assert!(!a.current() && !ab.current() && b.current());
        assert!(t.take_unswept() && !t.take_unswept());
        let renewed = ab.renewed();
        assert!(renewed.current());
        t.invalidate(&tags(&["b"]));
        assert!(!renewed.current() && !b.current());
    }

    #[test]
    fn cells_no_stamp_holds_are_dropped() {
        let t = Tags::new();
        let kept = t.stamp(&tags(&["kept"])).unwrap();
        for i in 0..5000 {
            drop(t.stamp(&[format!("t{i}")]));
        }
        assert!(t.cells() == 1);
        let len = t.cells.lock().unwrap().map.len();
        assert!(len < 2 * 512 + 1, "{len}");
        t.invalidate(&tags(&["kept"]));
        assert!(!kept.current());
    }
}
