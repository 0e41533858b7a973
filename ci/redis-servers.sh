#!/usr/bin/env bash
# Prints the directory of the redis-server (and redis-cli) of one of the servers the tests
# of moka_py.redis run on, installing or building it once:
#   bash ci/redis-servers.sh redis7    Debian bookworm's redis-server 7.0 (apt)
#   bash ci/redis-servers.sh redis8    Redis 8.0, built from Debian trixie's source package
#   bash ci/redis-servers.sh valkey8   Valkey 8.1, built from Debian trixie's source package
# The builds (TLS included, about 3 minutes each on 2 cores) go to
#   ${XDG_CACHE_HOME:-$HOME/.cache}/moka-py/<name>-<version>/bin
# beside the CPython builds of ci/python-ft.sh, and are reused when present. Valkey's binaries
# are valkey-server and valkey-cli; links named redis-server and redis-cli sit beside them, so
# the tests start any of the three the same way (MOKA_PY_REDIS_SERVER, tests/redis_servers.py).
# Progress goes to stderr; the directory is the only line on stdout.
source "$(dirname "$0")/env.sh"

name="${1:-redis7}"
case "$name" in
    redis7)
        need_redis
        dirname "$(command -v redis-server)"
        exit 0
        ;;
    redis8) src=redis; want_major=8 ;;
    valkey8) src=valkey; want_major=8 ;;
    *) echo "usage: $0 redis7|redis8|valkey8" >&2; exit 2 ;;
esac

cache="${XDG_CACHE_HOME:-$HOME/.cache}/moka-py"
# A build already in the cache (any version of this major) is used as it is.
for bin in "$cache/$src-$want_major".*/bin; do
    if [ -x "$bin/redis-server" ] && "$bin/redis-server" --version >/dev/null 2>&1; then
        echo "$bin"
        exit 0
    fi
done

apt_install build-essential pkg-config libssl-dev dpkg-dev
need_trixie_src
trixie_version() {
    apt-cache showsrc "$src" 2>/dev/null | awk '/^Version:/ {print $2}' \
        | grep -E "^([0-9]+:)?$want_major\." | sort -V | tail -n1 || true
}
version=$(trixie_version)
if [ -z "$version" ]; then
    as_root apt-get update -qq >&2
    version=$(trixie_version)
fi
upstream=${version#*:}
upstream=${upstream%%-*}
upstream=${upstream%%+*}
case "$upstream" in
    "$want_major".*) ;;
    *) echo "trixie's $src source is $version, not $want_major.x" >&2; exit 1 ;;
esac
prefix="$cache/$src-$upstream"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "building $src $upstream from trixie's source package into $prefix"
(
    cd "$work"
    # apt runs as _apt where it can; a root-owned temporary directory makes it warn only.
    apt-get source --download-only --tar-only "$src/trixie" >&2
    tarball=$(ls ./*.orig.tar.* | head -n1)
    tar -xf "$tarball"
    dir=$(find . -maxdepth 1 -mindepth 1 -type d | head -n1)
    cd "$dir"
    make -j"$(nproc)" BUILD_TLS=yes USE_SYSTEMD=no MALLOC=libc >"$work/build.log" 2>&1 \
        || { tail -n 50 "$work/build.log" >&2; exit 1; }
    mkdir -p "$prefix/bin.tmp"
    for b in src/*-server src/*-cli; do
        [ -x "$b" ] && cp "$b" "$prefix/bin.tmp/"
    done
)
if [ "$src" = valkey ]; then
    ln -sf valkey-server "$prefix/bin.tmp/redis-server"
    ln -sf valkey-cli "$prefix/bin.tmp/redis-cli"
fi
"$prefix/bin.tmp/redis-server" --version >&2
rm -rf "$prefix/bin"
mv "$prefix/bin.tmp" "$prefix/bin"
echo "$prefix/bin"
