#!/usr/bin/env bash
# Build (once) and print the path of a free-threaded CPython 3.13 ("3.13t").
#
# No binary of 3.13t is published in the registries this project can reach, so it
# is built from Debian trixie's source package. The result is cached at
#   ${XDG_CACHE_HOME:-$HOME/.cache}/moka-py/cpython-3.13t
# and reused when present. Prints the interpreter's path on stdout; progress goes
# to stderr. Takes about 7 minutes on 2 cores the first time.
set -euo pipefail

prefix="${XDG_CACHE_HOME:-$HOME/.cache}/moka-py/cpython-3.13t"
python="$prefix/bin/python3.13t"

log() { echo "[python-ft] $*" >&2; }

if [ -x "$python" ] && "$python" -c 'import sys, ssl; assert not sys._is_gil_enabled()' 2>/dev/null; then
    echo "$python"
    exit 0
fi

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Build dependencies (ssl is needed for pip, the rest for a complete stdlib).
deps=(build-essential pkg-config libssl-dev libffi-dev zlib1g-dev libbz2-dev liblzma-dev
      libsqlite3-dev libreadline-dev uuid-dev xz-utils dpkg-dev)
missing=()
for p in "${deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# A deb-src entry for trixie on the machine's own Debian mirror.
srclist=/etc/apt/sources.list.d/moka-py-trixie-src.sources
if [ ! -f "$srclist" ]; then
    mirror=$( { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
                grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}'; } \
        | grep -E '/debian/?$' | head -n1 || true)
    mirror="${mirror:-http://deb.debian.org/debian}"
    log "adding deb-src trixie from $mirror"
    sudo_ tee "$srclist" >/dev/null <<SRC
Types: deb-src
URIs: $mirror
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

log "apt-get update"
sudo_ apt-get update -qq >&2
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
log "downloading the python3.13 source package"
apt-get source --download-only python3.13 >&2
orig=$(ls python3.13_*.orig.tar.* | head -n1)
tar xf "$orig"
src=$(find . -maxdepth 1 -type d -name 'Python-3.13*' | head -n1)
cd "$src"
log "configuring $(basename "$src") with --disable-gil"
./configure --disable-gil --prefix="$prefix" --with-ensurepip=install >"$work/configure.log" 2>&1 \
    || { tail -n 50 "$work/configure.log" >&2; exit 1; }
log "building (make -j$(nproc))"
make -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -n 50 "$work/make.log" >&2; exit 1; }
make install >"$work/install.log" 2>&1 || { tail -n 50 "$work/install.log" >&2; exit 1; }
"$python" -c 'import sys, ssl; assert not sys._is_gil_enabled(); print(sys.version)' >&2
echo "$python"
