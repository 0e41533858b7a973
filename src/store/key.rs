//! Cache keys: Python's hash, and an equality that moka evaluates in Rust.
//!
//! moka and the in-flight map compare keys while holding their internal locks,
//! so no key comparison may run Python code. Keys of the common immutable
//! built-in types (`int`, `bool`, `float`, `str`, `bytes`, `None` and tuples
//! of them) carry a Rust representation ([`Repr`]) compared without the
//! interpreter; objects whose type keeps `object`'s equality (instances of
//! classes without `__eq__`, classes themselves, plain `Enum` members, NaN)
//! compare by identity, which is what `==` does for them. Every other key is
//! first resolved, outside moka, to its canonical id (`intern.rs`), which
//! moka then compares.
//!
//! Equality follows `dict`: `1`, `1.0` and `True` are one key, identity is
//! checked first (a NaN object finds itself), `str` never equals `bytes`.

use std::hash::{Hash, Hasher};
use std::os::raw::c_int;
use std::ptr::addr_of_mut;

use moka::Equivalent;
use pyo3::ffi;
use pyo3::prelude::*;

use crate::store::deferred::PyOwned;
use crate::store::hash::int_hash;
use crate::store::intern::CanonRef;

/// The Rust-comparable form of a key. Pointers borrow immutable buffers owned
/// by the key object (or, for tuples, by its items), which the key keeps alive.
#[derive(Clone)]
pub(crate) enum Repr {
    /// `int` in the `i64` range, `bool`, and integral `float`s in that range.
    Int(i64),
    /// A non-integral `float` or an infinity.
    Float(f64),
    /// An `int` outside the `i64` range (or an integral `float` there), as
    /// its hexadecimal digits: `2**70` and `2.0**70` are one key.
    BigInt(Box<[u8]>),
    /// The UTF-8 bytes of a `str`.
    Str(*const u8, usize),
    /// The bytes of a `bytes`.
    Bytes(*const u8, usize),
    /// `None`.
    None,
    /// A `tuple` whose items are all native.
    Tuple(Box<[Repr]>),
    /// An object whose type keeps `object`'s equality: equal only to itself.
    Identity(*mut ffi::PyObject),
    /// A `uuid.UUID` (exact type), as its 128-bit value in two halves.
    Uuid(u64, u64),
    /// On PyPy, a NaN, as its bits: PyPy's `is` (with which a `dict` finds a
    /// NaN) compares floats by their bits.
    #[cfg(PyPy)]
    NanBits(u64),
    /// A key compared by Python `==`, as its canonical entry (owned keys).
    Canon(CanonRef),
    /// The same in a borrowed key: the canonical entry's id (lookups).
    CanonId(u64),
    /// Not yet resolved: must be interned (`intern.rs`) before use.
    Python,
    /// In a borrowed key of a read only: a tuple of native items (see
    /// [`lazy_tuple`]) whose representation is built only if moka finds an
    /// entry of the same hash, by comparing it with that entry's item by item
    /// ([`eq_obj`]): a miss then costs no allocation and no conversion.
    Lazy(*mut ffi::PyObject),
}

/// A unique object that `@cached` puts between positional and keyword
/// arguments in its keys (an `object()`, so it compares by identity). Set once
/// at module initialisation and kept alive for the life of the process.
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

/// Whether `tp` is `base` or a subclass that keeps its `==` and `hash()`
/// (an `IntEnum`, a `StrEnum`, a named tuple): its instances compare as
/// `base` values do.
///
/// # Safety
/// Both must be live type objects; the caller must be attached.
#[inline]
unsafe fn compares_as(tp: *mut ffi::PyTypeObject, base: *mut ffi::PyTypeObject) -> bool {
    // SAFETY: reads two slots of live type objects.
    #[cfg(not(PyPy))]
    unsafe {
        tp == base
            || (same_slot((*tp).tp_richcompare, (*base).tp_richcompare)
                && same_slot((*tp).tp_hash, (*base).tp_hash))
    }
    // SAFETY: as the caller guarantees.
    #[cfg(PyPy)]
    unsafe {
        tp == base || (same_method(tp, base, c"__eq__") && same_method(tp, base, c"__hash__"))
    }
}

/// Whether `tp` has `base`'s method `name` (looked up on both types, compared
/// by identity). PyPy's type objects are made by its C-API layer, whose slots
/// may hold one generic function for every class that defines the method:
/// equal slots say nothing there, so the methods themselves are compared.
///
/// # Safety
/// Both must be live type objects; the caller must be attached.
#[cfg(PyPy)]
unsafe fn same_method(
    tp: *mut ffi::PyTypeObject,
    base: *mut ffi::PyTypeObject,
    name: &std::ffi::CStr,
) -> bool {
    // SAFETY: two live type objects, attached; a failed look-up leaves its
    // error behind, cleared here.
    unsafe {
        let a = ffi::PyObject_GetAttrString(tp.cast(), name.as_ptr());
        let b = ffi::PyObject_GetAttrString(base.cast(), name.as_ptr());
        let same = !a.is_null() && a == b;
        if a.is_null() || b.is_null() {
            ffi::PyErr_Clear();
        }
        ffi::Py_XDECREF(a);
        ffi::Py_XDECREF(b);
        same
    }
}

/// Whether instances of `tp` compare by identity (`object`'s `==`).
///
/// # Safety
/// `tp` must be a live type object; the caller must be attached.
#[inline]
unsafe fn identity_eq(tp: *mut ffi::PyTypeObject) -> bool {
    // SAFETY: as the caller guarantees.
    unsafe {
        #[cfg(not(PyPy))]
        {
            same_slot(
                (*tp).tp_richcompare,
                (*addr_of_mut!(ffi::PyBaseObject_Type)).tp_richcompare,
            )
        }
        #[cfg(PyPy)]
        {
            same_method(tp, addr_of_mut!(ffi::PyBaseObject_Type), c"__eq__")
        }
    }
}

