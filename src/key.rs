//! Cache keys: Python's hash and equality, evaluated in Rust wherever possible.
//!
//! moka and the in-flight map compare keys while holding their internal locks.
//! Running Python code there is what makes a binding deadlock, so keys of the
//! common immutable built-in types (`int`, `bool`, `float`, `str`, `bytes`,
//! `None` and tuples of them) carry a Rust representation ([`Repr`]) that is
//! compared without the interpreter. Only other objects fall back to Python's
//! `==`, which attaches to the interpreter for the comparison (see the locking
//! rules in `lib.rs` for why that cannot deadlock). An exception raised by such
//! an `__eq__` is parked in a thread-local slot and raised once the moka call
//! has returned ([`take_eq_error`]); the comparison counts as "not equal".
//!
//! Equality follows `dict`: `1`, `1.0` and `True` are one key, identity is
//! checked first (a NaN object finds itself), `str` never equals `bytes`.

use std::cell::{Cell, RefCell};
use std::hash::{BuildHasher, Hash, Hasher};
use std::os::raw::c_int;

use moka::Equivalent;
use pyo3::ffi;
use pyo3::prelude::*;

/// The Rust-comparable form of a key. Pointers borrow immutable buffers owned
/// by the key object (or, for tuples, by its items), which the key keeps alive.
#[derive(Clone)]
pub(crate) enum Repr {
    /// `int` in the `i64` range, `bool`, and integral `float`s in that range.
    Int(i64),
    /// A non-integral `float` or an infinity (NaN is [`Repr::Other`]).
    Float(f64),
    /// An `int` outside the `i64` range (or an integral `float` there), as
    /// its hexadecimal digits: `2**70` and `2.0**70` are one key.
    BigInt(Box<[u8]>),
    /// The UTF-8 bytes of an exact `str`.
    Str(*const u8, usize),
    /// The bytes of an exact `bytes`.
    Bytes(*const u8, usize),
    /// `None`.
    None,
    /// An exact `tuple` whose items are all native.
    Tuple(Box<[Repr]>),
    /// The separator of keyword arguments in `@cached` keys ([`KWARGS_MARK`]).
    Mark,
    /// Anything else: identity, then Python's `==`.
    Other,
}

/// A unique object that `@cached` puts between positional and keyword
/// arguments in its keys; it compares in Rust (by identity), so such keys stay
/// native. Set once at module initialisation and kept alive by the module.
static KWARGS_MARK: std::sync::atomic::AtomicPtr<ffi::PyObject> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Registers the keyword-argument separator (see [`KWARGS_MARK`]), keeping
/// a strong reference to it for the life of the process.
pub(crate) fn set_kwargs_mark(mark: &Bound<'_, PyAny>) {
    let ptr = mark.clone().unbind().into_ptr();
    KWARGS_MARK.store(ptr, std::sync::atomic::Ordering::Release);
}

