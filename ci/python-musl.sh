#!/usr/bin/env bash
# Build (once) and print the path of a CPython 3.13 linked against musl, the C library of
# Alpine Linux, to test the musllinux wheels on (ci/wheels-musl.sh). Built from Debian trixie's
# source packages (python3.13, the one ci/python-ft.sh builds; openssl, zlib and libffi, linked
# in statically) with Debian's musl-gcc (musl-tools), into
#   ${XDG_CACHE_HOME:-$HOME/.cache}/moka-py/cpython-3.13-musl
# and reused when present. It runs on this glibc machine through musl's own loader
# (/lib/ld-musl-x86_64.so.1, from Debian's musl package). Has ssl (redis-py needs it), zlib
# (pip, uv's venvs) and ctypes (OpenTelemetry's SDK); not sqlite3, bz2, lzma or readline,
# which the suite does not use. About 6 minutes on 2 cores the first time.
# Prints the interpreter's path on stdout; progress goes to stderr.
source "$(dirname "$0")/env.sh"

prefix="${XDG_CACHE_HOME:-$HOME/.cache}/moka-py/cpython-3.13-musl"
python="$prefix/bin/python3.13"
check='import sys, sysconfig, ssl, zlib, ctypes, venv
assert sys.version_info[:2] == (3, 13) and sys._is_gil_enabled()
assert sysconfig.get_config_var("HOST_GNU_TYPE").endswith("-linux-musl")'

if [ -x "$python" ] && "$python" -c "$check" 2>/dev/null; then
    echo "$python"
    exit 0
fi

# autoconf, automake, libtool: libffi's source package has no configure script.
apt_install musl-tools xz-utils dpkg-dev autoconf automake libtool
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
log "downloading the python3.13, openssl, zlib and libffi source packages (trixie)"
for pkg in python3.13 openssl zlib libffi; do
    tar xf "$(trixie_source "$pkg")"
done
deps="$prefix/deps"
rm -rf "$prefix"
# musl-gcc keeps the host's /usr/include out (glibc's headers); the Linux kernel's are
# needed by OpenSSL and CPython alike, and carry no C library of their own.
mkdir -p "$work/kernel-headers"
ln -s /usr/include/linux /usr/include/asm-generic "$work/kernel-headers/"
ln -s "/usr/include/$(gcc -print-multiarch)/asm" "$work/kernel-headers/asm"
# musl-gcc wraps Debian's gcc, whose --print-multiarch says x86_64-linux-gnu; CPython's
# configure compares that with the compiler's triplet (x86_64-linux-musl) and stops.
cat >"$work/musl-cc" <<EOF
#!/bin/sh
[ "\$1" = --print-multiarch ] && { echo x86_64-linux-musl; exit 0; }
exec musl-gcc -idirafter "$work/kernel-headers" "\$@"
EOF
chmod +x "$work/musl-cc"
export CC="$work/musl-cc"

run_logged() {
    local name="$1"
    shift
    "$@" >"$work/$name.log" 2>&1 || { tail -n 50 "$work/$name.log" >&2; exit 1; }
}
log "building zlib, OpenSSL and libffi (static, position-independent) into $deps"
(cd zlib-* && CFLAGS="-O2 -fPIC" run_logged zlib-configure ./configure --static --prefix="$deps" \
    && run_logged zlib-make make -j"$(nproc)" libz.a && run_logged zlib-install make install)
(cd openssl-* && run_logged openssl-configure ./Configure linux-x86_64 no-shared no-tests no-docs \
    no-apps no-engine no-module no-afalgeng -fPIC --prefix="$deps" --libdir=lib \
    && run_logged openssl-make make -j"$(nproc)" build_libs \
    && run_logged openssl-install make install_dev)
(cd libffi-* && run_logged libffi-autoreconf autoreconf -fi && run_logged libffi-configure ./configure --disable-shared --enable-static --with-pic \
    --disable-docs --prefix="$deps" --libdir="$deps/lib" \
    && run_logged libffi-make make -j"$(nproc)" && run_logged libffi-install make install)

src=$(find . -maxdepth 1 -type d -name 'Python-3.13*' | head -n1)
log "configuring $(basename "$src") for musl into $prefix"
# PKG_CONFIG=false: pkg-config would offer the host's glibc builds of zlib, libffi and others.
cd "$src"
run_logged configure ./configure PKG_CONFIG=false CPPFLAGS="-I$deps/include" LDFLAGS="-L$deps/lib" \
    --with-openssl="$deps" --prefix="$prefix" --without-ensurepip
log "building (make -j$(nproc))"
run_logged make make -j"$(nproc)"
run_logged install make install
"$python" -c "$check; print(sys.version, sysconfig.get_config_var('HOST_GNU_TYPE'), ssl.OPENSSL_VERSION)" >&2
echo "$python"