/// Whether two type slots hold the same C function. Both addresses are read
/// from CPython's type objects (not taken in this crate), so equal addresses
/// mean the same function.
#[cfg(not(PyPy))]
#[inline]
fn same_slot<F: Copy>(a: Option<F>, b: Option<F>) -> bool {
    let addr = |f: Option<F>| {
        // SAFETY: `F` is a function pointer type (a slot), the size of a usize.
        f.map_or(0, |f| unsafe { std::mem::transmute_copy::<F, usize>(&f) })
    };
    addr(a) == addr(b)
}

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
                return int_repr(obj);
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
            let tp = ffi::Py_TYPE(obj);
            if ffi::PyUnicode_Check(obj) != 0 && compares_as(tp, addr_of_mut!(ffi::PyUnicode_Type))
            {
                if compact_ascii(obj) {
                    // Its characters are its UTF-8 bytes (what
                    // `PyUnicode_AsUTF8AndSize` returns for it), read in place.
                    let (data, len) = ascii_data(obj);
                    return Repr::Str(data, len);
                }
                let mut len: ffi::Py_ssize_t = 0;
                let data = ffi::PyUnicode_AsUTF8AndSize(obj, &raw mut len);
                if data.is_null() {
                    // Lone surrogates cannot be encoded; compare with Python.
                    ffi::PyErr_Clear();
                    return Repr::Python;
                }
                #[allow(clippy::cast_sign_loss)]
                return Repr::Str(data.cast::<u8>(), len as usize);
            }
            if obj == ffi::Py_None() {
                return Repr::None;
            }
            if ffi::PyBool_Check(obj) != 0 {
                return Repr::Int(i64::from(obj == ffi::Py_True()));
            }
            if ffi::PyTuple_Check(obj) != 0 && compares_as(tp, addr_of_mut!(ffi::PyTuple_Type)) {
                if depth >= MAX_TUPLE_DEPTH {
                    return Repr::Python;
                }
                let n = ffi::PyTuple_Size(obj);
                let mut items = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
                for i in 0..n {
                    let item = Repr::nested(ffi::PyTuple_GetItem(obj, i), depth + 1);
                    if matches!(item, Repr::Python) {
                        return Repr::Python;
                    }
                    items.push(item);
                }
                return Repr::Tuple(items.into_boxed_slice());
            }
            if ffi::PyFloat_Check(obj) != 0 && compares_as(tp, addr_of_mut!(ffi::PyFloat_Type)) {
                return float_or_big(obj, ffi::PyFloat_AsDouble(obj));
            }
            if ffi::PyLong_Check(obj) != 0 && compares_as(tp, addr_of_mut!(ffi::PyLong_Type)) {
                return int_repr(obj);
            }
            if ffi::PyComplex_Check(obj) != 0 && compares_as(tp, addr_of_mut!(ffi::PyComplex_Type))
            {
                // A complex without imaginary part equals its real part.
                if ffi::PyComplex_ImagAsDouble(obj) == 0.0 {
                    return float_or_big(obj, ffi::PyComplex_RealAsDouble(obj));
                }
                return Repr::Python;
            }
            if ffi::PyBytes_Check(obj) != 0 && compares_as(tp, addr_of_mut!(ffi::PyBytes_Type)) {
                let data = ffi::PyBytes_AsString(obj);
                let len = ffi::PyBytes_Size(obj);
                #[allow(clippy::cast_sign_loss)]
                return Repr::Bytes(data.cast::<u8>(), len as usize);
            }
            if identity_eq(tp) {
                // `object`'s `==`: identity (an instance of a class without
                // `__eq__`, a class, a plain `Enum` member, the kwargs mark).
                return Repr::Identity(obj);
            }
            Repr::Python
        }
    }

    /// Native equality (every variant but `Python`): two ints, the most
    /// frequent keys, inline; the other variants out of line.
    #[inline(always)]
    fn native_eq(&self, other: &Repr) -> bool {
        if let (Repr::Int(a), Repr::Int(b)) = (self, other) {
            return a == b;
        }
        self.native_eq_other(other)
    }

    #[inline(never)]
    fn native_eq_other(&self, other: &Repr) -> bool {
        match (self, other) {
            (Repr::Int(a), Repr::Int(b)) => a == b,
            #[allow(clippy::float_cmp)]
            (Repr::Float(a), Repr::Float(b)) => a == b,
            (Repr::Str(pa, la), Repr::Str(pb, lb)) | (Repr::Bytes(pa, la), Repr::Bytes(pb, lb)) => {
                // SAFETY: both buffers are owned by immutable live objects that
                // the keys hold, and the lengths are the ones CPython reported.
                la == lb && (pa == pb || unsafe { bytes(*pa, *la) == bytes(*pb, *lb) })
            }
            (Repr::None, Repr::None) => true,
            (Repr::Identity(a), Repr::Identity(b)) => a == b,
            (Repr::Uuid(ah, al), Repr::Uuid(bh, bl)) => ah == bh && al == bl,
            #[cfg(PyPy)]
            (Repr::NanBits(a), Repr::NanBits(b)) => a == b,
            (Repr::BigInt(a), Repr::BigInt(b)) => a == b,
            (Repr::Tuple(a), Repr::Tuple(b)) => {
                a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.native_eq(y))
            }
            (Repr::Canon(a), Repr::Canon(b)) => a.id() == b.id(),
            (Repr::Canon(a), Repr::CanonId(b)) | (Repr::CanonId(b), Repr::Canon(a)) => a.id() == *b,
            (Repr::CanonId(a), Repr::CanonId(b)) => a == b,
            _ => false,
        }
    }
}

/// An `int` (or a subclass comparing as one).
///
/// # Safety
/// `obj` must be a live `int` and the caller must be attached.
#[inline]
unsafe fn int_repr(obj: *mut ffi::PyObject) -> Repr {
    // SAFETY: as the caller guarantees.
    unsafe {
        let mut overflow: c_int = 0;
        let v = ffi::PyLong_AsLongLongAndOverflow(obj, &raw mut overflow);
        if overflow != 0 {
            return big_int(obj);
        }
        if v == -1 && !ffi::PyErr_Occurred().is_null() {
            ffi::PyErr_Clear();
            return Repr::Python;
        }
        Repr::Int(v)
    }
}

/// A float's key: an int when integral (beyond `i64` as a big int), the
/// identity of `obj` for a NaN (which equals only itself), else the float.
///
/// # Safety
/// `obj` must be a live `float` and the caller must be attached.
unsafe fn float_or_big(obj: *mut ffi::PyObject, v: f64) -> Repr {
    // SAFETY: as the caller guarantees.
    unsafe {
        if v.is_nan() {
            #[cfg(PyPy)]
            return {
                let _ = obj;
                Repr::NanBits(v.to_bits())
            };
            #[cfg(not(PyPy))]
            return Repr::Identity(obj);
        }
        let repr = float_repr(v);
        if matches!(repr, Repr::Python) {
            // Integral beyond i64: compare as the int it equals.
            let int = ffi::PyLong_FromDouble(v);
            if int.is_null() {
                ffi::PyErr_Clear();
                return Repr::Python;
            }
            let repr = big_int(int);
            ffi::Py_DecRef(int);
            return repr;
        }
        repr
    }
}

// pyo3-ffi 0.28 declares `PyNumber_ToBase` without PyPy's name for it.
#[cfg(PyPy)]
extern "C" {
    #[link_name = "PyPyNumber_ToBase"]
    fn PyNumber_ToBase(n: *mut ffi::PyObject, base: c_int) -> *mut ffi::PyObject;
}
#[cfg(not(PyPy))]
use ffi::PyNumber_ToBase;

