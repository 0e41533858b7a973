#!/usr/bin/env bash
# Builds the files a user installs without a Rust toolchain, into dist/:
#   - a release wheel for every interpreter present here: CPython 3.11 (python3 on PATH,
#     or PY_GIL), 3.13 and free-threaded 3.13t (both built once by ci/python-ft.sh),
#     tagged manylinux_2_34 (the newest glibc symbol the extension needs is 2.34; Debian
#     bookworm has 2.36), which maturin's auditwheel check and then `auditwheel show`
#     (PyPI) must both confirm;
#   - the sdist.
# Then installs each wheel into a fresh venv whose PATH has no cargo or rustc and runs a
# smoke test there (import, get/set, @cached, the classifiers, and on 3.13t that the GIL
# stays disabled after import).
source "$(dirname "$0")/env.sh"
MANYLINUX=manylinux_2_34
dev_venv
cd "$ROOT"
rm -f dist/moka_py-*
mkdir -p dist

pythons=(
    "$("$PY_GIL" -c 'import sys; print(sys.executable)')"
    "$(bash ci/python-ft.sh gil)"
    "$(bash ci/python-ft.sh ft)"
)

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

SMOKE='
import sys
from importlib.metadata import metadata

free_threaded = "t" in getattr(sys, "abiflags", "")
import moka_py
from moka_py import Moka, cached

c: Moka[str, int] = Moka(10)
c.set("k", 1)
assert c.get("k") == 1 and c.get("absent") is None

calls = []

@cached(maxsize=8)
def square(x: int) -> int:
    calls.append(x)
    return x * x

assert square(3) == 9 and square(3) == 9 and calls == [3]

# Every interpreter this script builds for has its classifier, and no other version does.
classifiers = metadata("moka-py").get_all("Classifier")
versions = {c.rsplit(" :: ", 1)[1] for c in classifiers
            if c.startswith("Programming Language :: Python :: 3.")}
assert "%d.%d" % sys.version_info[:2] in versions, versions
assert versions == set(sys.argv[1].split(",")), (versions, sys.argv[1])
if free_threaded:
    assert not sys._is_gil_enabled(), "importing moka_py enabled the GIL"
print(sys.version.split()[0], "free-threaded" if free_threaded else "GIL", "ok")
'

built_versions=$(for py in "${pythons[@]}"; do "$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; done | sort -u | paste -sd,)

for py in "${pythons[@]}"; do
    log "maturin build --release --compatibility $MANYLINUX for $py"
    out=$(mktemp -d)
    "$VENVS/dev/bin/maturin" build --release -q -i "$py" --compatibility "$MANYLINUX" \
        --auditwheel check -o "$out" >&2
    wheel=$(ls "$out"/*.whl)
    mv "$wheel" dist/ && rmdir "$out"
    wheel="dist/$(basename "$wheel")"

    # auditwheel (PyPI) reads the ELF file's symbol versions and libraries itself.
    shown=$("$VENVS/dev/bin/auditwheel" show "$wheel" | tr '\n' ' ')
    tag=$(grep -oE 'platform tag: *"[^"]+"' <<<"$shown" | grep -oE '"[^"]+"' | tr -d '"')
    name_tag=$(basename "$wheel" .whl | rev | cut -d- -f1 | rev)
    echo "$(basename "$wheel"): auditwheel show says $tag" >&2
    if [ "$tag" != "$name_tag" ] || [ "$tag" != "${MANYLINUX}_x86_64" ]; then
        echo "auditwheel show: $shown" >&2
        echo "the wheel is tagged $name_tag, auditwheel finds $tag" >&2
        exit 1
    fi

    log "smoke test of $(basename "$wheel") in a fresh venv without Rust"
    need_venv "$py"
    venv=$(mktemp -d)
    (
        export PATH="$NO_RUST_PATH"
        unset PYTHON_GIL
        if command -v cargo >/dev/null || command -v rustc >/dev/null; then
            echo "cargo or rustc is still on PATH" >&2
            exit 1
        fi
        "$py" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --no-index --only-binary :all: "$wheel" >&2
        cd "$venv" && "$venv/bin/python" -W error -c "$SMOKE" "$built_versions"
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
ls -l dist/
