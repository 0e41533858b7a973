#!/usr/bin/env bash
# Builds the Linux aarch64 wheels into dist/ (beside ci/wheels.sh's), audits them, and tests
# them on this x86_64 machine:
#   - a manylinux2014 (manylinux_2_17_aarch64: glibc 2.17 or newer, as the x86_64 wheels)
#     wheel for every CPython of TARGETS, cross-compiled by Debian's rustc-web with its arm64
#     standard library (ci/rust-web.sh) and linked by zig (`maturin build --zig`); maturin's
#     audit and `auditwheel show` must both say manylinux_2_17_aarch64;
#   - the cp311 wheel: the smoke test (ci/wheel_smoke.py), then the whole test suite, on
#     Debian bookworm's arm64 CPython 3.11 under qemu-user (Debian's qemu-user-static), both
#     unpacked into ${XDG_CACHE_HOME:-$HOME/.cache}/moka-py/arm64 through the private APT
#     configuration of ci/debs.sh (nothing installed). The tests of moka_py.redis start this
#     machine's x86_64 redis-server, over loopback. The other wheels are built and audited
#     only: Debian has no arm64 interpreter of their versions that runs here.
#   bash ci/wheels-aarch64.sh              all of it
#   bash ci/wheels-aarch64.sh --no-suite   the wheels and the cp311 smoke test, not the suite
#   bash ci/wheels-aarch64.sh --suite-only the smoke test and the suite on the cp311 wheel that
#                                          an earlier run left in dist/ (no build)
#   bash ci/wheels-aarch64.sh tests/test_redis_tls.py   the wheels, the smoke test, and pytest
#                                          with those arguments instead of the whole suite
# The suite starts sys.executable (subprocesses, pytest-xdist's workers): an arm64 binary,
# which the kernel hands to qemu through a binfmt_misc registration that this script makes
# (as root, or through sudo) and removes when it exits, failed or not. QEMU_STACK_SIZE gives
# the guest a 64 MiB stack: test_hostile's 100,000-deep tuple key recurses in CPython itself
# (as on a real arm64 machine, whose main thread has 8 MiB and the same recursion; qemu's
# own frames come on top). An interpreter that is not found is reported by name and
# skipped; under CI (CI=true) that fails the run.
source "$(dirname "$0")/env.sh"
source "$ROOT/ci/debs.sh"
TARGET=aarch64-unknown-linux-gnu
MANYLINUX=manylinux_2_17_aarch64
suite=1
build=1
case "${1:-}" in
    --no-suite) suite=; shift ;;
    --suite-only) build=; shift ;;
    -h | --help) echo "usage: $0 [--no-suite | --suite-only] [pytest arguments...]" >&2; exit 2 ;;
esac
dev_venv
cd "$ROOT"
mkdir -p dist
if [ -z "$build" ] && ! ls dist/moka_py-*-cp311-cp311-*_aarch64.whl >/dev/null 2>&1; then
    echo "--suite-only: no cp311 aarch64 wheel in dist/ (run without it first)" >&2
    exit 1
fi
[ -z "$build" ] || rm -f dist/moka_py-*_aarch64.whl

need_rust_web "the aarch64 wheels"
export CARGO_TARGET_DIR="$ROOT/target/aarch64"
target_versions=$(printf '%s\n' "${TARGETS[@]%t}" | sort -u | paste -sd,)

for v in "${TARGETS[@]}"; do
    [ -n "$build" ] || break
    log "maturin build --release --target $TARGET --zig --compatibility manylinux2014 for CPython $v"
    build_cross_wheel dist "$TARGET" "$v" --zig --compatibility manylinux2014 --auditwheel check
    audit_wheel "$WHEEL" "$MANYLINUX"
done