/// The hexadecimal digits of the int `obj`, or [`Repr::Python`] on failure.
///
/// # Safety
/// `obj` must be a live `int` and the caller must be attached.
unsafe fn big_int(obj: *mut ffi::PyObject) -> Repr {
    // SAFETY: as the caller guarantees; the temporary string is released here.
    unsafe {
        let text = PyNumber_ToBase(obj, 16);
        if text.is_null() {
            ffi::PyErr_Clear();
            return Repr::Python;
        }
        let mut len: ffi::Py_ssize_t = 0;
        let data = ffi::PyUnicode_AsUTF8AndSize(text, &raw mut len);
        let repr = if data.is_null() {
            ffi::PyErr_Clear();
            Repr::Python
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
        Repr::Python
    } else if v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
        Repr::Int(v as i64)
    } else if v.is_finite() && v.fract() == 0.0 {
        // An integral float beyond i64: the caller compares it as a big int.
        Repr::Python
    } else {
        Repr::Float(v)
    }
}

/// Whether `obj` is a tuple whose representation is native however it is
/// built (never [`Repr::Python`]), so that a read can look it up by hash alone
/// and compare it only with entries of the same hash ([`Repr::Lazy`]): an
/// exact tuple, at most [`MAX_TUPLE_DEPTH`] deep, of exact `int`, ASCII `str`,
/// `bytes`, `float`, `bool`, `None` and such tuples.
///
/// # Safety
/// `obj` must be a live object and the caller must be attached.
#[inline]
unsafe fn lazy_tuple(obj: *mut ffi::PyObject, depth: u32) -> bool {
    // SAFETY: reads the types and items of live objects (a tuple's items are
    // owned by it), attached.
    unsafe {
        if ffi::PyTuple_CheckExact(obj) == 0 || depth >= MAX_TUPLE_DEPTH {
            return false;
        }
        for i in 0..tuple_len(obj) {
            let item = tuple_item(obj, i);
            if !(plain_scalar(item) || lazy_tuple(item, depth + 1)) {
                return false;
            }
        }
        true
    }
}

/// Whether the `str` `obj` is ASCII with its characters in place: they are then
/// its UTF-8 bytes, `PyUnicode_GET_LENGTH` of them at `PyUnicode_DATA`.
///
/// # Safety
/// `obj` must be a live `str` (or subclass) and the caller must be attached.
#[cfg(all(not(Py_3_14), not(PyPy)))]
#[inline(always)]
unsafe fn compact_ascii(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: reads the state bits of a live `str`, attached.
    unsafe { ffi::PyUnicode_IS_COMPACT_ASCII(obj) != 0 }
}

/// As above, on 3.14 and later, whose `str` state bits PyO3 does not read (their
/// layout is CPython's to change): one byte a character and every byte below
/// 0x80, read through the C API's `PyUnicode_KIND` and `PyUnicode_DATA`. Says
/// the same of every string as the bits do (no non-compact `str` is made since
/// 3.12), at the cost of two calls and a scan of the bytes.
///
/// # Safety
/// As above.
#[cfg(all(Py_3_14, not(PyPy)))]
#[inline(always)]
unsafe fn compact_ascii(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: `obj` is a live `str`, attached: its kind, data and length are
    // read through the C API, and a 1-byte kind holds `length` bytes at `data`.
    unsafe {
        if ffi::PyUnicode_KIND(obj) != ffi::PyUnicode_1BYTE_KIND {
            return false;
        }
        #[allow(clippy::cast_sign_loss)]
        std::slice::from_raw_parts(
            ffi::PyUnicode_DATA(obj).cast::<u8>().cast_const(),
            ffi::PyUnicode_GET_LENGTH(obj) as usize,
        )
        .is_ascii()
    }
}

/// As above, on PyPy, whose `str` keeps no characters in CPython's layout: an
/// ASCII string is one whose UTF-8 form (`PyUnicode_AsUTF8AndSize`, kept by
/// the object for its lifetime) has every byte below 0x80.
///
/// # Safety
/// As above.
#[cfg(PyPy)]
#[inline(always)]
unsafe fn compact_ascii(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: `obj` is a live `str`, attached.
    unsafe {
        let mut len: ffi::Py_ssize_t = 0;
        let data = ffi::PyUnicode_AsUTF8AndSize(obj, &raw mut len);
        if data.is_null() {
            // Lone surrogates: not ASCII (and compared with Python).
            ffi::PyErr_Clear();
            return false;
        }
        #[allow(clippy::cast_sign_loss)]
        bytes(data.cast::<u8>(), len as usize).is_ascii()
    }
}

/// The characters of a `str` that [`compact_ascii`] accepted, which are its
/// UTF-8 bytes: where they are and how many.
///
/// # Safety
/// `obj` must be a live `str` that [`compact_ascii`] accepted, and the caller
/// must be attached; the bytes live as long as `obj`.
#[inline(always)]
unsafe fn ascii_data(obj: *mut ffi::PyObject) -> (*const u8, usize) {
    // SAFETY: as the caller guarantees: on CPython a compact ASCII `str`
    // holds its length in bytes at its data; on PyPy its UTF-8 form, made by
    // `compact_ascii`, is kept by the object.
    #[allow(clippy::cast_sign_loss)]
    unsafe {
        #[cfg(not(PyPy))]
        {
            (
                ffi::PyUnicode_DATA(obj).cast::<u8>().cast_const(),
                ffi::PyUnicode_GET_LENGTH(obj) as usize,
            )
        }
        #[cfg(PyPy)]
        {
            let mut len: ffi::Py_ssize_t = 0;
            let data = ffi::PyUnicode_AsUTF8AndSize(obj, &raw mut len);
            (data.cast::<u8>(), len as usize)
        }
    }
}

/// The number of items of a tuple: CPython's inline read, a call on PyPy
/// (which has no such macro).
///
/// # Safety
/// `obj` must be a live tuple and the caller must be attached.
#[inline(always)]
pub(crate) unsafe fn tuple_len(obj: *mut ffi::PyObject) -> ffi::Py_ssize_t {
    // SAFETY: as the caller guarantees.
    unsafe {
        #[cfg(not(PyPy))]
        {
            ffi::PyTuple_GET_SIZE(obj)
        }
        #[cfg(PyPy)]
        {
            ffi::PyTuple_Size(obj)
        }
    }
}

