#!/usr/bin/env bash
# Build (once) and print the path of a CPython 3.13 built from source:
#   bash ci/python-ft.sh        free-threaded 3.13t (--disable-gil)
#   bash ci/python-ft.sh gil    the ordinary 3.13, with the GIL
#
# No binary of either is published in the registries this project can reach, so both are
# built from Debian trixie's python3.13 source package, each into its own prefix:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/moka-py/cpython-3.13t   (ft)
#   ${XDG_CACHE_HOME:-$HOME/.cache}/moka-py/cpython-3.13    (gil)
# and reused when present. Prints the interpreter's path on stdout; progress goes to
# stderr. Takes about 7 minutes on 2 cores the first time.
source "$(dirname "$0")/env.sh"

case "${1:-ft}" in
    ft) suffix=t; configure_flags=(--disable-gil); want_gil=False ;;
    gil) suffix=; configure_flags=(); want_gil=True ;;
    *) echo "usage: $0 [ft|gil]" >&2; exit 2 ;;
esac
prefix="${XDG_CACHE_HOME:-$HOME/.cache}/moka-py/cpython-3.13$suffix"
python="$prefix/bin/python3.13$suffix"
check="import sys, ssl; assert sys._is_gil_enabled() is $want_gil"

if [ -x "$python" ] && "$python" -c "$check" 2>/dev/null; then
    echo "$python"
    exit 0
fi

# Build dependencies (ssl is needed for pip, the rest for a complete stdlib).
apt_install build-essential pkg-config libssl-dev libffi-dev zlib1g-dev libbz2-dev liblzma-dev \
    libsqlite3-dev libreadline-dev uuid-dev xz-utils dpkg-dev

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
log "downloading the python3.13 source package (trixie)"
orig=$(trixie_source python3.13)
tar xf "$orig"
src=$(find . -maxdepth 1 -type d -name 'Python-3.13*' | head -n1)
cd "$src"
log "configuring $(basename "$src") ${configure_flags[*]} into $prefix"
./configure "${configure_flags[@]}" --prefix="$prefix" --with-ensurepip=install \
    >"$work/configure.log" 2>&1 || { tail -n 50 "$work/configure.log" >&2; exit 1; }
log "building (make -j$(nproc))"
make -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -n 50 "$work/make.log" >&2; exit 1; }
make install >"$work/install.log" 2>&1 || { tail -n 50 "$work/install.log" >&2; exit 1; }
"$python" -c "$check; print(sys.version)" >&2
echo "$python"
