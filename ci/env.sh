# Sourced by the ci/ scripts: shared paths and helpers.
# shellcheck shell=bash
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The ordinary (GIL) interpreter: python3 on PATH unless PY_GIL says otherwise.
PY_GIL="${PY_GIL:-$(command -v python3)}"
VENVS="${MOKA_VENVS:-$ROOT/.venvs}"
log() { printf '\n==> %s\n' "$*" >&2; }

# as_root CMD...: runs CMD as root, directly or through sudo.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# apt_install PKG...: installs those of the Debian packages that are not installed yet
# (after one apt-get update). Fails with a message where there is no apt.
apt_install() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        echo "missing ${missing[*]}, and there is no apt-get to install them: install them first" >&2
        return 1
    fi
    log "installing ${missing[*]} (apt-get)"
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# need_cc: a C compiler (mimalloc's C sources are compiled into the extension).
need_cc() {
    command -v cc >/dev/null || apt_install build-essential
}

# need_redis: redis-server and redis-cli, which the tests of moka_py.redis start themselves
# (tests/redis_servers.py: their own servers on free loopback ports, never 6379). Installing
# Debian's redis-server package starts the system service on 127.0.0.1:6379 where an init
# system lets it (docker images refuse through policy-rc.d); that service is stopped and
# disabled again here, so no test can reach a server that outlives the run.
need_redis() {
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
    apt_install redis-server redis-tools
    if [ -d /run/systemd/system ]; then
        as_root systemctl disable --now redis-server >/dev/null 2>&1 || true
    elif [ -s /run/redis/redis-server.pid ]; then
        as_root /etc/init.d/redis-server stop >/dev/null 2>&1 \
            || as_root kill "$(cat /run/redis/redis-server.pid)" 2>/dev/null || true
        as_root update-rc.d redis-server disable >/dev/null 2>&1 || true
    fi
    if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        echo "warning: a redis server still answers on 127.0.0.1:6379 (the tests never use it)" >&2
    fi
}

# need_venv PYTHON: PYTHON can create a venv with pip. Debian's own python3 needs the
# python3-venv package for that (its venv module lacks ensurepip); other interpreters
# (pyenv, a source build) carry both and are left alone.
need_venv() {
    "$1" -c 'import venv, ensurepip' 2>/dev/null && return 0
    case "$(readlink -f "$1")" in
        /usr/bin/*) apt_install "python$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv" python3-venv ;;
        *) echo "$1 has no venv/ensurepip module: use an interpreter that has them" >&2; return 1 ;;
    esac
}

# new_venv NAME PYTHON: creates the venv once; prints its path.
new_venv() {
    local venv="$VENVS/$1"
    if [ ! -x "$venv/bin/python" ]; then
        log "creating venv $1 ($2)"
        need_venv "$2"
        "$2" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --upgrade pip >&2
    fi
    echo "$venv"
}

# make_venv NAME PYTHON [pip flags...]: a venv with the test requirements.
make_venv() {
    local venv
    venv=$(new_venv "$1" "$2")
    shift 2
    "$venv/bin/python" -m pip install -q "$@" -r "$ROOT/ci/requirements-test.txt" >&2
    echo "$venv"
}

# install_wheel VENV: builds the release wheel for VENV's interpreter and installs it.
install_wheel() {
    local venv="$1" out
    out="$ROOT/target/wheels/$(basename "$venv")"
    rm -rf "$out"
    log "maturin build --release for $(basename "$venv")"
    "$VENVS/dev/bin/maturin" build --release -q -i "$venv/bin/python" -o "$out" >&2
    "$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$out"/*.whl >&2
}

# dev_venv: the venv of the build and lint tools, (re)installed when a requirements file
# has changed since it was last installed.
dev_venv() {
    local stamp="$VENVS/dev/requirements.stamp"
    need_cc
    new_venv dev "$PY_GIL" >/dev/null
    if ! cat "$ROOT"/ci/requirements-{dev,test}.txt | cmp -s - "$stamp"; then
        log "installing the dev requirements"
        "$VENVS/dev/bin/python" -m pip install -q -r "$ROOT/ci/requirements-dev.txt" \
            -r "$ROOT/ci/requirements-test.txt" >&2
        cat "$ROOT"/ci/requirements-{dev,test}.txt >"$stamp"
    fi
}