/// Item `i` of a tuple, borrowed: as [`tuple_len`].
///
/// # Safety
/// `obj` must be a live tuple, `i` below its length, and the caller attached.
#[inline(always)]
pub(crate) unsafe fn tuple_item(obj: *mut ffi::PyObject, i: ffi::Py_ssize_t) -> *mut ffi::PyObject {
    // SAFETY: as the caller guarantees.
    unsafe {
        #[cfg(not(PyPy))]
        {
            ffi::PyTuple_GET_ITEM(obj, i)
        }
        #[cfg(PyPy)]
        {
            ffi::PyTuple_GetItem(obj, i)
        }
    }
}

/// Whether `obj` is a plain key ([`plain`]) but a tuple: an exact `int`,
/// ASCII `str`, `bytes` or `float`, `bool`, `None` (the most common first).
///
/// # Safety
/// `obj` must be a live object and the caller must be attached.
#[inline(always)]
unsafe fn plain_scalar(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: reads the type (and the state bits of a `str`) of a live
    // object, attached.
    unsafe {
        let tp = ffi::Py_TYPE(obj);
        if tp == addr_of_mut!(ffi::PyUnicode_Type) {
            return compact_ascii(obj);
        }
        tp == addr_of_mut!(ffi::PyLong_Type)
            || tp == addr_of_mut!(ffi::PyBool_Type)
            || obj == ffi::Py_None()
            || tp == addr_of_mut!(ffi::PyFloat_Type)
            || tp == addr_of_mut!(ffi::PyBytes_Type)
    }
}

/// Whether `obj` is a key whose hash, representation and equality run no
/// Python code and need no canonical entry: an exact `int`, ASCII `str`,
/// `bytes` or `float`, `bool`, `None`, or a tuple that [`lazy_tuple`]
/// accepts. (The fast entries of `py/fast.rs` take only these.)
///
/// # Safety
/// `obj` must be a live object and the caller must be attached.
#[inline]
#[cfg_attr(PyPy, allow(dead_code))] // for `py/fast.rs`
pub(crate) unsafe fn plain(obj: *mut ffi::PyObject) -> bool {
    // SAFETY: as the caller guarantees.
    unsafe { plain_scalar(obj) || lazy_tuple(obj, 0) }
}

/// Whether `obj` (accepted by [`lazy_tuple`] at this depth, or one of its
/// items) equals the stored key `stored_obj`, whose representation is
/// `stored`: what `Repr::of(obj).native_eq(stored)` says, without building
/// the tuple's. Items that are the same objects (interned strings, small
/// ints, `True`) are equal without a look at their values.
///
/// # Safety
/// As [`lazy_tuple`]; `obj` must have been accepted by it, and `stored_obj`
/// must be the live object that `stored` describes.
unsafe fn eq_obj(stored: &Repr, stored_obj: *mut ffi::PyObject, obj: *mut ffi::PyObject) -> bool {
    // SAFETY: as the caller guarantees; the items are owned by their tuples,
    // and a `Tuple` representation is only ever made of a tuple (or of a
    // subclass comparing as one, with the same layout).
    unsafe {
        if stored_obj == obj {
            return true;
        }
        let tuple = ffi::PyTuple_CheckExact(obj) != 0;
        match stored {
            Repr::Tuple(items) if tuple => {
                #[allow(clippy::cast_sign_loss)]
                let n = tuple_len(obj) as usize;
                n == items.len()
                    && items.iter().zip(0..).all(|(item, i)| {
                        eq_obj(item, tuple_item(stored_obj, i), tuple_item(obj, i))
                    })
            }
            // A tuple's representation is a tuple, and only a tuple's is.
            Repr::Tuple(_) => false,
            _ if tuple => false,
            // A scalar: no allocation but for an int beyond 64 bits.
            _ => Repr::of(obj).native_eq(stored),
        }
    }
}

/// A key's hash and representation; [`Repr::Python`] when it must be
/// interned. A number of another type that equals an `int` or a `float`
/// (`Decimal(1)`, `Fraction(1, 2)`, a NumPy scalar), also as an item of a
/// tuple, takes that number's representation, so that it is one key with it,
/// as in a `dict`.
#[inline]
pub(crate) fn describe(obj: &Bound<'_, PyAny>) -> PyResult<(isize, Repr)> {
    // SAFETY: `obj` is a live object and we are attached (`Bound`).
    let repr = unsafe { Repr::of(obj.as_ptr()) };
    if let Repr::Int(v) = repr {
        // Every `Int` comes from a type with the hash of `int`, `bool`,
        // `float` or `complex` (see `compares_as`), which all hash an
        // integral value as that int.
        return Ok((int_hash(v), repr));
    }
    describe_other(obj, repr)
}

/// The hash and representation of the two most common keys, an exact `int`
/// in the `i64` range and an exact ASCII `str`, read without the general
/// path's checks; `None` for every other key (and for an `int`'s hash that
/// `PyObject_Hash` would compute otherwise, never).
#[inline(always)]
pub(crate) fn common(obj: &Bound<'_, PyAny>) -> Option<(isize, Repr)> {
    // SAFETY: `obj` is a live object and we are attached (`Bound`); a str's
    // hash is computed in C (and cached on the object), and cannot fail.
    unsafe {
        let ptr = obj.as_ptr();
        if ffi::PyLong_CheckExact(ptr) != 0 {
            if let Some(v) = compact_int(ptr) {
                return Some((int_hash(v), Repr::Int(v)));
            }
            let mut overflow: c_int = 0;
            let v = ffi::PyLong_AsLongLongAndOverflow(ptr, &raw mut overflow);
            // -1 is also the error return, but an exact int cannot fail here.
            return (overflow == 0).then(|| (int_hash(v), Repr::Int(v)));
        }
        if ffi::PyUnicode_CheckExact(ptr) != 0 && compact_ascii(ptr) {
            let hash = str_hash(ptr);
            return (hash != -1).then(|| {
                let (data, len) = ascii_data(ptr);
                (hash, Repr::Str(data, len))
            });
        }
        None
    }
}

/// The read description ([`describe_read`]) of a key that [`plain`] accepts,
/// with the two most common shapes ([`common`]) read first; `None` for any
/// other key (which takes the general path, where an error is raised).
#[inline(always)]
#[cfg_attr(PyPy, allow(dead_code))] // for `py/fast.rs`
pub(crate) fn read_plain(obj: &Bound<'_, PyAny>) -> Option<(isize, Repr)> {
    if let Some(described) = common(obj) {
        return Some(described);
    }
    // The hash of a plain key runs no Python code and cannot fail.
    let ptr = obj.as_ptr();
    // SAFETY: `obj` is a live object and we are attached (`Bound`).
    unsafe {
        if TUPLE_HASH.load(std::sync::atomic::Ordering::Relaxed) {
            let hash = lazy_tuple_hash(ptr, 0);
            if hash != -1 {
                return Some((hash, Repr::Lazy(ptr)));
            }
        } else if lazy_tuple(ptr, 0) {
            return obj.hash().ok().map(|hash| (hash, Repr::Lazy(ptr)));
        }
        if plain_scalar(ptr) {
            describe(obj).ok()
        } else {
            uuid::read(obj)
        }
    }
}

