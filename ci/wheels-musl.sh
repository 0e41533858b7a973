#!/usr/bin/env bash
# Builds the musllinux wheels (Alpine Linux and other musl distributions) into dist/ (beside
# ci/wheels.sh's), checks them, and tests one on this machine:
#   - a musllinux_1_2_x86_64 wheel (musl 1.2 or newer: Alpine 3.13 and later) for every
#     CPython of TARGETS, compiled by Debian's rustc-web (ci/rust-web.sh), whose standard
#     library for musl cargo builds from its source (-Zbuild-std: Debian ships none for
#     musl), and linked by zig (`maturin build --zig`); each one checked by
#     ci/wheel_inspect.py (an x86_64 ELF file that links musl's libc only, exports
#     PyInit__moka_py and has no initial-exec thread-local, which musl refuses at import);
#   - the cp313 wheel: the smoke test (ci/wheel_smoke.py), then the whole test suite, on a
#     CPython 3.13 linked against musl (ci/python-musl.sh, built from source once), in a
#     venv with the locked test requirements. The tests of moka_py.redis start this
#     machine's redis-server. The other wheels are checked only: no musl interpreter of
#     their versions is built here.
#   bash ci/wheels-musl.sh                 all of it
#   bash ci/wheels-musl.sh --tested-only   only the cp313 wheel, its smoke test and the suite
#   bash ci/wheels-musl.sh --tested-only tests/test_moka_basic.py   pytest with those
#                                          arguments instead of the whole suite
source "$(dirname "$0")/env.sh"
TARGET=x86_64-unknown-linux-musl
MUSLLINUX=musllinux_1_2
TESTED=3.13
versions=("${TARGETS[@]}")
case "${1:-}" in
    --tested-only) versions=("$TESTED"); shift ;;
    -h | --help) echo "usage: $0 [--tested-only] [pytest arguments...]" >&2; exit 2 ;;
esac
dev_venv
apt_install llvm
cd "$ROOT"
mkdir -p dist
rm -f dist/moka_py-*-"$MUSLLINUX"_x86_64.whl

need_rust_web "the musl wheels"
# cargo's -Zbuild-std (RUSTC_BOOTSTRAP: on a stable compiler), with the unwinding panic
# runtime that the release profile asks for; the target directory keeps the std it built.
export RUSTC_BOOTSTRAP=1 CARGO_UNSTABLE_BUILD_STD=std,panic_unwind
export CARGO_TARGET_DIR="$ROOT/target/musl"
target_versions=$(printf '%s\n' "${TARGETS[@]%t}" | sort -u | paste -sd,)

for v in "${versions[@]}"; do
    log "maturin build --release --target $TARGET --zig --compatibility $MUSLLINUX for CPython $v"
    build_cross_wheel dist "$TARGET" "$v" --zig --compatibility "$MUSLLINUX"
    "$VENVS/dev/bin/python" "$ROOT/ci/wheel_inspect.py" "$WHEEL"
done

py=$(bash "$ROOT/ci/python-musl.sh")
venv=$(make_venv "musl-$TESTED" "$py")
install_into "$venv" dist/moka_py-*-cp"${TESTED/./}"-cp"${TESTED/./}"-"$MUSLLINUX"_x86_64.whl
log "smoke test of the cp${TESTED/./} musl wheel ($("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])'), musl)"
(cd "$venv" && "$venv/bin/python" -W error "$ROOT/ci/wheel_smoke.py" "$target_versions")
need_redis
log "pytest on the musl CPython $TESTED (the cp${TESTED/./} musllinux wheel)"
"$venv/bin/python" -m pytest -n 2 -p no:cacheprovider "${@:-tests}"
