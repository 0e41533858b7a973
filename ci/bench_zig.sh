#!/usr/bin/env bash
# Is the zig-linked manylinux2014 wheel that ci/wheels.sh ships as fast as the native
# build that ci/bench.sh and ci/profile.sh measure? Builds both for one interpreter
# (python3, or PY_GIL), each into its own venv, and prints the latency family's moka_py
# cases side by side (ci/bench/linkers.py): the medians and the ratio zig / native; then
# the instructions per operation of get hit and set under callgrind (ci/profile), which
# the other developers' compilers on a shared machine do not move as they move times.
#   bash ci/bench_zig.sh [--repeats N] [--rounds N]
# Needs valgrind for the second part (ci/profile.sh installs it).
source "$(dirname "$0")/env.sh"
dev_venv
command -v valgrind >/dev/null || apt_install valgrind

native=$(new_venv bench-native "$PY_GIL")
install_wheel "$native"

zig=$(new_venv bench-zig "$PY_GIL")
out="$ROOT/target/wheels/bench-zig"
rm -rf "$out"
log "maturin build --release --zig --compatibility manylinux2014 for bench-zig"
# As ci/wheels.sh builds it, in the same target directory.
PATH="$VENVS/dev/bin:$PATH" CARGO_TARGET_DIR="$ROOT/target/zig" "$VENVS/dev/bin/maturin" build \
    --release -q -i "$zig/bin/python" --zig --compatibility manylinux2014 -o "$out" >&2
install_into "$zig" "$out"/*.whl

log "latency, native build and zig-linked wheel side by side (progress on stderr)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PYTHONHASHSEED=0 "$native/bin/python" -m ci.bench.linkers --native "$native/bin/python" \
    --zig "$zig/bin/python" "$@"

log "instructions per operation under callgrind, native build and zig-linked wheel"
# Neither build has line tables, so only the totals (and the ratio column) mean anything.
"$native/bin/python" -m ci.profile --out "$ROOT/bench-out/zig" --python "native=$native/bin/python" \
    --python "zig=$zig/bin/python" get_hit get_miss set_existing set_fresh_full