/// The hash of a `str`: the one it keeps once computed (-1 until then), read
/// as CPython does (a relaxed atomic load: on the free-threaded build another
/// thread may be storing it), else `hash()`'s (-1 on an error, which a str's
/// hash cannot raise).
///
/// # Safety
/// `obj` must be a live exact `str` and the caller must be attached.
#[inline(always)]
unsafe fn str_hash(obj: *mut ffi::PyObject) -> isize {
    // PyPy keeps no hash in a `PyASCIIObject`: ask it.
    #[cfg(PyPy)]
    // SAFETY: as the caller guarantees.
    return unsafe { ffi::PyObject_Hash(obj) };
    // SAFETY: a `str` starts with `PyASCIIObject`, whose `hash` is a
    // `Py_hash_t` (an `isize`) that CPython reads and writes atomically.
    #[cfg(not(PyPy))]
    unsafe {
        let cached = std::sync::atomic::AtomicIsize::from_ptr(
            (&raw mut (*obj.cast::<ffi::PyASCIIObject>()).hash).cast::<isize>(),
        )
        .load(std::sync::atomic::Ordering::Relaxed);
        if cached == -1 {
            ffi::PyObject_Hash(obj)
        } else {
            cached
        }
    }
}

/// Whether [`lazy_tuple_hash`] gives `hash()`'s value on this interpreter: checked
/// once at import ([`check_tuple_hash`]) against sample tuples; if it did
/// not (an interpreter whose tuple hash changed), reads hash tuples with
/// `hash()` as every other key.
static TUPLE_HASH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// For a tuple that [`lazy_tuple`] accepts, its hash, computed here with the
/// items' hashes read as [`common`] reads them: CPython's tuple hash
/// (xxHash's round on each item's hash, since 3.8), in the same walk over
/// the items as `lazy_tuple`'s, without calls through each item's type. -1
/// (never a tuple's hash) for any other object.
///
/// # Safety
/// `obj` must be a live object and the caller must be attached.
unsafe fn lazy_tuple_hash(obj: *mut ffi::PyObject, depth: u32) -> isize {
    const PRIME_1: u64 = 11_400_714_785_074_694_791;
    const PRIME_2: u64 = 14_029_467_366_897_019_727;
    const PRIME_5: u64 = 2_870_177_450_012_600_261;
    // SAFETY: reads the types and items of live objects (a tuple's items are
    // owned by it), attached; the hashes of these types run no Python code.
    unsafe {
        if ffi::PyTuple_CheckExact(obj) == 0 || depth >= MAX_TUPLE_DEPTH {
            return -1;
        }
        let n = tuple_len(obj);
        let mut acc = PRIME_5;
        for i in 0..n {
            let item = tuple_item(obj, i);
            let tp = ffi::Py_TYPE(item);
            let lane = if tp == addr_of_mut!(ffi::PyUnicode_Type) {
                if !compact_ascii(item) {
                    return -1;
                }
                str_hash(item)
            } else if tp == addr_of_mut!(ffi::PyLong_Type) {
                match compact_int(item) {
                    Some(v) => int_hash(v),
                    None => ffi::PyObject_Hash(item),
                }
            } else if tp == addr_of_mut!(ffi::PyBool_Type) {
                isize::from(item == ffi::Py_True())
            } else if item == ffi::Py_None()
                || tp == addr_of_mut!(ffi::PyFloat_Type)
                || tp == addr_of_mut!(ffi::PyBytes_Type)
            {
                ffi::PyObject_Hash(item)
            } else {
                // A nested tuple (-1 if it is not one `lazy_tuple` accepts).
                lazy_tuple_hash(item, depth + 1)
            };
            if lane == -1 {
                // Not a plain item (a hash of these types cannot fail; if one
                // did, it leaves no exception behind).
                ffi::PyErr_Clear();
                return -1;
            }
            #[allow(clippy::cast_sign_loss)]
            let lane = lane as u64;
            acc = acc.wrapping_add(lane.wrapping_mul(PRIME_2));
            acc = acc.rotate_left(31);
            acc = acc.wrapping_mul(PRIME_1);
        }
        #[allow(clippy::cast_sign_loss)]
        let n = n as u64;
        acc = acc.wrapping_add(n ^ (PRIME_5 ^ 3_527_539));
        #[allow(clippy::cast_possible_wrap)]
        let hash = acc as isize;
        if hash == -1 {
            1_546_275_796
        } else {
            hash
        }
    }
}

/// Whether ints are laid out as [`compact_int`] and [`u128_of`] read them
/// (30-bit digits in 32-bit words, CPython's default where `Py_ssize_t` is
/// 64 bits): checked at import ([`check_layouts`]) on `sys.int_info` and on
/// sample values; if not, ints are read with `PyLong_AsLongLongAndOverflow`.
static INT_LAYOUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets [`INT_LAYOUT`] and [`TUPLE_HASH`] (at import), checking what this
/// module reads of CPython's objects against the interpreter's own answers.
pub(crate) fn check_layouts(py: Python<'_>) -> PyResult<()> {
    let info = py.import("sys")?.getattr("int_info")?;
    let (bits, size): (u32, u32) = (
        info.getattr("bits_per_digit")?.extract()?,
        info.getattr("sizeof_digit")?.extract()?,
    );
    INT_LAYOUT.store(
        bits == 30 && size == 4,
        std::sync::atomic::Ordering::Relaxed,
    );
    let mut ints_agree = true;
    for v in [
        0_i64,
        1,
        -1,
        7,
        -7,
        (1 << 30) - 1,
        -((1 << 30) - 1),
        1 << 30,
        -(1 << 30),
    ] {
        let int = v.into_pyobject(py)?;
        // SAFETY: a live int, attached.
        let read = unsafe { compact_int(int.as_ptr()) };
        ints_agree &= read.is_none_or(|r| r == v) && (v.abs() >= 1 << 30 || read.is_some());
    }
    #[cfg(not(Py_GIL_DISABLED))]
    for v in [
        0_u128,
        1,
        (1 << 30) + 5,
        u128::from(u64::MAX) * 3 + 1,
        u128::MAX,
    ] {
        let int = v.into_pyobject(py)?;
        // SAFETY: a live int, attached.
        ints_agree &= unsafe { u128_of(int.as_ptr()) } == Some(v);
    }
    if !ints_agree {
        INT_LAYOUT.store(false, std::sync::atomic::Ordering::Relaxed);
    }
    check_tuple_hash(py)
}

