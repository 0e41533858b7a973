# Sourced after ci/env.sh by the scripts that fetch Debian binary packages for another
# release or CPU than the machine's own (ci/python-314.sh, ci/wheels-aarch64.sh): a private
# APT configuration, and packages unpacked with `dpkg -x` into a folder of the cache.
# Nothing is installed: /etc/apt, dpkg's database and its architectures are left as they are.
# shellcheck shell=bash
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/moka-py"
DEBS_DIR="$CACHE/apt"
DEBS_CONF="$DEBS_DIR/apt.conf"
DEBS_UPDATED=

# debian_mirror [security]: the URI of the Debian archive (or of its security archive) that
# the machine's own APT sources name, else deb.debian.org's.
debian_mirror() {
    local want='/debian/?$' fallback=http://deb.debian.org/debian uri
    if [ "${1:-}" = security ]; then
        want='/debian-security/?$'
        fallback=http://deb.debian.org/debian-security
    fi
    uri=$( { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
             grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}'; } \
        | grep -E "$want" | head -n1 || true)
    echo "${uri:-$fallback}"
}

# debs_update: writes the private configuration (bookworm and its security archive for amd64
# and arm64, sid for amd64) and reads the indexes, once per script run. Returns 1, saying
# why, where there is no apt-get or no index can be read: the caller skips what needs it.
debs_update() {
    [ -n "$DEBS_UPDATED" ] && return 0
    if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
        echo "no apt-get/dpkg-deb here: Debian's packages cannot be fetched" >&2
        return 1
    fi
    local mirror security
    mirror=$(debian_mirror)
    security=$(debian_mirror security)
    mkdir -p "$DEBS_DIR/lists/partial" "$DEBS_DIR/cache/archives/partial" "$DEBS_DIR/none.d" \
        "$DEBS_DIR/debs"
    : >"$DEBS_DIR/status"
    cat >"$DEBS_DIR/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Architectures: amd64 arm64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Architectures: amd64 arm64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $mirror
Suites: sid
Components: main
Architectures: amd64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # An empty dpkg status: apt-get download resolves nothing against the machine's packages.
    # Sandbox::User root: downloads go into the cache folder, which _apt may not write.
    cat >"$DEBS_CONF" <<EOF
Dir::Etc::SourceList "$DEBS_DIR/debian.sources";
Dir::Etc::SourceParts "$DEBS_DIR/none.d";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "$DEBS_DIR/none.d";
Dir::State::Lists "$DEBS_DIR/lists";
Dir::State::status "$DEBS_DIR/status";
Dir::Cache "$DEBS_DIR/cache";
APT::Architecture "amd64";
APT::Architectures { "amd64"; "arm64"; };
APT::Sandbox::User "$(id -un)";
EOF
    log "reading Debian's indexes (bookworm amd64+arm64, sid amd64) into $DEBS_DIR"
    if ! APT_CONFIG="$DEBS_CONF" apt-get update -qq >&2; then
        echo "the Debian indexes could not be read ($mirror, $security)" >&2
        return 1
    fi
    DEBS_UPDATED=1
}

# debs_version PKG[:ARCH] SUITES: the newest version of PKG that the indexes of SUITES (an
# extended regex of suite names: 'sid', 'bookworm(-security|-updates)?') hold; empty when none.
debs_version() {
    local v best=
    while read -r v; do
        if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best="$v"; fi
    done < <(APT_CONFIG="$DEBS_CONF" apt-cache madison "$1" 2>/dev/null \
        | awk -F' [|] ' -v s="^($2)/" '{ split($3, u, " "); if (u[2] ~ s) print $2 }')
    echo "$best"
}

# debs_pin SUITES PKG[:ARCH]...: prints PKG[:ARCH]=VERSION for each, VERSION read once from
# the index (debs_version); fails, naming the package, when a suite has none.
debs_pin() {
    local suites="$1" p v
    shift
    for p in "$@"; do
        v=$(debs_version "$p" "$suites")
        if [ -z "$v" ]; then
            echo "$p: not in Debian's $suites index" >&2
            return 1
        fi
        echo "$p=$v"
    done
}

# debs_unpack ROOT PKG[:ARCH]=VERSION...: downloads those exact packages (into
# $DEBS_DIR/debs) and unpacks each into ROOT with dpkg -x; the unpacked ROOT is what is
# cached, the package files are removed.
debs_unpack() {
    local root="$1" p name arch ver deb
    shift
    mkdir -p "$root"
    (cd "$DEBS_DIR/debs" && APT_CONFIG="$DEBS_CONF" apt-get download -qq "$@" >&2) || return 1
    for p in "$@"; do
        name=${p%%=*}
        arch=amd64
        case "$name" in *:*) arch=${name#*:}; name=${name%%:*} ;; esac
        # apt names the file NAME_VERSION_ARCH.deb, the epoch's colon written %3a.
        ver=${p#*=}
        ver=${ver/:/%3a}
        deb=
        for deb in "$DEBS_DIR/debs/${name}_${ver}_$arch.deb" "$DEBS_DIR/debs/${name}_${ver}_all.deb"; do
            [ -f "$deb" ] && break
        done
        [ -f "$deb" ] || { echo "apt-get download left no file for $p" >&2; return 1; }
        dpkg -x "$deb" "$root"
        rm -f "$deb"
    done
}

# debs_sid_root PREFIX EXECUTABLE "LIB..." PKG=VERSION...: a private root for a binary of
# Debian sid on this machine: the packages PKG=VERSION, with sid's current versions of the
# C library and of the libraries LIB (package names), unpacked into PREFIX/root (anything
# there before is removed); then EXECUTABLE (a path under PREFIX/root) gets sid's loader and
# that root's library directory as its DT_RPATH (--force-rpath, not RUNPATH: the extension
# modules it loads later find their libraries through it too), set by bookworm's patchelf,
# unpacked into PREFIX/tools. The exact versions go to PREFIX/versions.txt. Returns 3 when
# the index lacks a package, 1 on another failure.
debs_sid_root() {
    local prefix="$1" exe="$2" lib_names="$3" libs patchelf lib
    shift 3
    # shellcheck disable=SC2086 # $lib_names: one package a word
    libs=$(debs_pin sid libc6 $lib_names) || return 3
    patchelf=$(debs_pin 'bookworm(-security|-updates)?' patchelf) || return 3
    rm -rf "$prefix"
    # shellcheck disable=SC2086 # $libs: one PKG=VERSION a word
    debs_unpack "$prefix/root" "$@" $libs || return 1
    debs_unpack "$prefix/tools" "$patchelf" || return 1
    lib="$prefix/root/usr/lib/x86_64-linux-gnu"
    "$prefix/tools/usr/bin/patchelf" --set-interpreter "$lib/ld-linux-x86-64.so.2" \
        --force-rpath --set-rpath "$lib" "$exe"
    printf '%s\n' "$@" $libs "$patchelf" >"$prefix/versions.txt"
}
