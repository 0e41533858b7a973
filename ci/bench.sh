#!/usr/bin/env bash
# Builds moka_py in release mode, installs the peers in their own virtual
# environments, and prints the side-by-side benchmark tables.
#   bash ci/bench.sh [--quick]
source "$(dirname "$0")/env.sh"
dev_venv
bench="$VENVS/bench"
peer="$VENVS/bench-moka-py-0.5.0"
if [ ! -x "$bench/bin/python" ]; then
    "$PY_GIL" -m venv "$bench"
fi
"$bench/bin/python" -m pip install -q -r "$ROOT/ci/requirements-bench.txt" >&2
install_wheel "$bench"
if [ ! -x "$peer/bin/python" ]; then
    "$PY_GIL" -m venv "$peer"
fi
"$peer/bin/python" -m pip install -q "moka-py==0.5.0" >&2
log "benchmark (progress on stderr)"
PYTHONHASHSEED=0 "$bench/bin/python" "$ROOT/ci/bench.py" --peer-python "$peer/bin/python" "$@"
