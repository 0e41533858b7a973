#!/usr/bin/env bash
# Builds moka_py and runs the whole test suite on every interpreter of TEST_TARGETS
# (ci/env.sh): CPython 3.10, 3.11, 3.12, the ordinary 3.13 and free-threaded 3.13t (both
# built once by ci/python-ft.sh), 3.14 (Debian sid's, fetched once by ci/python-314.sh), and
# PyPy 3.11 (Debian sid's, fetched once by ci/python-pypy.sh). find_python (ci/env.sh) says
# where each is looked for.
#   bash ci/test.sh                      all seven
#   bash ci/test.sh 3.12                 one of them (gil, gil313, ft, pypy: 3.11, 3.13, 3.13t,
#                                        pypy3.11)
#   bash ci/test.sh 3.10,3.13t           several
# Extra arguments after the first go to pytest. An interpreter that is not found is
# reported by name and skipped; under CI (CI=true) that fails the run.
#   bash ci/test.sh rust                 only the Rust tests of the store layer (cargo test)
#   MOKA_PY_REDIS_SERVER=valkey8 bash ci/test.sh 3.11 tests/test_redis_*.py
#                                        the moka_py.redis tests on Valkey 8 (or redis8, redis7)
# "all" runs the Rust tests first: `cargo test --lib` on an interpreter embedded from the
# dev venv's python3 (without pyo3's extension-module feature, which only maturin enables).
# The test requirements come from the lock, ci/lock/TAG/test.txt (`bash ci/lock.sh`).
#
# Both ends of the ranges that pyproject.toml declares for its dependencies (redis>=5,
# django>=4.2, opentelemetry-api>=1.20, prometheus-client>=0.17): the tests of moka_py.redis,
# moka_py.django, moka_py.otel and moka_py.prometheus (tests/test_redis_*.py,
# tests/test_django*.py, tests/test_otel.py, tests/test_prometheus.py, or the pytest arguments
# given) on CPython DEPS_PY, 3.11,
#   bash ci/test.sh --deps oldest        with the oldest releases admitted, at their latest
#                                        patch (ci/requirements-oldest.txt, locked in
#                                        ci/lock/3.11/oldest.txt): redis-py 5.0.x, Django 4.2.x
#   bash ci/test.sh --deps newest        with the newest releases on PyPI today, the lock
#                                        ignored (resolved afresh from the ranges of
#                                        ci/requirements-test.txt at each run)
source "$(dirname "$0")/env.sh"
DEPS_PY=3.11
deps=
if [ "${1:-}" = --deps ]; then
    deps="${2:-}"
    case "$deps" in
        oldest | newest) shift 2 ;;
        *) echo "usage: $0 --deps oldest|newest [pytest arguments...]" >&2; exit 2 ;;
    esac
    which=deps
