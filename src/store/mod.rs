//! The store layer: plain Rust under the Python classes. Keys and how they
//! compare (`key`, `hash`, `intern`), the stored entry and its expiry
//! (`entry`, `expiry`), the moka store, its swap and the entry helper
//! (`cache`), single-flight loads (`loader`), statistics (`stats`), and how
//! every call enters moka and what runs after it (`call`, `deferred`).
//!
//! Nothing here defines a Python method: the classes of `py/` parse their
//! arguments and call this layer, which never imports them.

pub(crate) mod cache;
pub(crate) mod call;
pub(crate) mod counter;
pub(crate) mod deferred;
pub(crate) mod entry;
pub(crate) mod errors;
pub(crate) mod expiry;
pub(crate) mod hash;
pub(crate) mod intern;
pub(crate) mod key;
pub(crate) mod listener;
pub(crate) mod loader;
pub(crate) mod options;
pub(crate) mod slot;
pub(crate) mod stats;
pub(crate) mod tags;
