# Sourced by the ci/ scripts: shared paths and helpers.
# shellcheck shell=bash
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The interpreter of the build and lint tools (the dev venv): python3 on PATH unless PY_GIL
# says otherwise.
PY_GIL="${PY_GIL:-$(command -v python3)}"
# Every CPython that the suite runs on and that a wheel is built for, oldest first; the
# classifiers of pyproject.toml name exactly these (ci/wheels.sh checks it).
TARGETS=(3.10 3.11 3.12 3.13 3.13t 3.14)
# The interpreters the suite runs on: TARGETS, and PyPy 3.11 (Debian sid's, fetched once by
# ci/python-pypy.sh), which gets no wheel here.
TEST_TARGETS=("${TARGETS[@]}" pypy3.11)
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

# trixie_source PKG: downloads the upstream tarball of Debian trixie's source package PKG
# into the current directory and prints its name: the newest version that the mirror holds
# (it lacks some that the index names: python3.13, openssl), tried newest first.
trixie_source() {
    local v versions
    need_trixie_src
    versions=$(apt-cache showsrc "$1" 2>/dev/null | sed -n 's/^Version: //p' | sort -rVu)
    if [ -z "$versions" ]; then
        as_root apt-get update -qq >&2
        versions=$(apt-cache showsrc "$1" 2>/dev/null | sed -n 's/^Version: //p' | sort -rVu)
    fi
    for v in $versions; do
        # apt runs as _apt where it can; a root-owned directory makes it warn only.
        if apt-get source -qq --download-only --tar-only "$1=$v" >/dev/null 2>&1; then
            ls "${1}_"*.orig.tar.* | head -n1
            return 0
        fi
    done
    echo "no source package of $1 (${versions//$'\n'/, }) could be downloaded" >&2
    return 1
}

# need_venv PYTHON: PYTHON can create a venv with pip (the bootstrap venv of uv, below).
# Debian's own python3 needs the python3-venv package for that (its venv module lacks
# ensurepip); other interpreters (pyenv, a source build) carry both and are left alone.
need_venv() {
    "$1" -c 'import venv, ensurepip' 2>/dev/null && return 0
    case "$(readlink -f "$1")" in
        /usr/bin/*) apt_install "python$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv" python3-venv ;;
        *) echo "$1 has no venv/ensurepip module: use an interpreter that has them" >&2; return 1 ;;
    esac
}

# The lock: every package that the scripts install into a venv comes from a file
# ci/lock/TAG/SET.txt (exact versions, every file's sha256), where TAG is the interpreter
# ("3.11", "3.13t": python_tag) and SET one of LOCK_SETS, written by `bash ci/lock.sh`
# from the version ranges of the requirements files that lock_inputs names (the sets of
# each TAG: ci/lock.sh).
LOCK="$ROOT/ci/lock"

# lock_inputs SET: the requirements files (paths from ROOT) that SET's locks are made of.
lock_inputs() {
    case "$1" in
        uv) echo ci/requirements-uv.txt ;;
        test) echo ci/requirements-test.txt ;;
        # The build and lint tools, and the test requirements (ci/lint.sh runs mypy over
        # tests/typed_usage.py, which imports them), resolved together.
        dev) echo ci/requirements-dev.txt ci/requirements-test.txt ;;
        bench) echo ci/requirements-bench.txt ;;
        moka-py-0.5.0) echo ci/requirements-moka-py-0.5.0.txt ;;
        moka-py-0.5.0-suite) echo ci/requirements-moka-py-0.5.0-suite.txt ;;
        oldest) echo ci/requirements-oldest.txt ci/requirements-test.txt ;;
        *) echo "lock_inputs: no set $1" >&2; return 1 ;;
    esac
}

# lock_digest SET: the sha256 of SET's input files, which ci/lock.sh writes into the
# first line of each lock it makes, so that a lock older than its inputs is refused.
lock_digest() {
    local f files=()
    for f in $(lock_inputs "$1"); do files+=("$ROOT/$f"); done
    cat "${files[@]}" | sha256sum | cut -d' ' -f1
}

# lock_file SET TAG: prints the path of SET's lock for TAG. Fails, saying so, when there
# is none or when its inputs have changed since it was made.
lock_file() {
    local f="$LOCK/$2/$1.txt"
    [ "$1" = uv ] && f="$LOCK/uv.txt"
    if [ ! -f "$f" ]; then
        echo "no lock ${f#"$ROOT/"} (set $1, CPython $2): run bash ci/lock.sh" >&2
        return 1
    fi
    if [ "$(head -n1 "$f")" != "# inputs: $(lock_digest "$1")" ]; then
        echo "${f#"$ROOT/"} is older than $(lock_inputs "$1"): run bash ci/lock.sh" >&2
        return 1
    fi
    echo "$f"
}

# python_tag PYTHON: "3.11", "3.13t" for a free-threaded build, "pypy3.11" for PyPy: the
# TAG of its locks.
python_tag() {
    "$1" -c 'import platform, sys, sysconfig
pypy = "pypy" if platform.python_implementation() == "PyPy" else ""
print("%s%d.%d%s" % (pypy, *sys.version_info[:2], "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""))'
}

# need_uv: sets UV to uv, the installer and venv maker of every other venv: the exact
# version of ci/lock/uv.txt (with its hashes), installed by pip into a venv of its own,
# $VENVS/uv, made by PY_GIL's venv module. Reinstalled when ci/lock/uv.txt changes.
# uv finds interpreters only where the scripts point it (it never downloads one), and its
# cache is uv's default (~/.cache/uv, or UV_CACHE_DIR).
need_uv() {
    local boot="$VENVS/uv" lock
    UV="$boot/bin/uv"
    export UV_PYTHON_DOWNLOADS=never
    lock=$(lock_file uv "")
    if [ ! -x "$UV" ] || ! cmp -s "$lock" "$boot/uv.stamp"; then
        log "installing uv into $boot (pip, $(sed -n 's/^\(uv==[^ ]*\).*/\1/p' "$lock"), ci/lock/uv.txt)"
        need_venv "$PY_GIL"
        rm -rf "$boot"
        "$PY_GIL" -m venv "$boot"
        "$boot/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
            --require-hashes -r "$lock" >&2
        cp "$lock" "$boot/uv.stamp"
    fi
}

