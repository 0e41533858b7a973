#!/usr/bin/env bash
# Fetch (once) and print the path of PyPy 3.11: Debian sid's pypy3 binary packages, unpacked
# with the C library and the other libraries they need from sid into a private root, the
# loader and library path set with patchelf, as ci/python-314.sh does for CPython 3.14:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/moka-py/pypy-3.11/root/usr/bin/pypy3.11
# and reused when present. bookworm's pypy3 is PyPy 3.9, below what PyO3 supports (3.11);
# trixie's and sid's are PyPy 3.11, and need glibc 2.38 or newer, hence the private root.
# Everything comes through the private APT configuration of ci/debs.sh: nothing is
# installed, /etc/apt is untouched. The version is the one sid's index names when the cache
# is made (the cache keeps the one it has). Some 30 seconds the first time.
# Prints the interpreter's path on stdout; progress goes to stderr. Exits 3 when PyPy 3.11
# cannot be had here (no apt-get, no sid index, no pypy3 of 3.11 in it), 1 on another
# failure.
source "$(dirname "$0")/env.sh"
source "$ROOT/ci/debs.sh"

prefix="$CACHE/pypy-3.11"
python="$prefix/root/usr/bin/pypy3.11"
# What the suite and uv need of the stdlib: the modules with C libraries of their own, and
# CPython's own tests of functools (tests/test_functools_lru.py runs them on moka_py).
check='import sys, platform, ssl, sqlite3, ctypes, decimal, zlib, lzma, bz2, uuid, venv, importlib.util
assert platform.python_implementation() == "PyPy" and sys.version_info[:2] == (3, 11)
from test import test_functools'

if [ -x "$python" ] && "$python" -c "$check" 2>/dev/null; then
    echo "$python"
    exit 0
fi

debs_update || exit 3
version=$(debs_version pypy3 sid)
if [ -z "$version" ]; then
    echo "Debian sid's index has no pypy3" >&2
    exit 3
fi
log "PyPy 3.11: Debian sid's pypy3 $version into $prefix"
pypys=()
for p in pypy3 pypy3-lib pypy3-venv pypy3-lib-testsuite; do
    pypys+=("$p=$version")
done
rc=0
debs_sid_root "$prefix" "$python" "libgcc-s1 libstdc++6 libssl3t64 libexpat1 zlib1g libffi8 \
    libbz2-1.0 liblzma5 libzstd1 libsqlite3-0 libncursesw6 libtinfo6 libgdbm6t64 libuuid1 \
    libcrypt1 libmpdec4" "${pypys[@]}" || rc=$?
[ "$rc" -eq 0 ] || exit "$rc"
# Debian's pypy3 keeps PyPy's `_testcapi.py`, which compiles `_testcapimodule.c` at its first
# import, but ships no such file: the import fails with FileNotFoundError, and with it
# `test.support` (which expects an ImportError where there is no _testcapi) and CPython's
# tests of functools. Without the source, no _testcapi: say so as an ImportError.
stdlib="$prefix/root/usr/lib/pypy3.11"
if [ ! -f "$stdlib/_testcapimodule.c" ]; then
    echo 'raise ImportError("_testcapi: Debian'"'"'s pypy3 ships no _testcapimodule.c to build it from")' \
        >"$stdlib/_testcapi.py"
fi
"$python" -c "$check; print(sys.version)" >&2 || { rm -rf "$prefix"; exit 1; }
echo "$python"