/// Sets [`TUPLE_HASH`]: whether [`lazy_tuple_hash`] equals `hash()` on every
/// sample (nested tuples, big ints and each item type included) and refuses
/// the tuples [`lazy_tuple`] refuses.
fn check_tuple_hash(py: Python<'_>) -> PyResult<()> {
    let samples = py.eval(
        c"[(), ('user', 7, True), (1, -1, 0, 2**40, -2**62, 2**100, 1.5, None, b'x', False), ('é',), \
           (('a', (1, (2.0,))), 'k' * 64, -(2**30), 2**30 - 1, 2**61 - 1, 2**61), (-1,), (-2,)]",
        None,
        None,
    )?;
    let mut same = true;
    for sample in samples.try_iter()? {
        let sample = sample?;
        // SAFETY: a live object, attached.
        let (ours, plain) = unsafe {
            (
                lazy_tuple_hash(sample.as_ptr(), 0),
                lazy_tuple(sample.as_ptr(), 0),
            )
        };
        same &= if plain {
            ours == sample.hash()?
        } else {
            ours == -1
        };
    }
    TUPLE_HASH.store(same, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// The value of an `int` of at most one digit (below 2**30 in magnitude, the
/// keys most programs use), read from the object as CPython's own inline
/// functions do (`PyUnstable_Long_CompactValue` from 3.12, `ob_size` and
/// the first digit before); `None` for a larger one. About 15 instructions
/// fewer than a call of `PyLong_AsLongLongAndOverflow`.
///
/// # Safety
/// `obj` must be a live `int` (or subclass) and the caller must be attached.
#[inline(always)]
unsafe fn compact_int(obj: *mut ffi::PyObject) -> Option<i64> {
    // PyPy's `int` has no CPython digits to read.
    if cfg!(PyPy) || !INT_LAYOUT.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    // The digits follow the object's header: `ob_size` (a `PyVarObject`)
    // before 3.12, `lv_tag` (a `uintptr_t`) from 3.12.
    // SAFETY: an int is at least its header and its size/tag word, and has
    // as many digits as that word says (from 3.12, zero has one, set to 0).
    unsafe {
        let head = obj.cast::<u8>().add(std::mem::size_of::<ffi::PyObject>());
        let word = head.cast::<isize>().read();
        let digit = || i64::from(head.add(std::mem::size_of::<isize>()).cast::<u32>().read());
        #[cfg(Py_3_12)]
        {
            // Bits 0-1: the sign (0 positive, 1 zero, 2 negative); from bit
            // 3, the number of digits. Compact: at most one digit.
            #[allow(clippy::cast_sign_loss)]
            let tag = word as usize;
            #[allow(clippy::cast_possible_wrap)]
            (tag < (2 << 3)).then(|| (1 - (tag & 3) as i64) * digit())
        }
        #[cfg(not(Py_3_12))]
        {
            // The number of digits, negative for a negative number.
            match word {
                0 => Some(0),
                1 => Some(digit()),
                -1 => Some(-digit()),
                _ => None,
            }
        }
    }
}

/// The value of a non-negative `int` below 2**128, read from its digits (30
/// bits each, least significant first) as [`compact_int`] reads one; `None`
/// for any other.
///
/// # Safety
/// `obj` must be a live `int` and the caller must be attached.
#[cfg(not(Py_GIL_DISABLED))]
unsafe fn u128_of(obj: *mut ffi::PyObject) -> Option<u128> {
    if cfg!(PyPy) || !INT_LAYOUT.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    // SAFETY: as in `compact_int`: an int has as many digits as its size or
    // tag word says.
    unsafe {
        let head = obj.cast::<u8>().add(std::mem::size_of::<ffi::PyObject>());
        let word = head.cast::<isize>().read();
        #[cfg(Py_3_12)]
        #[allow(clippy::cast_sign_loss)]
        let digits = {
            let tag = word as usize;
            if tag & 3 == 2 {
                return None; // negative
            }
            tag >> 3
        };
        #[cfg(not(Py_3_12))]
        let digits = usize::try_from(word).ok()?;
        if digits > 5 {
            return None;
        }
        let first = head.add(std::mem::size_of::<isize>()).cast::<u32>();
        let mut value: u128 = 0;
        for i in (0..digits).rev() {
            let digit = u128::from(first.add(i).read());
            if value >> (128 - 30) != 0 {
                return None;
            }
            value = (value << 30) | digit;
        }
        Some(value)
    }
}

/// [`describe`] for a read (a lookup made attached, whose key is only
/// compared, never stored): a tuple of native items is [`Repr::Lazy`].
#[inline]
pub(crate) fn describe_read(obj: &Bound<'_, PyAny>) -> PyResult<(isize, Repr)> {
    // SAFETY: `obj` is a live object and we are attached (`Bound`).
    if unsafe { lazy_tuple(obj.as_ptr(), 0) } {
        return Ok((obj.hash()?, Repr::Lazy(obj.as_ptr())));
    }
    describe(obj)
}

/// [`describe`] of every key but an integral number in the `i64` range.
fn describe_other(obj: &Bound<'_, PyAny>, repr: Repr) -> PyResult<(isize, Repr)> {
    if !matches!(repr, Repr::Python) {
        return Ok((obj.hash()?, repr));
    }
    if let Some(described) = uuid::describe(obj)? {
        return Ok(described);
    }
    let hash = obj.hash()?;
    Ok((hash, with_numbers(obj, 0)?.unwrap_or(Repr::Python)))
}

/// The representation of `obj` with every number of another type that equals
/// an `int` or a `float` taken as that number, at the top or inside tuples;
/// `None` if some part still needs Python's `==`.
fn with_numbers(obj: &Bound<'_, PyAny>, depth: u32) -> PyResult<Option<Repr>> {
    // SAFETY: `obj` is a live object and we are attached (`Bound`).
    let repr = unsafe { Repr::of(obj.as_ptr()) };
    if !matches!(repr, Repr::Python) {
        return Ok(Some(repr));
    }
    // SAFETY: reads the type of a live object and a slot of that type.
    let tuple = unsafe {
        ffi::PyTuple_Check(obj.as_ptr()) != 0
            && compares_as(ffi::Py_TYPE(obj.as_ptr()), addr_of_mut!(ffi::PyTuple_Type))
    };
    if tuple {
        if depth >= MAX_TUPLE_DEPTH {
            return Ok(None);
        }
        let mut items = Vec::new();
        for item in obj.try_iter()? {
            match with_numbers(&item?, depth + 1)? {
                Some(repr) => items.push(repr),
                None => return Ok(None),
            }
        }
        return Ok(Some(Repr::Tuple(items.into_boxed_slice())));
    }
    as_native_number(obj)
}

/// Keeps an `Exception` raised by user code as "no answer", and lets other
/// exceptions (`KeyboardInterrupt`, `SystemExit`, `MemoryError`...) through.
fn or_none<T>(result: PyResult<T>, py: Python<'_>) -> PyResult<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(err) if err.is_instance_of::<pyo3::exceptions::PyException>(py) => Ok(None),
        Err(err) => Err(err),
    }
}

/// The native representation of an `int` or `float` that `obj` (a numeric
/// type compared by Python) equals, if any. Runs Python code (attached,
/// outside every lock); an `Exception` from it only means "no".
fn as_native_number(obj: &Bound<'_, PyAny>) -> PyResult<Option<Repr>> {
    let py = obj.py();
    // SAFETY: reads the number slots of a live object's type.
    #[cfg(not(PyPy))]
    let (index, float) = unsafe {
        let numbers = (*ffi::Py_TYPE(obj.as_ptr())).tp_as_number;
        if numbers.is_null() {
            return Ok(None);
        }
        ((*numbers).nb_index.is_some(), (*numbers).nb_float.is_some())
    };
    // PyPy: its type objects' slots are not the class's methods (see
    // `same_method`); the methods are looked up instead.
    #[cfg(PyPy)]
    let (index, float) = {
        let tp = obj.get_type();
        (
            tp.hasattr(pyo3::intern!(py, "__index__"))?,
            tp.hasattr(pyo3::intern!(py, "__float__"))?,
        )
    };
    let equal_int = |int: Bound<'_, PyAny>| -> PyResult<Option<Repr>> {
        // SAFETY: `int` is a live exact int and we are attached.
        let repr = unsafe { int_repr(int.as_ptr()) };
        if matches!(repr, Repr::Python) {
            return Ok(None);
        }
        Ok(or_none(obj.eq(&int), py)?.filter(|&eq| eq).map(|_| repr))
    };
    let as_int = || -> PyResult<Option<Repr>> {
        match or_none(py.get_type::<pyo3::types::PyInt>().call1((obj,)), py)? {
            Some(int) => equal_int(int),
            None => Ok(None),
        }
    };
    if index {
        return match or_none(obj.call_method0(pyo3::intern!(py, "__index__")), py)? {
            Some(int) => equal_int(int),
            None => Ok(None),
        };
    }
    if !float {
        return Ok(None);
    }
    // A value too large for a float (`Fraction(10**400)`) may still be an int.
    let Some(value) = or_none(obj.extract::<f64>(), py)? else {
        return as_int();
    };
    if value.is_nan() {
        return Ok(None);
    }
    if value.is_finite() && value.fract() != 0.0 {
        let equal = or_none(obj.eq(value), py)?.unwrap_or(false);
        return Ok(equal.then_some(Repr::Float(value)));
    }
    if value.is_infinite() && or_none(obj.eq(value), py)?.unwrap_or(false) {
        return Ok(Some(Repr::Float(value)));
    }
    // Integral, or rounded to an infinity from a finite value (`Decimal("1e400")`).
    as_int()
}

