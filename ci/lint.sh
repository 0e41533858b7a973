#!/usr/bin/env bash
# Quality gates: rustfmt, clippy, ruff, mypy --strict on the typed usage file,
# and stubtest of the stub against the built module (GIL interpreter).
source "$(dirname "$0")/env.sh"
dev_venv
cd "$ROOT"
log "cargo fmt --check"
cargo fmt --check
log "cargo clippy -- -D warnings"
cargo clippy --release --all-targets -q -- -D warnings
log "ruff"
"$VENVS/dev/bin/ruff" check python tests ci
"$VENVS/dev/bin/ruff" format --check python tests ci
install_wheel "$VENVS/dev"
log "mypy --strict (the package and tests/typed_usage.py)"
"$VENVS/dev/bin/mypy" --strict python/moka_py tests/typed_usage.py
log "stubtest"
"$VENVS/dev/bin/python" -m mypy.stubtest moka_py._moka_py --allowlist ci/stubtest-allowlist.txt
