#!/usr/bin/env bash
# Where the time of one operation goes: instructions per operation under
# callgrind (stable on a shared machine, unlike times), charged to CPython,
# PyO3, this binding, moka and the allocator; moka-py 0.5.0 side by side.
#   bash ci/profile.sh [--out DIR] [OPERATION...]     (see ci/profile/driver.py)
# Needs valgrind (installed with apt-get when missing). Builds moka_py in
# release mode with line tables (so that inlined code keeps its source) into
# its own venv, .venvs/profile.
source "$(dirname "$0")/env.sh"
dev_venv
if ! command -v valgrind >/dev/null || ! command -v callgrind_annotate >/dev/null; then
    log "installing valgrind"
    sudo_=""
    [ "$(id -u)" -eq 0 ] || sudo_=sudo
    $sudo_ apt-get install -y -q valgrind >&2 ||
        { $sudo_ apt-get update -q >&2 && $sudo_ apt-get install -y -q valgrind >&2; }
fi
venv=$(new_venv profile "$PY_GIL")
CARGO_TARGET_DIR="$ROOT/target/profile" CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    install_wheel "$venv"
peer=$(new_venv bench-moka-py-0.5.0 "$PY_GIL")
sync_venv "$peer" moka-py-0.5.0
log "callgrind, two runs per operation (progress on stderr)"
# The package ci/profile/ runs as ci.profile (a top-level "profile" would
# shadow the standard library's) with the repository on PYTHONPATH; the
# workload processes under valgrind inherit that.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$venv/bin/python" -m ci.profile --python "moka_py=$venv/bin/python" \
    --python "moka-py 0.5.0=$peer/bin/python" "$@"