/// A key stored in the cache: owns a reference to the Python object (released
/// outside moka, see `deferred.rs`).
pub(crate) struct Key {
    hash: isize,
    repr: Repr,
    obj: PyOwned,
}

// SAFETY: the raw pointers inside `repr` point into buffers of immutable
// objects (`str`, `bytes`, tuple items) that `obj` keeps alive, or are
// identities that are only compared; reading them from any thread is sound.
unsafe impl Send for Key {}
// SAFETY: see above; nothing in a `Key` is mutated after construction.
unsafe impl Sync for Key {}

impl Key {
    /// `repr` must be resolved (not [`Repr::Python`]) and describe `obj`.
    pub(crate) fn new(hash: isize, repr: Repr, obj: &Bound<'_, PyAny>) -> Self {
        debug_assert!(!matches!(
            repr,
            Repr::Python | Repr::CanonId(_) | Repr::Lazy(_)
        ));
        Key {
            hash,
            repr,
            obj: PyOwned::new(obj.clone().unbind()),
        }
    }

    pub(crate) fn obj(&self) -> &Py<PyAny> {
        &self.obj
    }

    /// The Python hash of the key object, computed when the key was made.
    pub(crate) fn hash(&self) -> isize {
        self.hash
    }

    /// Another owned key for the same object.
    pub(crate) fn clone_ref(&self, py: Python<'_>) -> Key {
        Key {
            hash: self.hash,
            repr: self.repr.clone(),
            obj: PyOwned::new(self.obj.clone_ref(py)),
        }
    }

    fn parts(&self) -> (isize, &Repr) {
        (self.hash, &self.repr)
    }
}

#[inline]
fn keys_eq((ha, ra): (isize, &Repr), (hb, rb): (isize, &Repr)) -> bool {
    ha == hb && ra.native_eq(rb)
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
    /// Dropped by hand: most lookups are of a scalar, which owns nothing,
    /// and the generic drop of a `Repr` is an out-of-line call.
    repr: std::mem::ManuallyDrop<Repr>,
}

impl Drop for KeyRef {
    #[inline]
    fn drop(&mut self) {
        // Only these own heap data (a `KeyRef` never holds a `Canon`).
        if matches!(*self.repr, Repr::Tuple(_) | Repr::BigInt(_)) {
            // SAFETY: the field is dropped once, here, and not used after.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.repr) }
        }
    }
}

// SAFETY: a `KeyRef` only lives inside one call, during which the calling
// frame keeps its object alive; the pointed-to data is immutable (see `Key`).
unsafe impl Send for KeyRef {}
// SAFETY: as above.
unsafe impl Sync for KeyRef {}

impl KeyRef {
    /// `repr` must be resolved: native, or [`Repr::CanonId`].
    pub(crate) fn new(hash: isize, repr: Repr) -> Self {
        debug_assert!(!matches!(repr, Repr::Python | Repr::Canon(_)));
        KeyRef {
            hash,
            repr: std::mem::ManuallyDrop::new(repr),
        }
    }

    /// The owned key of the same object, reusing the hash and representation
    /// (whose pointers stay valid: the owned key keeps the object alive);
    /// `None` for a canonical key, whose owned form must be interned.
    pub(crate) fn to_owned(&self, obj: &Bound<'_, PyAny>) -> Option<Key> {
        match *self.repr {
            Repr::CanonId(_) => None,
            // SAFETY: the lazy tuple is `obj`, live, and we are attached.
            Repr::Lazy(_) => Some(Key::new(self.hash, unsafe { Repr::of(obj.as_ptr()) }, obj)),
            ref repr => Some(Key::new(self.hash, repr.clone(), obj)),
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
        if let Repr::Lazy(obj) = *self.repr {
            // SAFETY: a lazy key is made by `describe_read` for a read, which
            // runs attached while its caller holds the tuple.
            return self.hash == key.hash && unsafe { eq_obj(&key.repr, key.obj.as_ptr(), obj) };
        }
        keys_eq((self.hash, &self.repr), key.parts())
    }
}

/// `uuid.UUID` keys, compared and hashed in Rust: a `UUID` equals exactly the
/// `UUID`s of the same 128-bit value, and its hash is that of the value as an
/// `int` (`value mod 2**61 - 1` on 64-bit builds), as its `__eq__` and
/// `__hash__` say. Subclasses (which may override either) are compared by
/// Python.
mod uuid {
    use std::sync::atomic::{AtomicPtr, Ordering};