else
    which="${1:-all}"
    [ $# -gt 0 ] && shift
fi
rust=
[ "$which" = all ] && rust=1
if [ "$which" = deps ]; then
    SELECTED=()
elif [ "$which" = rust ]; then
    rust=1
    SELECTED=()
elif ! select_targets "$which"; then
    echo "usage: $0 [all|rust|$(IFS=,; echo "${TEST_TARGETS[*]}")|gil|gil313|ft|pypy[,...]] [pytest arguments...]" >&2
    echo "       $0 --deps oldest|newest [pytest arguments...]" >&2
    exit 2
fi
dev_venv
if [ -n "$rust" ]; then
    log "cargo test --lib (the store layer, on an embedded $("$PY_GIL" -c 'import sys; print(sys.version.split()[0])'))"
    (cd "$ROOT" && PYO3_PYTHON="$PY_GIL" cargo test --lib -q)
    [ "${#SELECTED[@]}" -eq 0 ] && exit 0
fi
# The moka_py.redis tests start their own redis-server processes: Debian's Redis 7 unless
# MOKA_PY_REDIS_SERVER names another (redis7, redis8, valkey8; ci/redis-servers.sh installs
# or builds it once).
need_redis
if [ -n "${MOKA_PY_REDIS_SERVER:-}" ]; then
    MOKA_PY_REDIS_BIN=$(bash "$ROOT/ci/redis-servers.sh" "$MOKA_PY_REDIS_SERVER")
    export MOKA_PY_REDIS_BIN
    log "moka_py.redis tests on $MOKA_PY_REDIS_SERVER: $("$MOKA_PY_REDIS_BIN/redis-server" --version)"
fi

run_suite() {
    local venv="$1"
    shift
    install_wheel "$venv"
    log "pytest on $("$venv/bin/python" -c 'import platform, sys; print(platform.python_implementation(), sys.version.split()[0], "free-threaded" if not getattr(sys, "_is_gil_enabled", lambda: True)() else "GIL")')"
    (cd "$ROOT" && "$venv/bin/python" -m pytest -n 2 -p no:cacheprovider "${@:-tests}")
}

# deps_oldest_check: ci/requirements-oldest.txt names, for each dependency of
# pyproject.toml's extras (NAME>=X.Y), NAME==X.Y.* (the lower bound's latest patch).
deps_oldest_check() {
    "$TARGET_PY" - "$ROOT/pyproject.toml" "$ROOT/ci/requirements-oldest.txt" <<'EOF'
import re
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
with open(sys.argv[2]) as f:
    pins = {ln.split("#")[0].strip() for ln in f} - {""}
want = set()
for req in {r for reqs in extras.values() for r in reqs}:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=(\d+)(?:\.(\d+))?", req.replace(" ", ""))
    if not m:
        sys.exit(f"pyproject.toml: {req!r} is not NAME>=X.Y, which --deps oldest understands")
    want.add(f"{m[1]}=={m[2]}.{m[3] or 0}.*")
if pins != want:
    sys.exit(f"ci/requirements-oldest.txt names {sorted(pins)}; pyproject.toml's lower bounds "
             f"ask for {sorted(want)}")
EOF
}

# deps_leg oldest|newest [pytest arguments...]: the tests of moka_py.redis and moka_py.django
# on DEPS_PY with the oldest or the newest releases of their dependencies.
deps_leg() {
    local leg="$1" venv files=() f
    shift
    target_python "$DEPS_PY" || { report_missing; exit 1; }
    venv=$(new_venv "py$DEPS_PY-$leg" "$TARGET_PY")
    if [ "$leg" = oldest ]; then
        deps_oldest_check
        sync_venv "$venv" oldest
    else
        log "resolving the newest releases of ci/requirements-test.txt (the lock ignored)"
        (cd "$ROOT" && "$UV" pip compile -q --upgrade --no-header --python "$venv/bin/python" \
            ci/requirements-test.txt -o "$venv/newest.txt")
        "$UV" pip sync -q --python "$venv/bin/python" "$venv/newest.txt" >&2
    fi
    log "--deps $leg: $("$UV" pip list --python "$venv/bin/python" --format=freeze 2>/dev/null \
        | grep -iE '^(redis|django|opentelemetry-(api|sdk)|prometheus-client)==' | paste -sd' ') on $DEPS_PY"
    for f in "$ROOT"/tests/test_redis_*.py "$ROOT"/tests/test_django*.py \
        "$ROOT/tests/test_otel.py" "$ROOT/tests/test_prometheus.py"; do
        files+=("tests/${f##*/}")
    done
    if [ $# -eq 0 ]; then
        run_suite "$venv" "${files[@]}"
    else
        run_suite "$venv" "$@"
    fi
}

if [ -n "$deps" ]; then
    deps_leg "$deps" "$@"
    exit 0
fi

for v in "${SELECTED[@]}"; do
    target_python "$v" || continue
    if [ "$v" = 3.13t ]; then
        # The test requirements from wheels only: nothing is compiled from an sdist for 3.13t.
        venv=$(make_venv "py$v" "$TARGET_PY" --only-binary :all:)
    else
        # py3.11, ..., and pypy3.11 for PyPy.
        venv=$(make_venv "$( [[ $v == pypy* ]] || echo py)$v" "$TARGET_PY")
    fi
    run_suite "$venv" "$@"
    if [ "$v" = 3.13t ] && [ $# -eq 0 ]; then
        # Every test again, each in 4 threads at once (pytest-run-parallel).
        log "pytest on 3.13t, each test in 4 threads at once"
        (cd "$ROOT" && "$venv/bin/python" -m pytest -n 2 -p no:cacheprovider --parallel-threads=4 tests)
    fi
done
report_missing