/// The keyword-argument separator (see [`KWARGS_MARK`]).
pub(crate) fn kwargs_mark(py: Python<'_>) -> Bound<'_, PyAny> {
    let ptr = KWARGS_MARK.load(std::sync::atomic::Ordering::Acquire);
    // SAFETY: set at module initialisation to an object whose strong
    // reference is never released; we return a new strong reference.
    unsafe { Bound::from_borrowed_ptr(py, ptr) }
}

/// Tuples nested deeper than this compare with Python (which guards its own
/// recursion) instead of recursing here.
const MAX_TUPLE_DEPTH: u32 = 16;

impl Repr {
    /// Builds the representation of `obj`.
    ///
    /// # Safety
    /// `obj` must be a valid object pointer and the caller must be attached.
    #[inline]
    unsafe fn of(obj: *mut ffi::PyObject) -> Self {
        // SAFETY: forwarded from the caller.
        unsafe { Self::nested(obj, 0) }
    }

    /// # Safety
    /// As [`Repr::of`].
    #[inline]
    unsafe fn nested(obj: *mut ffi::PyObject, depth: u32) -> Self {
        // SAFETY: `obj` is a live object and we are attached, as the caller
        // guarantees. The most common key, an `int`, is handled inline.
        unsafe {
            if ffi::PyLong_CheckExact(obj) != 0 {
                let mut overflow: c_int = 0;
                let v = ffi::PyLong_AsLongLongAndOverflow(obj, &raw mut overflow);
                if overflow != 0 {
                    return big_int(obj);
                }
                if v == -1 && !ffi::PyErr_Occurred().is_null() {
                    ffi::PyErr_Clear();
                    return Repr::Other;
                }
                return Repr::Int(v);
            }
            Self::not_int(obj, depth)
        }
    }

    /// Every type but `int`, out of line.
    ///
    /// # Safety
    /// As [`Repr::of`].
    unsafe fn not_int(obj: *mut ffi::PyObject, depth: u32) -> Self {
        // SAFETY: (for the whole function) `obj` is a live object and we are
        // attached, as the caller guarantees; every call below is a plain
        // CPython C-API call on that object or on items it owns.
        unsafe {
            if ffi::PyUnicode_CheckExact(obj) != 0 {
                let mut len: ffi::Py_ssize_t = 0;
                let data = ffi::PyUnicode_AsUTF8AndSize(obj, &raw mut len);
                if data.is_null() {
                    // Lone surrogates cannot be encoded; compare with Python.
                    ffi::PyErr_Clear();
                    return Repr::Other;
                }
                #[allow(clippy::cast_sign_loss)]
                return Repr::Str(data.cast::<u8>(), len as usize);
            }
            if obj == ffi::Py_None() {
                return Repr::None;
            }
            if obj == KWARGS_MARK.load(std::sync::atomic::Ordering::Acquire) {
                return Repr::Mark;
            }
            if ffi::PyBool_Check(obj) != 0 {
                return Repr::Int(i64::from(obj == ffi::Py_True()));
            }
            if ffi::PyFloat_CheckExact(obj) != 0 {
                let v = ffi::PyFloat_AsDouble(obj);
                let repr = float_repr(v);
                if matches!(repr, Repr::Other) && v.is_finite() {
                    // Integral beyond i64: compare as the int it equals.
                    let int = ffi::PyLong_FromDouble(v);
                    if int.is_null() {
                        ffi::PyErr_Clear();
                        return Repr::Other;
                    }
                    let repr = big_int(int);
                    ffi::Py_DecRef(int);
                    return repr;
                }
                return repr;
            }
            if ffi::PyBytes_CheckExact(obj) != 0 {
                let data = ffi::PyBytes_AsString(obj);
                let len = ffi::PyBytes_Size(obj);
                #[allow(clippy::cast_sign_loss)]
                return Repr::Bytes(data.cast::<u8>(), len as usize);
            }
            if ffi::PyTuple_CheckExact(obj) != 0 {
                if depth >= MAX_TUPLE_DEPTH {
                    return Repr::Other;
                }
                let n = ffi::PyTuple_Size(obj);
                let mut items = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
                for i in 0..n {
                    let item = Repr::nested(ffi::PyTuple_GetItem(obj, i), depth + 1);
                    if matches!(item, Repr::Other) {
                        return Repr::Other;
                    }
                    items.push(item);
                }
                return Repr::Tuple(items.into_boxed_slice());
            }
            Repr::Other
        }
    }

    #[inline]
    fn is_native(&self) -> bool {
        !matches!(self, Repr::Other)
    }

    /// Native equality; only meaningful when both sides are native.
    #[inline]
    fn native_eq(&self, other: &Repr) -> bool {
        match (self, other) {
            (Repr::Int(a), Repr::Int(b)) => a == b,
            #[allow(clippy::float_cmp)]
            (Repr::Float(a), Repr::Float(b)) => a == b,
            (Repr::Str(pa, la), Repr::Str(pb, lb)) | (Repr::Bytes(pa, la), Repr::Bytes(pb, lb)) => {
                // SAFETY: both buffers are owned by immutable live objects that
                // the keys hold, and the lengths are the ones CPython reported.
                la == lb && (pa == pb || unsafe { bytes(*pa, *la) == bytes(*pb, *lb) })
            }
            (Repr::None, Repr::None) | (Repr::Mark, Repr::Mark) => true,
            (Repr::BigInt(a), Repr::BigInt(b)) => a == b,
            (Repr::Tuple(a), Repr::Tuple(b)) => {
                a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.native_eq(y))
            }
            _ => false,
        }
    }
}

