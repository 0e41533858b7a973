#!/usr/bin/env bash
# Builds moka_py and runs the whole test suite on three interpreters: the ordinary
# CPython on PATH (3.11 here), the ordinary CPython 3.13 and free-threaded CPython 3.13t
# (both built once by ci/python-ft.sh).
#   bash ci/test.sh                 all three
#   bash ci/test.sh gil|gil313|ft   one of them
# Extra arguments after the first go to pytest.
source "$(dirname "$0")/env.sh"
which="${1:-all}"
[ $# -gt 0 ] && shift
case "$which" in
    all | gil | gil313 | ft) ;;
    *) echo "usage: $0 [gil|gil313|ft] [pytest arguments...]" >&2; exit 2 ;;
esac
dev_venv
# The moka_py.redis tests start their own redis-server processes.
need_redis

run_suite() {
    local venv="$1"
    shift
    install_wheel "$venv"
    log "pytest on $("$venv/bin/python" -c 'import sys; print(sys.version.split()[0], "free-threaded" if not getattr(sys, "_is_gil_enabled", lambda: True)() else "GIL")')"
    (cd "$ROOT" && "$venv/bin/python" -m pytest -n 2 -p no:cacheprovider "${@:-tests}")
}

if [ "$which" = all ] || [ "$which" = gil ]; then
    run_suite "$(make_venv gil "$PY_GIL")" "$@"
fi
if [ "$which" = all ] || [ "$which" = gil313 ]; then
    run_suite "$(make_venv gil313 "$(bash "$ROOT/ci/python-ft.sh" gil)")" "$@"
fi
if [ "$which" = all ] || [ "$which" = ft ]; then
    ft="$(make_venv ft "$(bash "$ROOT/ci/python-ft.sh" ft)" --only-binary :all:)"
    run_suite "$ft" "$@"
    if [ $# -eq 0 ]; then
        # Every test again, each in 4 threads at once (pytest-run-parallel).
        log "pytest on 3.13t, each test in 4 threads at once"
        (cd "$ROOT" && "$ft/bin/python" -m pytest -n 2 -p no:cacheprovider --parallel-threads=4 tests)
    fi
fi
