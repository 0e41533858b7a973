#!/usr/bin/env bash
# Fetch (once) and print the path of CPython 3.14 (with the GIL): Debian sid's python3.14
# binary packages, unpacked with the C library and the other libraries it needs from sid
# into a private root, its loader and library path set with patchelf:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/moka-py/cpython-3.14/root/usr/bin/python3.14
# and reused when present. Neither bookworm nor trixie has a 3.14, and the mirror holds no
# source package of sid's (ci/python-ft.sh builds 3.13 from source); sid's binaries need
# glibc 2.38 or newer, hence the private root. Everything comes through the private APT
# configuration of ci/debs.sh: nothing is installed, /etc/apt is untouched. The version is
# the one sid's index names when the cache is made (sid replaces it now and then; the cache
# keeps the one it has). About a minute the first time.
# Prints the interpreter's path on stdout; progress goes to stderr. Exits 3 when CPython
# 3.14 cannot be had here (no apt-get, no sid index, no python3.14 in it), 1 on another
# failure.
source "$(dirname "$0")/env.sh"
source "$ROOT/ci/debs.sh"

prefix="$CACHE/cpython-3.14"
python="$prefix/root/usr/bin/python3.14"
# What the suite and uv need of the stdlib: the modules with C libraries of their own, and
# CPython's own tests of functools (tests/test_functools_lru.py runs them on moka_py).
check='import sys, ssl, sqlite3, ctypes, decimal, zlib, lzma, bz2, uuid, venv, importlib.util
assert sys.version_info[:2] == (3, 14) and sys._is_gil_enabled()
assert importlib.util.find_spec("test.test_functools")'

if [ -x "$python" ] && "$python" -c "$check" 2>/dev/null; then
    echo "$python"
    exit 0
fi

debs_update || exit 3
version=$(debs_version python3.14 sid)
if [ -z "$version" ]; then
    echo "Debian sid's index has no python3.14" >&2
    exit 3
fi
log "CPython 3.14: Debian sid's python3.14 $version into $prefix"
# The interpreter, its stdlib and CPython's test package, all of one version; then the
# libraries that they and the stdlib's extension modules link, at the versions sid's index
# names now.
pythons=()
for p in python3.14 python3.14-minimal python3.14-venv libpython3.14 libpython3.14-minimal \
    libpython3.14-stdlib libpython3.14-testsuite; do
    pythons+=("$p=$version")
done
rc=0
debs_sid_root "$prefix" "$python" "libgcc-s1 libstdc++6 libssl3t64 libexpat1 zlib1g libffi8 \
    libbz2-1.0 liblzma5 libzstd1 libsqlite3-0 libncursesw6 libtinfo6 libreadline8t64 \
    libgdbm6t64 libdb5.3t64 libuuid1 libcrypt1 libmpdec4" "${pythons[@]}" || rc=$?
[ "$rc" -eq 0 ] || exit "$rc"
"$python" -c "$check; print(sys.version)" >&2 || { rm -rf "$prefix"; exit 1; }
echo "$python"