/// The hexadecimal digits of the int `obj`, or [`Repr::Other`] on failure.
///
/// # Safety
/// `obj` must be a live `int` and the caller must be attached.
unsafe fn big_int(obj: *mut ffi::PyObject) -> Repr {
    // SAFETY: as the caller guarantees; the temporary string is released here.
    unsafe {
        let text = ffi::PyNumber_ToBase(obj, 16);
        if text.is_null() {
            ffi::PyErr_Clear();
            return Repr::Other;
        }
        let mut len: ffi::Py_ssize_t = 0;
        let data = ffi::PyUnicode_AsUTF8AndSize(text, &raw mut len);
        let repr = if data.is_null() {
            ffi::PyErr_Clear();
            Repr::Other
        } else {
            #[allow(clippy::cast_sign_loss)]
            Repr::BigInt(bytes(data.cast::<u8>(), len as usize).into())
        };
        ffi::Py_DecRef(text);
        repr
    }
}

/// # Safety
/// `ptr` must point to `len` readable bytes that outlive the returned slice.
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

#[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
fn float_repr(v: f64) -> Repr {
    const LIMIT: f64 = 9_223_372_036_854_775_808.0; // 2**63
    if v.is_nan() {
        Repr::Other
    } else if v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
        Repr::Int(v as i64)
    } else if v.is_finite() && v.fract() == 0.0 {
        // An integral float beyond i64: the caller compares it as a big int.
        Repr::Other
    } else {
        Repr::Float(v)
    }
}

thread_local! {
    static EQ_ERROR: RefCell<Option<PyErr>> = const { RefCell::new(None) };
    static NO_PYTHON: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with Python equality reduced to identity on this thread. The GC's
/// `__traverse__` may not attach to the interpreter; when it walks the cache,
/// moka looks each stored key up by itself, which identity finds.
pub(crate) fn without_python<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            NO_PYTHON.with(|flag| flag.set(self.0));
        }
    }
    let _reset = Reset(NO_PYTHON.with(|flag| flag.replace(true)));
    f()
}

