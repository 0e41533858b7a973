//! The `tags=` argument of the writes and loads (`store/tags.rs` has the
//! design): an iterable of `str`, or a stamp taken earlier by the cache's
//! `_stamp` (an async load takes it when it begins, and stores its value
//! later with `set(..., tags=stamp)`).

use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::store::cache::Store;
use crate::store::errors::Error;
use crate::store::tags::Stamp;

/// Tags with their epochs at the start of a load (`Moka._stamp`).
#[pyclass(frozen, module = "moka_py._moka_py", name = "_TagStamp")]
pub(crate) struct TagStamp(pub(crate) Stamp);

const RULE: &str = "tags must be an iterable of str";

/// The names of an iterable of tags (a lone `str` is refused: it would be
/// read as one tag per character).
pub(crate) fn names(tags: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if tags.is_instance_of::<PyString>() {
        return Err(Error::wrong_type(&format!("{RULE} (a list of one tag: [tag])"), tags).into());
    }
    let iter = tags.try_iter().map_err(|_| Error::wrong_type(RULE, tags))?;
    iter.map(|tag| {
        let tag = tag?;
        match tag.cast::<PyString>() {
            Ok(s) => Ok(s.to_str()?.to_owned()),
            Err(_) => Err(Error::wrong_type("each tag must be a str", &tag).into()),
        }
    })
    .collect()
}

/// The stamp of a write's `tags=`: `None` without tags.
pub(crate) fn stamp_of(store: &Store, tags: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Stamp>> {
    let Some(tags) = tags.filter(|t| !t.is_none()) else {
        return Ok(None);
    };
    if let Ok(stamp) = tags.cast::<TagStamp>() {
        return Ok(Some(stamp.get().0.clone()));
    }
    Ok(store.tags.stamp(&names(tags)?))
}