# The arm64 CPython 3.11 and qemu-aarch64, unpacked once (reused whatever version they are).
arm="$CACHE/arm64"
py="$arm/root/usr/bin/python3.11"
qemu="$arm/qemu/usr/bin/qemu-aarch64-static"
export QEMU_LD_PREFIX="$arm/root" QEMU_STACK_SIZE=67108864
if ! { [ -x "$qemu" ] && "$qemu" "$py" -c 'import ssl, sqlite3, ctypes, zlib, test.test_functools' \
    2>/dev/null; }; then
    debs_update || { echo "no arm64 CPython here (Debian's index cannot be read)" >&2; exit 1; }
    bookworm='bookworm(-security|-updates)?'
    arm64=()
    for p in python3.11 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 \
        libgcc-s1 libstdc++6 libbz2-1.0 libcrypt1 libdb5.3 libexpat1 libffi8 liblzma5 \
        libncursesw6 libtinfo6 libreadline8 libsqlite3-0 libssl3 libuuid1 zlib1g libnsl2 \
        libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1; do
        arm64+=("$(debs_pin "$bookworm" "$p:arm64")") || exit 1
    done
    # CPython's own tests of functools (tests/test_functools_lru.py runs them on moka_py).
    arm64+=("$(debs_pin "$bookworm" libpython3.11-testsuite)") || exit 1
    arm64_qemu=$(debs_pin "$bookworm" qemu-user-static) || exit 1
    log "Debian's arm64 CPython 3.11 and $arm64_qemu into $arm"
    rm -rf "$arm"
    debs_unpack "$arm/root" "${arm64[@]}"
    debs_unpack "$arm/qemu" "$arm64_qemu"
    printf '%s\n' "${arm64[@]}" "$arm64_qemu" >"$arm/versions.txt"
    "$qemu" "$py" -c 'import platform, ssl, sqlite3, ctypes, zlib; print(platform.machine())' >&2
fi

# A venv of the arm64 CPython (its own venv module, under qemu), with the test requirements
# (ci/lock/3.11/test.txt: pure-Python wheels, hashes checked) installed for the target by uv
# into its site-packages, and the stdlib and those packages compiled to bytecode once
# (Debian's packages ship none, and compiling what it imports, under qemu, in every process
# the tests start, took longer than some of their deadlines). Made again when the lock changes.
need_uv
venv="$arm/venv"
sitepkgs="$venv/lib/python3.11/site-packages"
lock=$(lock_file test 3.11)
for_arm64=(--python "$PY_GIL" --python-platform aarch64-manylinux_2_17 --python-version 3.11
    --only-binary :all: --target "$sitepkgs")
if ! cmp -s "$lock" "$venv/lock.txt"; then
    log "a venv of the arm64 CPython 3.11 with the test requirements, compiled ($venv)"
    rm -rf "$venv"
    "$qemu" "$py" -m venv --without-pip "$venv"
    "$UV" pip install -q "${for_arm64[@]}" --require-hashes -r "$lock" >&2
    "$qemu" "$py" -m compileall -q -x '/(test|tests|idlelib|lib2to3|tkinter|turtledemo)/' \
        "$arm/root/usr/lib/python3.11" "$sitepkgs" >&2
    cp "$lock" "$venv/lock.txt"
fi
# The cp311 wheel, in place of the last run's, then the smoke test from outside the tree.
rm -rf "$sitepkgs"/moka_py "$sitepkgs"/moka_py-*.dist-info
"$UV" pip install -q "${for_arm64[@]}" --no-deps --no-index \
    dist/moka_py-*-cp311-cp311-*_aarch64.whl >&2
"$qemu" "$py" -m compileall -q "$sitepkgs/moka_py" >&2
log "smoke test of the cp311 aarch64 wheel ($("$qemu" "$py" -c 'import sys; print(sys.version.split()[0])') under qemu)"
(cd "$arm" && "$qemu" "$venv/bin/python" -W error "$ROOT/ci/wheel_smoke.py" "$target_versions")
[ -n "$suite" ] || exit 0
need_redis

# binfmt_misc: a registration of our own (its name carries this process's id, so that two
# runs do not remove each other's), removed on exit; the file system mounted here only if it
# was not, and unmounted again when no other registration is left in it.
binfmt=/proc/sys/fs/binfmt_misc
entry="moka-py-aarch64-$$"
mounted=
registered=
unregister() {
    if [ -n "$registered" ] && [ -e "$binfmt/$entry" ]; then
        echo -1 | as_root tee "$binfmt/$entry" >/dev/null || true
    fi
    if [ -n "$mounted" ] && [ -z "$(ls "$binfmt" | grep -vxE 'register|status')" ]; then
        as_root umount "$binfmt" || true
    fi
}
trap unregister EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ ! -e "$binfmt/register" ]; then
    as_root mount -t binfmt_misc binfmt_misc "$binfmt"
    mounted=1
fi
# An aarch64 ELF executable: the magic of its header, and which bytes of it to compare. F:
# the kernel opens qemu now, so the registration works in any mount namespace.
registered=1
printf '%s' ":$entry:M::\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:$qemu:F" \
    | as_root tee "$binfmt/register" >/dev/null
"$venv/bin/python" -c 'import platform; assert platform.machine() == "aarch64"'

log "pytest on arm64 CPython 3.11 under qemu (the cp311 aarch64 wheel)"
"$venv/bin/python" -m pytest -n 2 -p no:cacheprovider "${@:-tests}"
