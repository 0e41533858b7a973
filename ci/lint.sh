#!/usr/bin/env bash
# Quality gates: rustfmt, clippy, ruff, mypy --strict and basedpyright (pyright's checker:
# standard rules on the package, strict on the typed usage file, [tool.basedpyright] in
# pyproject.toml), and stubtest of the stub against the built module (GIL interpreter).
source "$(dirname "$0")/env.sh"
dev_venv
cd "$ROOT"
log "cargo fmt --check"
cargo fmt --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --release --all-targets -q -- -D warnings
log "cargo clippy for free-threaded 3.13t (the code under cfg(Py_GIL_DISABLED))"
ft=$(find_python 3.13t)
PYO3_PYTHON="$ft" CARGO_TARGET_DIR="$ROOT/target/clippy-ft" \
    cargo clippy --release --all-targets -q -- -D warnings
log "no libc outside a cfg(target_os = ...) item"
# A line of Rust that names `libc` must sit inside an item (a fn, mod, impl or
# block) whose attribute is a cfg naming target_os, or in a file whose inner
# attribute is one; comments are skipped. Braces are counted per line, which
# the rustfmt'ed code allows. And Cargo.toml may list libc only under a
# [target.'cfg(...)'.dependencies] table.
awk '
    FNR == 1 { depth = 0; gated = -1; pending = 0; file_gated = 0 }
    /^[[:space:]]*\/\// { next }
    /#!\[cfg\(.*target_os/ { file_gated = 1 }
    /#\[cfg\(.*target_os/ { pending = 1 }
    /(^|[^[:alnum:]_])libc([^[:alnum:]_]|$)/ && !file_gated && gated < 0 && !pending {
        printf "%s:%d: libc outside a cfg(target_os = ...) item: %s\n", FILENAME, FNR, $0
        bad = 1
    }
    {
        opens = gsub(/\{/, "{"); closes = gsub(/\}/, "}")
        if (pending && opens > 0) { if (gated < 0) gated = depth; pending = 0 }
        else if (pending && /;[[:space:]]*$/) { pending = 0 }
        depth += opens - closes
        if (gated >= 0 && depth <= gated) gated = -1
    }
    END { exit bad }
' src/*.rs build.rs
awk '/^\[/ { target = ($0 ~ /^\[target\./) } /^libc[[:space:]]*=/ && !target { print "Cargo.toml: libc is a dependency of every platform"; bad = 1 } END { exit bad }' Cargo.toml
log "ruff"
"$VENVS/dev/bin/ruff" check python tests ci
"$VENVS/dev/bin/ruff" format --check python tests ci
install_wheel "$VENVS/dev"
log "mypy --strict (the package and tests/typed_usage.py)"
"$VENVS/dev/bin/mypy" --strict python/moka_py tests/typed_usage.py
log "basedpyright (the package, and tests/typed_usage.py strict)"
"$VENVS/dev/bin/basedpyright" --pythonpath "$VENVS/dev/bin/python"
log "stubtest"
"$VENVS/dev/bin/python" -m mypy.stubtest moka_py._moka_py --allowlist ci/stubtest-allowlist.txt
