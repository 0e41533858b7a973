//! The batch methods of `Moka`: `get_many`, `set_many`, `remove_many` and
//! `remove_if`.
//!
//! Each crosses into moka once for the whole batch, detached (a batch can
//! last), after everything that runs Python code is done: keys are resolved
//! (and `set_many`'s weigher runs) first, so a bad key or weight raises
//! before anything changes, and `remove_if`'s predicate runs on a snapshot.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::store::cache::{live, Store};
use crate::store::entry::Entry;
use crate::store::errors::Error;
use crate::store::key::{Key, KeyRef};
use crate::store::tags::Stamp;

/// The lookup keys of `keys` (an iterable), in order.
fn lookup_keys(
    cache: &Store,
    keys: &Bound<'_, PyAny>,
) -> PyResult<Vec<(Py<PyAny>, Option<KeyRef>)>> {
    keys.try_iter()?
        .map(|obj| {
            let obj = obj?;
            let key = cache.key_ref(&obj)?;
            Ok((obj.unbind(), key))
        })
        .collect()
}

pub(crate) fn get_many<'py>(
    cache: &Store,
    py: Python<'py>,
    keys: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let keys = lookup_keys(cache, keys)?;
    let refs: Vec<Option<&KeyRef>> = keys.iter().map(|(_, k)| k.as_ref()).collect();
    let found: Vec<Option<Arc<Entry>>> = cache.read_batch(
        py,
        |store| {
            refs.iter()
                .map(|key| key.and_then(|key| live(store, key)))
                .collect()
        },
        |found| found,
    );
    let out = PyDict::new(py);
    for ((obj, _), entry) in keys.iter().zip(&found) {
        cache.count_read(entry.is_some());
        if let Some(entry) = entry {
            out.set_item(obj.bind(py), entry.obj.clone_ref(py))?;
        }
    }
    drop(found);
    crate::store::call::after(py);
    Ok(out)
}

/// The `(key, value)` pairs of `items`: a mapping's items, or an iterable of
/// pairs (as `dict(items)` takes them).
fn pairs<'py>(items: &Bound<'py, PyAny>) -> PyResult<Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
    let py = items.py();
    let iter = if items.hasattr(pyo3::intern!(py, "keys"))? {
        items.call_method0(pyo3::intern!(py, "items"))?.try_iter()?
    } else {
        items.try_iter()?
    };
    iter.enumerate()
        .map(|(i, pair)| {
            let pair = pair?;
            let rule = format!("set_many: element #{i} must be a (key, value) pair");
            let mut parts = pair
                .try_iter()
                .map_err(|_| Error::wrong_type(&rule, &pair))?;
            let (Some(k), Some(v), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(Error::bad_value(&rule, &pair).into());
            };
            Ok((k?, v?))
        })
        .collect()
}

pub(crate) fn set_many(
    cache: &Store,
    py: Python<'_>,
    items: &Bound<'_, PyAny>,
    ttl: Option<Duration>,
    tti: Option<Duration>,
    tags: Option<Stamp>,
) -> PyResult<()> {
    let mut batch: Vec<(Key, Arc<Entry>)> = Vec::new();
    let prepared = pairs(items).and_then(|pairs| {
        for (k, v) in pairs {
            let key = cache.key(&k)?;
            let entry = cache.entry(py, &k, &v, ttl, tti, tags.clone())?;
            batch.push((key, entry));
        }
        Ok(())
    });
    if let Err(err) = prepared {
        // Release the keys made so far now, not at this thread's next call.
        drop(batch);
        crate::store::call::after(py);
        return Err(err);
    }
    cache.write_batch(py, move |store, bound| {
        for (key, entry) in batch {
            let weight = entry.weight;
            store.insert(key, entry);
            bound(store, weight);
        }
    });
    Ok(())
}

pub(crate) fn remove_many(cache: &Store, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<u64> {
    let keys = lookup_keys(cache, keys)?;
    let refs: Vec<&KeyRef> = keys.iter().filter_map(|(_, k)| k.as_ref()).collect();
    let can_expire = cache.can_expire();
    Ok(cache.write_batch(py, |store, _| {
        let mut removed = 0;
        for key in refs {
            // An expired entry is absent here as everywhere: where one can
            // expire, moka is asked first (as `Store::take` does).
            // (One invalidated by tag is removed, not counted.)
            if (!can_expire || store.contains_key(key))
                && cache.remove_in(store, key).is_some_and(|e| e.current())
            {
                removed += 1;
            }
        }
        removed
    }))
}

pub(crate) fn remove_if(
    cache: &Store,
    py: Python<'_>,
    predicate: &Bound<'_, PyAny>,
) -> PyResult<u64> {
    let entries = cache.snapshot(py, |entries| entries);
    let mut chosen: Vec<(Key, Arc<Entry>)> = Vec::new();
    for (key, entry) in &entries {
        let pick = crate::store::call::call_python(py, || {
            predicate
                .call1((key.obj().clone_ref(py), entry.obj.clone_ref(py)))?
                .is_truthy()
        });
        match pick {
            Ok(true) => chosen.push((key.clone_ref(py), Arc::clone(entry))),
            Ok(false) => {}
            Err(err) => {
                drop((chosen, entries));
                crate::store::call::after(py);
                return Err(err);
            }
        }
    }
    drop(entries);
    // An entry written again since the snapshot was not judged: it stays.
    Ok(cache.remove_seen(py, chosen))
}