# new_venv NAME PYTHON: creates the venv once (uv venv: no pip inside; every install goes
# through uv); prints its path.
new_venv() {
    local venv="$VENVS/$1"
    need_uv
    if [ ! -x "$venv/bin/python" ]; then
        log "creating venv $1 ($2)"
        "$UV" venv -q --python "$2" "$venv" >&2
    fi
    echo "$venv"
}

# sync_venv VENV SET [uv flags...]: makes VENV hold exactly SET's lock for its interpreter
# (uv pip sync: installs what is missing, removes what the lock does not name, checks
# every hash). A no-op, in milliseconds, when it already does.
sync_venv() {
    local venv="$1" set="$2" lock
    shift 2
    need_uv
    lock=$(lock_file "$set" "$(python_tag "$venv/bin/python")")
    "$UV" pip sync -q --python "$venv/bin/python" --require-hashes "$@" "$lock" >&2
}

# make_venv NAME PYTHON [uv flags...]: a venv with the locked test requirements.
make_venv() {
    local venv
    venv=$(new_venv "$1" "$2")
    shift 2
    sync_venv "$venv" test "$@"
    echo "$venv"
}

# install_into VENV FILE...: installs those wheel files into VENV, no dependencies, no index.
install_into() {
    local venv="$1"
    shift
    need_uv
    "$UV" pip install -q --python "$venv/bin/python" --reinstall --no-deps --no-index "$@" >&2
}

