#!/usr/bin/env bash
# Fetch (once) and print the path of a rustc that compiles for Linux aarch64 as well as
# x86_64: Debian bookworm's rustc-web (the Rust that Debian keeps current for its browsers,
# in bookworm-security) with its standard library for amd64 and for arm64, of the identical
# version, and the source of that standard library (rust-web-src), from which cargo's
# -Zbuild-std compiles it for the targets that Debian ships no std for (musl, macOS,
# Windows: ci/wheels-musl.sh, ci/wheels-macos-windows.sh), all unpacked with `dpkg -x`
# through the private APT configuration of ci/debs.sh (not installed: rustc-web would put
# a second rustc into /usr/bin). Into
#   ${XDG_CACHE_HOME:-$HOME/.cache}/moka-py/rust-web/
# reused when present, whatever version it holds; the version is the newest that the index
# names when the cache is made. Prints the path of a `rustc` wrapper (for RUSTC=; cargo is
# the usual one); progress goes to stderr. Exits 3 when it cannot be had here (no apt-get,
# no index), 1 on another failure.
source "$(dirname "$0")/env.sh"
source "$ROOT/ci/debs.sh"

dir="$CACHE/rust-web"
rustc="$dir/rustc"
has_std() { [ -d "$dir/root/usr/lib/rustlib/$1/lib" ]; }
# rust-web-src's rustlib/src/rust is a link to /usr/src/rustc-X.Y.Z, which is pointed into
# the root instead.
std_src="$dir/root/usr/lib/rustlib/src/rust"
has_src() { [ -f "$std_src/library/Cargo.lock" ]; }
link_src() {
    local src
    src=$(find "$dir/root/usr/src" -maxdepth 1 -name 'rustc-*' | head -n1)
    [ -n "$src" ] || { echo "rust-web-src left no usr/src/rustc-* in $dir/root" >&2; return 1; }
    ln -sfn "$src" "$std_src"
    has_src || { echo "no standard library source in $src" >&2; return 1; }
}
if [ -x "$rustc" ] && "$rustc" -vV >/dev/null 2>&1 && has_std x86_64-unknown-linux-gnu \
    && has_std aarch64-unknown-linux-gnu; then
    if ! has_src; then
        # A cache made before the source was part of it: the source of its own version.
        debs_update || exit 3
        version=$(sed -n 's/^rustc-web=//p' "$dir/versions.txt")
        log "rust-web-src $version into $dir"
        debs_unpack "$dir/root" "rust-web-src=$version" && link_src || exit 1
        echo "rust-web-src=$version" >>"$dir/versions.txt"
    fi
    echo "$rustc"
    exit 0
fi

debs_update || exit 3
bookworm='bookworm(-security|-updates)?'
version=$(debs_version rustc-web "$bookworm")
[ -n "$version" ] || { echo "Debian bookworm's index has no rustc-web" >&2; exit 3; }
# libstd-rust-web-X.Y holds the compiler's own libraries; it names the LLVM it links.
major_minor=$(sed -E 's/^([0-9]+\.[0-9]+).*/\1/' <<<"${version#*:}")
llvm=$(APT_CONFIG="$DEBS_CONF" apt-cache show "libstd-rust-web-$major_minor=$version" \
    | sed -n 's/^Depends: //p' | head -n1 | tr ',' '\n' | grep -oE 'libllvm[0-9]+' | head -n1)
[ -n "$llvm" ] || { echo "libstd-rust-web-$major_minor $version names no libllvm" >&2; exit 1; }
pkgs=("rustc-web=$version" "libstd-rust-web-$major_minor=$version" "libstd-rust-web-dev=$version"
    "libstd-rust-web-$major_minor:arm64=$version" "libstd-rust-web-dev:arm64=$version"
    "rust-web-src=$version" "$(debs_pin "$bookworm" "$llvm")") || exit 1
log "rustc-web $version (+ the arm64 standard library, $llvm) into $dir"
rm -rf "$dir"
debs_unpack "$dir/root" "${pkgs[@]}" && link_src || exit 1
cat >"$rustc" <<EOF
#!/bin/sh
# Debian's rustc-web, unpacked by ci/rust-web.sh: its libraries are found here.
export LD_LIBRARY_PATH="$dir/root/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$dir/root/usr/bin/rustc" "\$@"
EOF
chmod +x "$rustc"
printf '%s\n' "${pkgs[@]}" >"$dir/versions.txt"
"$rustc" -vV >&2 || { rm -rf "$dir"; exit 1; }
has_std aarch64-unknown-linux-gnu || { echo "no aarch64 standard library in $dir" >&2; exit 1; }
echo "$rustc"
