# Sourced by the ci/ scripts: shared paths and helpers.
# shellcheck shell=bash
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The ordinary (GIL) interpreter: python3 on PATH unless PY_GIL says otherwise.
PY_GIL="${PY_GIL:-$(command -v python3)}"
VENVS="${MOKA_VENVS:-$ROOT/.venvs}"
log() { printf '\n==> %s\n' "$*" >&2; }

# new_venv NAME PYTHON: creates the venv once; prints its path.
new_venv() {
    local venv="$VENVS/$1"
    if [ ! -x "$venv/bin/python" ]; then
        log "creating venv $1 ($2)"
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

dev_venv() {
    if [ ! -x "$VENVS/dev/bin/maturin" ] || [ ! -x "$VENVS/dev/bin/ruff" ]; then
        log "creating the dev venv"
        "$PY_GIL" -m venv "$VENVS/dev"
        "$VENVS/dev/bin/python" -m pip install -q --upgrade pip >&2
        "$VENVS/dev/bin/python" -m pip install -q -r "$ROOT/ci/requirements-dev.txt" \
            -r "$ROOT/ci/requirements-test.txt" >&2
    fi
}