    use pyo3::prelude::*;
    use pyo3::{ffi, intern};

    use super::Repr;

    /// `uuid.UUID`, once the `uuid` module has been imported (a strong
    /// reference, kept for the life of the process). Null until then.
    static UUID_TYPE: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

    /// The modulus of CPython's numeric hash on 64-bit builds.
    const MODULUS: u128 = (1 << 61) - 1;

    fn is_uuid(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
        let tp = obj.get_type_ptr().cast::<ffi::PyObject>();
        let known = UUID_TYPE.load(Ordering::Acquire);
        if known.is_null() {
            return Ok(look_up(obj) && tp == UUID_TYPE.load(Ordering::Acquire));
        }
        if tp == known {
            return Ok(true);
        }
        // SAFETY: `known` is a live type object (a strong reference kept for
        // the life of the process), and we are attached.
        let uuid = unsafe { Bound::from_borrowed_ptr(obj.py(), known) };
        if !obj.is_instance(&uuid)? {
            return Ok(false);
        }
        // A subclass: the same key as a `UUID` if it keeps its `==` and hash.
        let py = obj.py();
        let tp = obj.get_type();
        for name in [intern!(py, "__eq__"), intern!(py, "__hash__")] {
            if !tp.getattr(name)?.is(&uuid.getattr(name)?) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Looks `uuid.UUID` up once `uuid` is imported; whether it is known.
    fn look_up(obj: &Bound<'_, PyAny>) -> bool {
        // Not looked up yet: a `UUID` exists only once `uuid` is imported.
        let py = obj.py();
        let Ok(modules) = py
            .import(intern!(py, "sys"))
            .and_then(|s| s.getattr("modules"))
        else {
            return false;
        };
        let Ok(Some(module)) = modules
            .get_item("uuid")
            .map(Some)
            .or_else(|_| Ok::<_, PyErr>(None))
        else {
            return false;
        };
        let Ok(class) = module.getattr(intern!(py, "UUID")) else {
            return false;
        };
        #[cfg(not(any(Py_GIL_DISABLED, PyPy)))]
        find_int_slot(&class);
        let ptr = class.clone().unbind().into_ptr();
        if UUID_TYPE
            .compare_exchange(
                std::ptr::null_mut(),
                ptr,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            // Another thread stored it first; give our reference back.
            // SAFETY: `ptr` is the strong reference taken just above.
            unsafe { ffi::Py_DecRef(ptr) };
        }
        true
    }

    /// Where an instance of `uuid.UUID` keeps its `int` (the offset of that
    /// slot, a `__slots__` member), 0 if `UUID` does not keep it so. Read
    /// only on the GIL build, where a borrowed slot cannot be replaced while
    /// it is read (on the free-threaded build, `getattr` takes a reference).
    #[cfg(not(any(Py_GIL_DISABLED, PyPy)))]
    static INT_SLOT: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

    /// Sets [`INT_SLOT`] from `UUID.__dict__["int"]` when it is a member
    /// descriptor of an object slot.
    #[cfg(not(any(Py_GIL_DISABLED, PyPy)))]
    fn find_int_slot(class: &Bound<'_, PyAny>) {
        let Ok(descr) = class
            .getattr(intern!(class.py(), "__dict__"))
            .and_then(|d| d.get_item("int"))
        else {
            return;
        };
        // SAFETY: `descr` is live; a member descriptor's `d_member` points
        // to its static definition (pyo3-ffi types it as a getset before
        // 3.11; it is a `PyMemberDef` in every version).
        unsafe {
            if ffi::Py_TYPE(descr.as_ptr()) != std::ptr::addr_of_mut!(ffi::PyMemberDescr_Type) {
                return;
            }
            let member = (*descr.as_ptr().cast::<ffi::PyMemberDescrObject>())
                .d_member
                .cast::<ffi::PyMemberDef>();
            if (*member).type_code == ffi::Py_T_OBJECT_EX && (*member).offset > 0 {
                INT_SLOT.store((*member).offset, Ordering::Release);
            }
        }
    }

    /// The hash and representation of an exact `uuid.UUID` whose `int` is
    /// read from its slot, with no attribute look-up and no call: `None` for
    /// anything else (which [`describe`] handles).
    #[inline]
    pub(super) fn read(obj: &Bound<'_, PyAny>) -> Option<(isize, Repr)> {
        #[cfg(not(any(Py_GIL_DISABLED, PyPy)))]
        {
            let tp = obj.get_type_ptr().cast::<ffi::PyObject>();
            if tp != UUID_TYPE.load(Ordering::Relaxed) {
                return None;
            }
            let offset = INT_SLOT.load(Ordering::Relaxed);
            if offset == 0 {
                return None;
            }
            // SAFETY: `obj` is a live `UUID`, whose slot at `offset` holds a
            // borrowed object or null; attached, on the GIL build.
            let value = unsafe {
                let int = obj
                    .as_ptr()
                    .cast::<u8>()
                    .offset(offset)
                    .cast::<*mut ffi::PyObject>()
                    .read();
                if int.is_null() || ffi::PyLong_CheckExact(int) == 0 {
                    return None;
                }
                super::u128_of(int)?
            };
            Some(of_value(value))
        }
        #[cfg(any(Py_GIL_DISABLED, PyPy))]
        {
            let _ = obj;
            None
        }
    }

    /// A UUID's hash (`hash(u.int)`) and representation.
    fn of_value(value: u128) -> (isize, Repr) {
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        let hash = (value % MODULUS) as isize;
        #[allow(clippy::cast_possible_truncation)]
        (hash, Repr::Uuid((value >> 64) as u64, value as u64))
    }

    /// The hash and representation of a `uuid.UUID` (or of a subclass that
    /// keeps its `==` and `hash()`).
    pub(super) fn describe(obj: &Bound<'_, PyAny>) -> PyResult<Option<(isize, Repr)>> {
        if !is_uuid(obj)? {
            return Ok(None);
        }
        if let Some(described) = read(obj) {
            return Ok(Some(described));
        }
        let Ok(value) = obj.getattr(intern!(obj.py(), "int"))?.extract::<u128>() else {
            return Ok(None);
        };
        Ok(Some(of_value(value)))
    }
}
