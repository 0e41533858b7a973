#!/usr/bin/env bash
# Builds moka_py and runs the whole test suite on every CPython of TARGETS (ci/env.sh):
# 3.10, 3.11, 3.12, the ordinary 3.13 and free-threaded 3.13t (both built once by
# ci/python-ft.sh). find_python (ci/env.sh) says where each is looked for.
#   bash ci/test.sh                      all five
#   bash ci/test.sh 3.12                 one of them (gil, gil313, ft: 3.11, 3.13, 3.13t)
#   bash ci/test.sh 3.10,3.13t           several
# Extra arguments after the first go to pytest. An interpreter that is not found is
# reported by name and skipped; under CI (CI=true) that fails the run.
#   bash ci/test.sh rust                 only the Rust tests of the store layer (cargo test)
# "all" runs the Rust tests first: `cargo test --lib` on an interpreter embedded from the
# dev venv's python3 (without pyo3's extension-module feature, which only maturin enables).
# The test requirements come from the lock, ci/lock/TAG/test.txt (`bash ci/lock.sh`).
source "$(dirname "$0")/env.sh"
which="${1:-all}"
[ $# -gt 0 ] && shift
rust=
[ "$which" = all ] && rust=1
if [ "$which" = rust ]; then
    rust=1
    SELECTED=()
elif ! select_targets "$which"; then
    echo "usage: $0 [all|rust|$(IFS=,; echo "${TARGETS[*]}")|gil|gil313|ft[,...]] [pytest arguments...]" >&2
    exit 2
fi
dev_venv
if [ -n "$rust" ]; then
    log "cargo test --lib (the store layer, on an embedded $("$PY_GIL" -c 'import sys; print(sys.version.split()[0])'))"
    (cd "$ROOT" && PYO3_PYTHON="$PY_GIL" cargo test --lib -q)
    [ "${#SELECTED[@]}" -eq 0 ] && exit 0
fi
# The moka_py.redis tests start their own redis-server processes.
need_redis

run_suite() {
    local venv="$1"
    shift
    install_wheel "$venv"
    log "pytest on $("$venv/bin/python" -c 'import sys; print(sys.version.split()[0], "free-threaded" if not getattr(sys, "_is_gil_enabled", lambda: True)() else "GIL")')"
    (cd "$ROOT" && "$venv/bin/python" -m pytest -n 2 -p no:cacheprovider "${@:-tests}")
}

for v in "${SELECTED[@]}"; do
    target_python "$v" || continue
    if [ "$v" = 3.13t ]; then
        # The test requirements from wheels only: nothing is compiled from an sdist for 3.13t.
        venv=$(make_venv "py$v" "$TARGET_PY" --only-binary :all:)
    else
        venv=$(make_venv "py$v" "$TARGET_PY")
    fi
    run_suite "$venv" "$@"
    if [ "$v" = 3.13t ] && [ $# -eq 0 ]; then
        # Every test again, each in 4 threads at once (pytest-run-parallel).
        log "pytest on 3.13t, each test in 4 threads at once"
        (cd "$ROOT" && "$venv/bin/python" -m pytest -n 2 -p no:cacheprovider --parallel-threads=4 tests)
    fi
done
report_missing
