#!/usr/bin/env bash
# A compile check for macOS and Windows: builds their wheels into dist/untested/ and checks
# each one with ci/wheel_inspect.py (the architecture, the minimum macOS version its tag
# promises, the exported PyInit__moka_py, and that it links only the system's libraries and,
# on Windows, its own python3X.dll). None of them is run: no macOS or Windows interpreter
# can be had here. So they are not shipped, and the README does not call them supported.
#   - macOS arm64 (macosx_11_0_arm64) and x86_64 (macosx_10_12_x86_64), linked by zig
#     (`maturin build --zig`, with the macOS SDK stubs zig bundles);
#   - Windows x86_64 (win_amd64), linked by Debian's mingw-w64 (gcc-mingw-w64-x86-64-posix;
#     zig's route fails on the dotted module name in maturin 1.16), against an import library
#     of python3X.dll that PyO3 writes (pyo3/generate-import-lib);
# all compiled by Debian's rustc-web (ci/rust-web.sh), whose standard library for these
# targets cargo builds from its source (-Zbuild-std: Debian ships none for them).
#   bash ci/wheels-macos-windows.sh              CPython 3.13's three wheels
#   bash ci/wheels-macos-windows.sh all          a wheel of every GIL CPython of TARGETS each
#   bash ci/wheels-macos-windows.sh 3.10,3.14    those versions' wheels
# (The free-threaded builds are left out: on Windows they link python3Xt.dll, which PyO3's
# import library generator does not write, and macOS has no other code path for them.)
source "$(dirname "$0")/env.sh"
versions="${1:-3.13}"
if [ "$versions" = all ]; then
    versions=$(printf '%s\n' "${TARGETS[@]}" | grep -v 't$' | paste -sd,)
fi
IFS=, read -ra versions <<<"$versions"
dev_venv
apt_install gcc-mingw-w64-x86-64-posix llvm
cd "$ROOT"
out=dist/untested
rm -rf "$out"

need_rust_web "the macOS and Windows wheels"
# -Zbuild-std (ci/wheels-musl.sh). Debian's rustc-web has no rust-objcopy, which cargo's
# default stripping of a release build runs for Mach-O files: maturin strips nothing either.
export RUSTC_BOOTSTRAP=1 CARGO_UNSTABLE_BUILD_STD=std,panic_unwind CARGO_PROFILE_RELEASE_STRIP=false

for v in "${versions[@]}"; do
    for target in aarch64-apple-darwin x86_64-apple-darwin x86_64-pc-windows-gnu; do
        log "maturin build --release --target $target for CPython $v (compile check)"
        args=(--zig)
        [ "$target" = x86_64-pc-windows-gnu ] && args=(--features pyo3/generate-import-lib)
        CARGO_TARGET_DIR="$ROOT/target/$target" build_cross_wheel "$out" "$target" "$v" "${args[@]}"
        "$VENVS/dev/bin/python" "$ROOT/ci/wheel_inspect.py" "$WHEEL"
    done
done
ls -l "$out" >&2
