//! Parsing and validation of the constructor's and methods' options.

use std::time::Duration;

use moka::policy::EvictionPolicy;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt};

use crate::store::errors::Error;

/// moka refuses (by panicking) expirations longer than 1000 years.
const MAX_SECONDS: f64 = 1000.0 * 365.0 * 24.0 * 3600.0;

/// Parses a `ttl`/`tti` in seconds: a positive, finite int or float of at most
/// 1000 years. `name` is the argument's name, used in the messages.
#[inline]
pub(crate) fn duration(
    value: Option<&Bound<'_, PyAny>>,
    name: &str,
) -> Result<Option<Duration>, Error> {
    match value {
        // Omitted or `None` (PyO3 passes both as `None`): nothing to parse.
        None => Ok(None),
        Some(value) => parse_duration(value, name),
    }
}

/// A method's `ttl` and `tti`: both omitted (the common call) costs two
/// branches, inline.
#[inline]
pub(crate) fn durations(
    ttl: Option<&Bound<'_, PyAny>>,
    tti: Option<&Bound<'_, PyAny>>,
) -> Result<(Option<Duration>, Option<Duration>), Error> {
    if ttl.is_none() && tti.is_none() {
        return Ok((None, None));
    }
    Ok((duration(ttl, "ttl")?, duration(tti, "tti")?))
}

#[inline(never)]
fn parse_duration(value: &Bound<'_, PyAny>, name: &str) -> Result<Option<Duration>, Error> {
    if value.is_none() {
        return Ok(None);
    }
    if value.is_instance_of::<PyBool>()
        || !(value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>())
    {
        return Err(Error::wrong_type(
            &format!("{name} must be a number of seconds (int or float) or None"),
            value,
        ));
    }
    // Big ints become +-inf here and are rejected below like other huge values.
    let seconds: f64 = value.extract().unwrap_or(f64::INFINITY);
    if seconds.is_nan() || seconds <= 0.0 {
        return Err(Error::bad_value(&format!("{name} must be positive"), value));
    }
    if seconds.is_infinite() {
        return Err(Error::bad_value(
            &format!("{name} must be positive and finite"),
            value,
        ));
    }
    if seconds > MAX_SECONDS {
        return Err(Error::bad_value(
            &format!("{name} is out of range (at most 1000 years)"),
            value,
        ));
    }
    Ok(Some(Duration::from_secs_f64(seconds)))
}

pub(crate) fn capacity(value: &Bound<'_, PyAny>) -> Result<u64, Error> {
    if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
        return Err(Error::wrong_type(
            "capacity must be a non-negative int",
            value,
        ));
    }
    value.extract::<u64>().map_err(|_| {
        Error::bad_value(
            "capacity must be a non-negative int that fits in 64 bits",
            value,
        )
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    TinyLfu,
    Lru,
}

impl Policy {
    pub(crate) fn parse(value: &Bound<'_, PyAny>) -> Result<Self, Error> {
        match value.extract::<&str>() {
            Ok("tiny_lfu") => Ok(Policy::TinyLfu),
            Ok("lru") => Ok(Policy::Lru),
            _ => Err(Error::bad_value(
                "policy must be 'tiny_lfu' or 'lru'",
                value,
            )),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Policy::TinyLfu => "tiny_lfu",
            Policy::Lru => "lru",
        }
    }

    pub(crate) fn to_moka(self) -> EvictionPolicy {
        match self {
            Policy::TinyLfu => EvictionPolicy::tiny_lfu(),
            Policy::Lru => EvictionPolicy::lru(),
        }
    }
}

/// Converts a weigher's result to a weight: a non-negative int (a `bool` is
/// one, as in moka-py: `True` weighs 1), clamped to `u32::MAX` (moka's weight
/// type).
pub(crate) fn weight(value: &Bound<'_, PyAny>) -> Result<u32, Error> {
    if !value.is_instance_of::<PyInt>() {
        return Err(Error::wrong_type("weigher must return an int", value));
    }
    match value.extract::<u64>() {
        Ok(w) => Ok(u32::try_from(w).unwrap_or(u32::MAX)),
        Err(_) if value.lt(0)? => Err(Error::bad_value(
            "weigher must return a non-negative int",
            value,
        )),
        Err(_) => Ok(u32::MAX),
    }
}