/// Raises the exception a key's `__eq__` raised during the last moka call on
/// this thread, if any.
pub(crate) fn take_eq_error() -> PyResult<()> {
    match EQ_ERROR.with(RefCell::take) {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Python's `a == b` for two keys, at least one of which is not native.
fn python_eq(a: *mut ffi::PyObject, b: *mut ffi::PyObject) -> bool {
    if a == b {
        return true;
    }
    if NO_PYTHON.with(Cell::get) {
        return false;
    }
    if crate::detach::exiting() {
        // A thread other than the main one must not attach while the
        // interpreter exits (see detach.rs); we may hold moka's locks here, so
        // do not park either: the keys count as different.
        return false;
    }
    Python::attach(|py| {
        // SAFETY: both pointers are live objects owned by the keys being
        // compared, and we are attached.
        let r = unsafe { ffi::PyObject_RichCompareBool(a, b, ffi::Py_EQ) };
        if r < 0 {
            let err = PyErr::fetch(py);
            EQ_ERROR.with(|slot| {
                slot.borrow_mut().get_or_insert(err);
            });
            false
        } else {
            r == 1
        }
    })
}

#[inline]
fn keys_eq(
    (ha, ra, pa): (isize, &Repr, *mut ffi::PyObject),
    (hb, rb, pb): (isize, &Repr, *mut ffi::PyObject),
) -> bool {
    if ha != hb {
        return false;
    }
    if ra.is_native() && rb.is_native() {
        ra.native_eq(rb)
    } else {
        python_eq(pa, pb)
    }
}

/// A key stored in the cache: owns a reference to the Python object.
pub(crate) struct Key {
    hash: isize,
    repr: Repr,
    obj: Py<PyAny>,
}

// SAFETY: the raw pointers inside `repr` point into buffers of immutable
// objects (`str`, `bytes`, tuple items) that `obj` keeps alive; reading them
// from any thread is sound. `Py<PyAny>` itself is Send + Sync.
unsafe impl Send for Key {}
// SAFETY: see above; nothing in a `Key` is mutated after construction.
unsafe impl Sync for Key {}

impl Key {
    /// Hashes `obj` (raising what `hash()` raises) and takes a reference to it.
    pub(crate) fn new(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let hash = obj.hash()?;
        // SAFETY: `obj` is a live object and we hold the interpreter (`Bound`).
        let repr = unsafe { Repr::of(obj.as_ptr()) };
        Ok(Key {
            hash,
            repr,
            obj: obj.clone().unbind(),
        })
    }

    pub(crate) fn obj(&self) -> &Py<PyAny> {
        &self.obj
    }

    /// Whether comparing this key may run Python code (`__eq__`).
    pub(crate) fn uses_python_eq(&self) -> bool {
        !self.repr.is_native()
    }

    fn parts(&self) -> (isize, &Repr, *mut ffi::PyObject) {
        (self.hash, &self.repr, self.obj.as_ptr())
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        keys_eq(self.parts(), other.parts())
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_isize(self.hash);
    }
}

/// A borrowed key for lookups: no reference is taken, nothing is allocated for
/// scalar keys. Valid while the caller holds the object it was built from.
pub(crate) struct KeyRef {
    hash: isize,
    repr: Repr,
    obj: *mut ffi::PyObject,
}

// SAFETY: a `KeyRef` only lives inside one call, during which the calling
// frame keeps `obj` alive; the pointed-to data is immutable (see `Key`).
unsafe impl Send for KeyRef {}
// SAFETY: as above.
unsafe impl Sync for KeyRef {}

impl KeyRef {
    pub(crate) fn new(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let hash = obj.hash()?;
        // SAFETY: `obj` is live and we are attached.
        let repr = unsafe { Repr::of(obj.as_ptr()) };
        Ok(KeyRef {
            hash,
            repr,
            obj: obj.as_ptr(),
        })
    }

    /// Whether comparing this key may run Python code (`__eq__`).
    pub(crate) fn uses_python_eq(&self) -> bool {
        !self.repr.is_native()
    }

    /// Turns the borrowed key into an owned one, reusing its hash and repr
    /// (whose pointers stay valid: the owned key keeps the same object alive).
    pub(crate) fn to_owned(&self, obj: &Bound<'_, PyAny>) -> Key {
        debug_assert_eq!(obj.as_ptr(), self.obj);
        Key {
            hash: self.hash,
            repr: self.repr.clone(),
            obj: obj.clone().unbind(),
        }
    }
}

impl Hash for KeyRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_isize(self.hash);
    }
}

impl Equivalent<Key> for KeyRef {
    fn equivalent(&self, key: &Key) -> bool {
        keys_eq((self.hash, &self.repr, self.obj), key.parts())
    }
}

/// Spreads Python's hash (which is the identity for small ints) over all 64
/// bits; moka and dashmap pick segments and buckets from different bits.
#[derive(Clone, Copy, Default)]
pub(crate) struct PyHashBuilder;

impl BuildHasher for PyHashBuilder {
    type Hasher = PyHasher;
    fn build_hasher(&self) -> PyHasher {
        PyHasher(0)
    }
}

pub(crate) struct PyHasher(u64);

impl Hasher for PyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    #[allow(clippy::cast_sign_loss)]
    fn write_isize(&mut self, i: isize) {
        self.write_u64(i as u64);
    }

    fn write_u64(&mut self, i: u64) {
        // A multiplicative mix with a final fold (as in splitmix64).
        let mut x = (self.0 ^ i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        self.0 = x ^ (x >> 29);
    }
}
