#!/usr/bin/env bash
# Builds the files a user installs, into dist/:
#   - a release wheel for every CPython of TARGETS (ci/env.sh: 3.10, 3.11, 3.12, 3.13,
#     free-threaded 3.13t and 3.14) and for PyPy 3.11 (ci/python-pypy.sh), linked by zig (`maturin build --zig`, ziglang from PyPI) against
#     glibc 2.17's symbols and tagged manylinux2014 (manylinux_2_17: RHEL/Alma 8, Amazon
#     Linux 2, Ubuntu 20.04, Debian 11 and newer), which maturin's auditwheel check and then
#     `auditwheel show` (PyPI) must both confirm;
#   - the sdist.
# Then installs each wheel into a fresh venv whose PATH has no cargo or rustc and runs a
# smoke test there (import, get/set, @cached, the classifiers, and on 3.13t that the GIL
# stays disabled after import); and installs the sdist with pip into a fresh venv (with
# Rust, as a user without a wheel would) and runs the same smoke test.
# Last, a compile check for free-threaded 3.14t, of which no interpreter can be had here
# (Debian builds none; the mirror lacks the source of sid's python3.14): the extension is
# compiled against a PyO3 configuration that describes one (PYO3_CONFIG_FILE), so the code
# under cfg(all(Py_3_14, Py_GIL_DISABLED)) compiles; nothing is run or shipped.
# The Linux aarch64 wheels: ci/wheels-aarch64.sh.
# An interpreter that is not found is reported by name and skipped; under CI (CI=true)
# that fails the run.
source "$(dirname "$0")/env.sh"
MANYLINUX=manylinux_2_17
dev_venv
cd "$ROOT"
rm -f dist/moka_py-*
mkdir -p dist

pythons=()
for v in "${TARGETS[@]}" pypy3.11; do
    target_python "$v" && pythons+=("$TARGET_PY")
done

# The PATH without the directories that hold cargo or rustc.
path_without_rust() {
    local d out="" dirs
    IFS=: read -ra dirs <<<"$PATH"
    for d in "${dirs[@]}"; do
        { [ -x "$d/cargo" ] || [ -x "$d/rustc" ]; } && continue
        out="${out:+$out:}$d"
    done
    echo "$out"
}
NO_RUST_PATH="$(path_without_rust)"


target_versions=$(printf '%s\n' "${TARGETS[@]%t}" | sort -u | paste -sd,)

# smoke PYTHON: the smoke test (ci/wheel_smoke.py), in the venv of PYTHON, from outside the
# source tree.
smoke() {
    (cd "$(dirname "$1")" && "$1" -W error "$ROOT/ci/wheel_smoke.py" "$target_versions")
}

# The zig-linked builds keep their own target directory: zig's linker and C compiler
# (for mimalloc) would otherwise invalidate the native build that ci/test.sh reuses.
# maturin runs `python3 -m ziglang`: the dev venv's python3, which has ziglang.
export CARGO_TARGET_DIR="$ROOT/target/zig"

for py in "${pythons[@]}"; do
    log "maturin build --release --zig --compatibility manylinux2014 for $py"
    out=$(mktemp -d)
    PATH="$VENVS/dev/bin:$PATH" "$VENVS/dev/bin/maturin" build --release -q -i "$py" --zig \
        --compatibility manylinux2014 --auditwheel check -o "$out" >&2
    wheel=$(ls "$out"/*.whl)
    mv "$wheel" dist/ && rmdir "$out"
    wheel="dist/$(basename "$wheel")"

    audit_wheel "$wheel" "${MANYLINUX}_x86_64"

    log "smoke test of $(basename "$wheel") in a fresh venv without Rust"
    venv=$(mktemp -d)
    (
        export PATH="$NO_RUST_PATH"
        unset PYTHON_GIL
        if command -v cargo >/dev/null || command -v rustc >/dev/null; then
            echo "cargo or rustc is still on PATH" >&2
            exit 1
        fi
        "$UV" venv -q --allow-existing --python "$py" "$venv" >&2
        "$UV" pip install -q --python "$venv/bin/python" --no-index --only-binary :all: \
            "$wheel" >&2
        smoke "$venv/bin/python"
    )
    rm -rf "$venv"
done

log "maturin sdist"
"$VENVS/dev/bin/maturin" sdist -o dist >&2
sdist=$(ls dist/moka_py-*.tar.gz)
contents=$(tar tzf "$sdist" | cut -d/ -f2-)
for f in Cargo.toml Cargo.lock build.rs src/lib.rs pyproject.toml python/moka_py/__init__.py \
         python/moka_py/py.typed; do
    grep -qxF "$f" <<<"$contents" || { echo "$sdist lacks $f" >&2; exit 1; }
done

# pip builds the sdist as a user without a wheel would (`pip install dist/*.tar.gz`, as the
# README says), in a venv of the interpreter's own venv module and its bundled pip: maturin
# from PyPI (build isolation) and cargo. maturin's version is the dev lock's (PIP_CONSTRAINT,
# which reaches pip's build environment); not its hashes, which pip refuses for a build
# requirement given as a range. The Rust target directory of ci/test.sh's builds is shared,
# so only this crate and PyO3 are compiled again.
py=$("$PY_GIL" -c 'import sys; print(sys.executable)')
log "pip install $(basename "$sdist") into a fresh venv ($py), and the smoke test"
venv=$(mktemp -d)
need_venv "$py"
"$py" -m venv "$venv"
grep -E '^maturin==' "$(lock_file dev "$(python_tag "$py")")" | cut -d' ' -f1 >"$venv/build.txt"
PIP_CONSTRAINT="$venv/build.txt" CARGO_TARGET_DIR="$ROOT/target" "$venv/bin/python" -m pip \
    install -q --disable-pip-version-check "$sdist" >&2
smoke "$venv/bin/python"
rm -rf "$venv"

log "compile check for free-threaded CPython 3.14t (PYO3_CONFIG_FILE; no interpreter)"
cfg="$ROOT/target/check-3.14t/pyo3-3.14t.txt"
ft_pyo3_config 3.14 "$cfg"
PYO3_CONFIG_FILE="$cfg" CARGO_TARGET_DIR="$ROOT/target/check-3.14t" \
    cargo build --release --lib -q --features pyo3/extension-module
ls -l dist/
report_missing
