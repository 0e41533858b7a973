//! `moka_py.CacheStats`: the frozen snapshot `cache.stats()` returns (the
//! figures are recorded by `store/stats.rs`).

use pyo3::prelude::*;

use crate::store::stats::Figures;

/// A snapshot of a cache's statistics (`Moka.stats()`).
#[pyclass(
    frozen,
    eq,
    skip_from_py_object,
    module = "moka_py._moka_py",
    name = "CacheStats"
)]
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CacheStats {
    /// Reads that found a value.
    #[pyo3(get)]
    hits: u64,
    /// Reads that found none.
    #[pyo3(get)]
    misses: u64,
    /// Initializer calls that returned a value.
    #[pyo3(get)]
    loads: u64,
    /// Initializer calls that raised.
    #[pyo3(get)]
    load_failures: u64,
    /// Seconds spent in initializer calls, in all.
    #[pyo3(get)]
    load_time: f64,
    /// Entries evicted for size.
    #[pyo3(get)]
    evictions: u64,
    /// The total weight of the entries evicted for size.
    #[pyo3(get)]
    evicted_weight: u64,
    /// Entries removed because they expired.
    #[pyo3(get)]
    expirations: u64,
    /// Failed loads answered with an expired value (`stale_if_error`).
    #[pyo3(get)]
    stale_served: u64,
}

impl From<Figures> for CacheStats {
    fn from(f: Figures) -> Self {
        CacheStats {
            hits: f.hits,
            misses: f.misses,
            loads: f.loads,
            load_failures: f.load_failures,
            load_time: f.load_time,
            evictions: f.evictions,
            evicted_weight: f.evicted_weight,
            expirations: f.expirations,
            stale_served: f.stale_served,
        }
    }
}

#[pymethods]
impl CacheStats {
    /// `hits + misses`.
    #[getter]
    fn requests(&self) -> u64 {
        self.hits.saturating_add(self.misses)
    }

    /// `hits / requests`, 0.0 without requests.
    #[getter]
    fn hit_rate(&self) -> f64 {
        ratio(self.hits, self.requests())
    }

    /// `misses / requests`, 0.0 without requests.
    #[getter]
    fn miss_rate(&self) -> f64 {
        ratio(self.misses, self.requests())
    }

    fn __repr__(&self) -> String {
        format!(
            "CacheStats(hits={}, misses={}, loads={}, load_failures={}, load_time={}, \
             evictions={}, evicted_weight={}, expirations={}, stale_served={})",
            self.hits,
            self.misses,
            self.loads,
            self.load_failures,
            self.load_time,
            self.evictions,
            self.evicted_weight,
            self.expirations,
            self.stale_served
        )
    }
}

#[allow(clippy::cast_precision_loss)]
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}
