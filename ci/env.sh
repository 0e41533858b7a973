# Sourced by the ci/ scripts: shared paths and helpers.
# shellcheck shell=bash
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The interpreter of the build and lint tools (the dev venv): python3 on PATH unless PY_GIL
# says otherwise.
PY_GIL="${PY_GIL:-$(command -v python3)}"
# Every CPython that the suite runs on and that a wheel is built for, oldest first; the
# classifiers of pyproject.toml name exactly these (ci/wheels.sh checks it).
TARGETS=(3.10 3.11 3.12 3.13 3.13t)
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

# need_trixie_src: a deb-src entry for Debian trixie on the machine's own Debian mirror, for
# the source packages built here (CPython 3.13 by ci/python-ft.sh, Redis 8 and Valkey 8 by
# ci/redis-servers.sh).
need_trixie_src() {
    local srclist=/etc/apt/sources.list.d/moka-py-trixie-src.sources mirror
    [ -f "$srclist" ] && return 0
    mirror=$( { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
                grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}'; } \
        | grep -E '/debian/?$' | head -n1 || true)
    mirror="${mirror:-http://deb.debian.org/debian}"
    log "adding deb-src trixie from $mirror"
    as_root tee "$srclist" >/dev/null <<SRC
Types: deb-src
URIs: $mirror
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    as_root apt-get update -qq >&2
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

# python_is PYTHON VERSION: PYTHON runs and is CPython VERSION ("3.12", "3.13t"); prints its
# sys.executable (a pyenv shim prints the interpreter behind it).
python_is() {
    "$1" -c '
import platform, sys, sysconfig
t = "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""
assert platform.python_implementation() == "CPython"
assert "%d.%d%s" % (*sys.version_info[:2], t) == sys.argv[1]
print(sys.executable)' "$2" 2>/dev/null
}

# find_python VERSION: prints the path of CPython VERSION, one of TARGETS. Looks, in this
# order, at the variable PY310, PY311, PY312, PY313 or PY313T, then:
#   3.10, 3.11, 3.12: python3.X and python3 on PATH, then every pyenv version 3.X.N
#                     (`pyenv prefix 3.X.N`), newest first;
#   3.13, 3.13t:      ci/python-ft.sh (built from source once, then cached).
# Returns 1, having said on stderr what it looked at, when there is none, and 2 when
# ci/python-ft.sh fails to build one.
find_python() {
    local v="$1" var py pv
    var="PY${v//./}"
    var="${var^^}"
    if [ -n "${!var:-}" ]; then
        python_is "${!var}" "$v" && return 0
        echo "$var=${!var} is not CPython $v" >&2
        return 1
    fi
    case "$v" in
        3.13 | 3.13t)
            if ! py=$(bash "$ROOT/ci/python-ft.sh" "$([ "$v" = 3.13t ] && echo ft || echo gil)"); then
                echo "ci/python-ft.sh could not build CPython $v" >&2
                return 2
            fi
            echo "$py"
            return 0
            ;;
    esac
    for py in "python$v" python3; do
        command -v "$py" >/dev/null && python_is "$py" "$v" && return 0
    done
    if command -v pyenv >/dev/null; then
        for pv in $(pyenv versions --bare --skip-aliases 2>/dev/null \
            | grep -E "^${v//./\\.}\.[0-9]+$" | sort -rV); do
            python_is "$(pyenv prefix "$pv")/bin/python$v" "$v" && return 0
        done
    fi
    echo "CPython $v: not found ($var unset, no python$v or python3 $v on PATH, no pyenv $v.N)" >&2
    return 1
}

# select_targets [ARG]: sets SELECTED to the TARGETS that ARG names: "all" (or nothing), or
# a comma-separated list of versions; gil, gil313 and ft (the names of before) stand for
# 3.11, 3.13 and 3.13t. Returns 1 on an unknown name.
select_targets() {
    local a t ok
    SELECTED=()
    if [ "${1:-all}" = all ]; then
        SELECTED=("${TARGETS[@]}")
        return 0
    fi
    IFS=, read -ra names <<<"$1"
    for a in "${names[@]}"; do
        case "$a" in gil) a=3.11 ;; gil313) a=3.13 ;; ft) a=3.13t ;; esac
        ok=
        for t in "${TARGETS[@]}"; do [ "$t" = "$a" ] && ok=1; done
        [ -n "$ok" ] || return 1
        SELECTED+=("$a")
    done
}

# MISSING: the TARGETS that find_python did not find in this run. target_python VERSION sets
# TARGET_PY to the interpreter, or adds VERSION to MISSING and returns 1 (it exits the script
# when an interpreter failed to build); report_missing says which were skipped, by name, at
# the end of a script, and under CI (CI=true) fails the run then.
MISSING=()
target_python() {
    local rc=0
    TARGET_PY=$(find_python "$1") || rc=$?
    case "$rc" in
        0) ;;
        1) MISSING+=("$1"); log "CPython $1 not found: skipped"; return 1 ;;
        *) exit "$rc" ;;
    esac
}
report_missing() {
    [ "${#MISSING[@]}" -eq 0 ] && return 0
    log "SKIPPED, not found: CPython ${MISSING[*]} (set PY310-style variables or install them)"
    if [ "${CI:-}" = true ]; then
        echo "CI=true: every interpreter must be present" >&2
        return 1
    fi
}