# install_wheel VENV: builds the release wheel for VENV's interpreter and installs it. The
# build names the interpreter the venv was made from, not the venv: PyO3's build script
# runs again whenever that path changes, so the venvs of one interpreter (dev, py3.11, the
# --deps legs, bench) share one build in the target directory instead of recompiling PyO3
# and this crate in turn.
install_wheel() {
    local venv="$1" out
    out="$ROOT/target/wheels/$(basename "$venv")"
    rm -rf "$out"
    log "maturin build --release for $(basename "$venv")"
    "$VENVS/dev/bin/maturin" build --release -q \
        -i "$("$venv/bin/python" -c 'import sys; print(sys._base_executable)')" -o "$out" >&2
    install_into "$venv" "$out"/*.whl
}

# fetch_sdist DIR PROJECT VERSION [PIP-ARGS...]: downloads PROJECT==VERSION's source
# distribution (never a wheel of it) into DIR/dl and prints its path; the caller checks
# its sha256 against what it pins. The venvs that uv makes have no pip: pip runs in uv's
# own venv (need_uv), given the target's --python-version where that matters.
fetch_sdist() {
    local dir="$1" project="$2" version="$3"
    shift 3
    log "pip download $project==$version (sdist)"
    "$VENVS/uv/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
        --no-binary "$project" -d "$dir/dl" "$@" "$project==$version" >&2
    local found=("$dir"/dl/*.tar.gz)
    [ "${#found[@]}" = 1 ] && [ -f "${found[0]}" ] \
        || { echo "pip download $project==$version: no single sdist in $dir/dl" >&2; return 1; }
    printf '%s\n' "${found[0]}"
}

# audit_wheel WHEEL TAG: `auditwheel show` (PyPI, the dev venv's; it reads the ELF file's
# symbol versions and libraries itself) must find the platform tag TAG
# (manylinux_2_17_x86_64), and the file name's tags (manylinux_2_17_x86_64.manylinux2014_x86_64)
# must include it. Exits the script otherwise.
audit_wheel() {
    local wheel="$1" want="$2" shown tag name_tags
    shown=$("$VENVS/dev/bin/auditwheel" show "$wheel" | tr '\n' ' ')
    tag=$(grep -oE 'platform tag: *"[^"]+"' <<<"$shown" | grep -oE '"[^"]+"' | tr -d '"')
    name_tags=$(basename "$wheel" .whl | rev | cut -d- -f1 | rev)
    echo "$(basename "$wheel"): auditwheel show says $tag" >&2
    if [ "$tag" != "$want" ] || ! tr . '\n' <<<"$name_tags" | grep -qxF "$tag"; then
        echo "auditwheel show: $shown" >&2
        echo "the wheel is tagged $name_tags, auditwheel finds $tag, $want wanted" >&2
        exit 1
    fi
}

# ft_pyo3_config VERSION FILE: makes FILE a PyO3 configuration (for PYO3_CONFIG_FILE) that
# describes a free-threaded CPython VERSION ("3.14") of 64 bits, for builds without such an
# interpreter: the 3.14t compile check (ci/wheels.sh), the aarch64 3.13t wheel
# (ci/wheels-aarch64.sh). FILE is left untouched when it says that already: PyO3's build
# script runs again (and the crate is recompiled) when its path or its time changes.
ft_pyo3_config() {
    local text
    text=$(printf '%s\n' implementation=CPython "version=$1" shared=true abi3=false \
        build_flags=Py_GIL_DISABLED suppress_build_script_link_lines=false pointer_width=64)
    mkdir -p "$(dirname "$2")"
    [ -f "$2" ] && [ "$(cat "$2")" = "$text" ] && return 0
    echo "$text" >"$2"
}

# need_rust_web WHAT: exports RUSTC, Debian's rustc-web (ci/rust-web.sh), for the wheels
# of other platforms than this one. Where it cannot be had here, says that WHAT is skipped
# and ends the script: with 0, or 1 under CI (CI=true).
need_rust_web() {
    local rc=0
    RUSTC=$(bash "$ROOT/ci/rust-web.sh") || rc=$?
    if [ "$rc" -eq 3 ]; then
        log "no rustc-web here (ci/rust-web.sh): $1 skipped"
        [ "${CI:-}" = true ] && { echo "CI=true: $1 must be built" >&2; exit 1; }
        exit 0
    fi
    [ "$rc" -eq 0 ] || exit "$rc"
    export RUSTC
}

# build_cross_wheel DIR TARGET VERSION [MATURIN-ARGS...]: builds the release wheel of CPython
# VERSION ("3.12", "3.13t") for the Rust target TARGET into DIR and sets WHEEL to its path.
# Cross-compiling, maturin takes the interpreter by name (python3.X) and reads the target's
# configuration from the sysconfig data it bundles; it has none for a free-threaded 3.13t,
# which a PyO3 configuration file (ft_pyo3_config, kept in CARGO_TARGET_DIR) describes
# instead. The dev venv comes first on PATH: `--zig` runs its python3, which has ziglang.
build_cross_wheel() {
    local dir="$1" target="$2" v="$3" out interpreter config=()
    shift 3
    interpreter=(-i "python$v")
    if [ "$v" != "${v%t}" ]; then
        ft_pyo3_config "${v%t}" "$CARGO_TARGET_DIR/pyo3-$v.txt"
        interpreter=()
        config=("PYO3_CONFIG_FILE=$CARGO_TARGET_DIR/pyo3-$v.txt")
    fi
    out=$(mktemp -d)
    env "${config[@]}" PATH="$VENVS/dev/bin:$PATH" "$VENVS/dev/bin/maturin" build --release -q \
        --target "$target" "${interpreter[@]}" "$@" -o "$out" >&2
    WHEEL="$dir/$(basename "$(ls "$out"/*.whl)")"
    mkdir -p "$dir"
    mv "$out"/*.whl "$dir/" && rmdir "$out"
}

# dev_venv: the venv of the build and lint tools, synced with its lock (ci/lock/TAG/dev.txt
# for PY_GIL's TAG) on every run.
dev_venv() {
    need_cc
    sync_venv "$(new_venv dev "$PY_GIL")" dev
}

# python_is PYTHON VERSION: PYTHON runs and is CPython VERSION ("3.12", "3.13t"), or PyPy
# of that Python version ("pypy3.11"); prints its sys.executable (a pyenv shim prints the
# interpreter behind it).
python_is() {
    "$1" -c '
import platform, sys, sysconfig
t = "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""
pypy = "pypy" if platform.python_implementation() == "PyPy" else ""
assert pypy or platform.python_implementation() == "CPython"
assert "%s%d.%d%s" % (pypy, *sys.version_info[:2], t) == sys.argv[1]
print(sys.executable)' "$2" 2>/dev/null
}

# find_python VERSION: prints the path of CPython VERSION, one of TEST_TARGETS. Looks, in this
# order, at the variable PY310, PY311, PY312, PY313, PY313T or PY314, then:
#   3.10, 3.11, 3.12: python3.X and python3 on PATH, then every pyenv version 3.X.N
#                     (`pyenv prefix 3.X.N`), newest first;
#   3.13, 3.13t:      ci/python-ft.sh (built from source once, then cached);
#   3.14:             as 3.10, then ci/python-314.sh (Debian sid's binary, fetched once,
#                     then cached);
#   pypy3.11:         (variable PYPY311) ci/python-pypy.sh (Debian sid's, fetched once,
#                     then cached).
# Returns 1, having said on stderr what it looked at, when there is none, and 2 when
# ci/python-ft.sh, ci/python-314.sh or ci/python-pypy.sh fails otherwise than by finding
# nothing to use.
find_python() {
    local v="$1" var py pv
    var="PY${v//./}"
    var="${var^^}"
    [ "$v" = pypy3.11 ] && var=PYPY311
    if [ -n "${!var:-}" ]; then
        python_is "${!var}" "$v" && return 0
        echo "$var=${!var} is not CPython $v" >&2
        return 1
    fi
    if [ "$v" = pypy3.11 ]; then
        local rc=0
        py=$(bash "$ROOT/ci/python-pypy.sh") || rc=$?
        case "$rc" in
            0) echo "$py"; return 0 ;;
            3) echo "PyPy 3.11: not found ($var unset, none in Debian sid)" >&2; return 1 ;;
            *) echo "ci/python-pypy.sh could not fetch PyPy 3.11" >&2; return 2 ;;
        esac
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
    if [ "$v" = 3.14 ]; then
        local rc=0
        py=$(bash "$ROOT/ci/python-314.sh") || rc=$?
        case "$rc" in
            0) echo "$py"; return 0 ;;
            3) echo "CPython 3.14: not found ($var unset, none on PATH or in pyenv, none in Debian sid)" >&2
               return 1 ;;
            *) echo "ci/python-314.sh could not fetch CPython 3.14" >&2; return 2 ;;
        esac
    fi
    echo "CPython $v: not found ($var unset, no python$v or python3 $v on PATH, no pyenv $v.N)" >&2
    return 1
}

# select_targets [ARG]: sets SELECTED to the TEST_TARGETS that ARG names: "all" (or
# nothing), or a comma-separated list of versions; gil, gil313, ft and pypy (the names of
# before, and a short one) stand for 3.11, 3.13, 3.13t and pypy3.11. Returns 1 on an
# unknown name.
select_targets() {
    local a t ok
    SELECTED=()
    if [ "${1:-all}" = all ]; then
        SELECTED=("${TEST_TARGETS[@]}")
        return 0
    fi
    IFS=, read -ra names <<<"$1"
    for a in "${names[@]}"; do
        case "$a" in gil) a=3.11 ;; gil313) a=3.13 ;; ft) a=3.13t ;; pypy) a=pypy3.11 ;; esac
        ok=
        for t in "${TEST_TARGETS[@]}"; do [ "$t" = "$a" ] && ok=1; done
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
