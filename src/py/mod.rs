//! The Python classes: each parses its arguments and calls the store layer
//! (`store/`). `moka` is the `Moka` class (`fast` its hand-written entries
//! for the most frequent calls); `bulk` its batch methods and
//! `refresh` its reloads, both over the store; `cached` the `@cached`
//! wrapper; `ready` the finished awaitable of `aget_with`; `stats` the
//! snapshot of the statistics; `tags` the `tags=` argument; `tier` the local tier of `moka_py.redis`,
//! `mac` the HMAC of its signed payloads and messages.

pub(crate) mod bulk;
pub(crate) mod cached;
#[cfg(not(PyPy))]
pub(crate) mod fast;
pub(crate) mod mac;
pub(crate) mod moka;
pub(crate) mod ready;
pub(crate) mod refresh;
pub(crate) mod stats;
pub(crate) mod tags;
pub(crate) mod tier;
