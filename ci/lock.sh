#!/usr/bin/env bash
# Refreshes the lock, ci/lock/: for every interpreter of TARGETS, the exact version and the
# sha256 of every file of each package that the scripts install, resolved by uv
# (`uv pip compile --generate-hashes`) from the version ranges of the requirements files
# (lock_inputs, ci/env.sh). The scripts install from these files only (uv pip sync
# --require-hashes), so a fresh machine installs what passed when they were committed.
#   bash ci/lock.sh                  what changed in the ranges; every other pin is kept
#   bash ci/lock.sh --upgrade        every package at the newest version its range admits
#   bash ci/lock.sh --upgrade-package redis        one package (any uv pip compile option)
# Then run the suite, and commit ci/lock/ with the requirements files.
#
#   ci/lock/uv.txt              uv itself (ci/requirements-uv.txt), installed by pip
#   ci/lock/TAG/test.txt        the test requirements          3.10 3.11 3.12 3.13 3.13t 3.14
#                                                              pypy3.11
#   ci/lock/TAG/dev.txt         the build and lint tools, with the test requirements
#                                                              3.10 3.11 3.12 3.13 (PY_GIL)
#   ci/lock/TAG/bench.txt       the benchmark's peers          the same, and 3.13t
#   ci/lock/TAG/moka-py-0.5.0.txt         the benchmark's peer moka-py 0.5.0     (the same)
#   ci/lock/TAG/moka-py-0.5.0-suite.txt   moka-py 0.5.0's own suite's test deps  (all five)
#   ci/lock/3.11/oldest.txt     the test requirements with the oldest redis-py and Django
#                               that pyproject.toml admits (ci/requirements-oldest.txt)
# The GIL interpreters are resolved for by version (--python-version), none needs to be
# installed; 3.13t by its interpreter (ci/python-ft.sh builds it once), whose wheel tags
# only uv can tell, with --only-binary :all: as everything is installed there. On 3.13t,
# bench.txt holds the peers that have a wheel there, each tried alone first; the others are
# named, with the reason, on its "# ft-status:" lines, which ci/bench.sh reports.
source "$(dirname "$0")/env.sh"
cd "$ROOT"
uv_args=("$@")

# compile SET TAG [uv flags...]: writes ci/lock/TAG/SET.txt (ci/lock/uv.txt for uv) from
# SET's inputs, its first line the digest of the inputs (lock_file checks it).
compile() {
    local set="$1" tag="$2" out inputs
    shift 2
    out="$LOCK/$tag/$set.txt"
    [ "$set" = uv ] && out="$LOCK/uv.txt"
    mkdir -p "$(dirname "$out")"
    read -ra inputs <<<"$(lock_inputs "$set")"
    log "${out#"$ROOT/"}"
    "$UV" pip compile -q --generate-hashes --custom-compile-command "bash ci/lock.sh" \
        "${uv_args[@]}" "$@" -o "$out" "${inputs[@]}"
    sed -i "1i # inputs: $(lock_digest "$set")" "$out"
}

# uv, from its lock when that is current; otherwise (the first time, or a new version in
# ci/requirements-uv.txt) the version named there, to write the lock with.
if lock_file uv "" >/dev/null 2>&1; then
    need_uv
else
    log "installing $(grep -E '^uv==' ci/requirements-uv.txt) (no lock yet) to lock it"
    need_venv "$PY_GIL"
    rm -rf "$VENVS/uv"
    "$PY_GIL" -m venv "$VENVS/uv"
    "$VENVS/uv/bin/python" -m pip install -q --disable-pip-version-check \
        -r ci/requirements-uv.txt >&2
    UV="$VENVS/uv/bin/uv"
    export UV_PYTHON_DOWNLOADS=never
fi
compile uv "" --python-version 3.10
need_uv

for tag in "${TARGETS[@]}"; do
    [ "$tag" = 3.13t ] && continue
    sets=(test dev bench moka-py-0.5.0 moka-py-0.5.0-suite)
    # 3.14 runs the suite (ci/test.sh) and gets a wheel (ci/wheels.sh); the tools, the
    # benchmark and moka-py 0.5.0's suite run on the older interpreters.
    [ "$tag" = 3.14 ] && sets=(test)
    for set in "${sets[@]}"; do
        compile "$set" "$tag" --python-version "$tag"
    done
done
compile oldest 3.11 --python-version 3.11

# PyPy 3.11: its interpreter (ci/python-pypy.sh fetches it once), the suite only.
target_python pypy3.11 || { echo "ci/lock.sh needs PyPy 3.11" >&2; exit 1; }
compile test pypy3.11 --python "$TARGET_PY"

# 3.13t: its interpreter, and wheels only.
target_python 3.13t || { echo "ci/lock.sh needs CPython 3.13t" >&2; exit 1; }
ft=(--python "$TARGET_PY" --only-binary :all:)
compile test 3.13t "${ft[@]}"
compile moka-py-0.5.0-suite 3.13t "${ft[@]}"

# why LOG: the reason, in a few words, that uv's message in LOG gives.
why() {
    if grep -qiE 'no (matching )?(wheels?|distributions?)|ABI tag|only-binary|--no-build' "$1"; then
        echo "no wheel for 3.13t"
    else
        echo "uv cannot resolve it for 3.13t: $(grep -m1 -iE 'because|error' "$1" | sed 's/^ *//')"
    fi
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo zstandard >"$tmp/no-zstandard.txt"
peers=() status=() excludes=()
while read -r name _; do
    if echo "$name" | "$UV" pip compile -q "${ft[@]}" - >/dev/null 2>"$tmp/log"; then
        peers+=("$name")
    elif [ "$name" = theine ] && echo theine | "$UV" pip compile -q "${ft[@]}" \
        --excludes "$tmp/no-zstandard.txt" - >/dev/null 2>/dev/null; then
        # theine's cache imports theine-core and typing-extensions only.
        peers+=(theine)
        excludes=(--excludes "$tmp/no-zstandard.txt")
        status+=("theine	installed without its dependency zstandard, which has no wheel for 3.13t and which theine's cache does not import")
    else
        status+=("$name	$(why "$tmp/log")")
    fi
done < <(grep -vE '^[[:space:]]*(#|$)|gil-only' ci/requirements-bench.txt)
out="$LOCK/3.13t/bench.txt"
log "${out#"$ROOT/"} (${peers[*]})"
printf '%s\n' "${peers[@]}" | "$UV" pip compile -q --generate-hashes \
    --custom-compile-command "bash ci/lock.sh" "${uv_args[@]}" "${ft[@]}" "${excludes[@]}" \
    -o "$out" -
out_peer="$LOCK/3.13t/moka-py-0.5.0.txt"
if "$UV" pip compile -q "${ft[@]}" ci/requirements-moka-py-0.5.0.txt >/dev/null 2>"$tmp/log"; then
    compile moka-py-0.5.0 3.13t "${ft[@]}"
else
    rm -f "$out_peer"
    status+=("$(grep -E '^moka-py==' ci/requirements-moka-py-0.5.0.txt)	$(why "$tmp/log")")
fi
{
    echo "# inputs: $(lock_digest bench)"
    for s in "${status[@]}"; do echo "# ft-status: $s"; done
    cat "$out"
} >"$tmp/bench.txt"
mv "$tmp/bench.txt" "$out"
for s in "${status[@]}"; do log "3.13t: $s"; done
log "done: review git diff ci/lock, run the suite, commit"
