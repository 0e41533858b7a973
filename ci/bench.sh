#!/usr/bin/env bash
# Builds moka_py in release mode, installs the peers in their own virtual
# environments, runs every case of the benchmark side by side, prints the
# Markdown tables and writes them with the charts to bench-out/.
#   bash ci/bench.sh [--quick] [--out DIR]
#       [--only latency|scaling|scaling_gil|hit_ratio|memory|tier]
# Environments (under .venvs/): bench (GIL: moka_py, the peers, matplotlib),
# bench-moka-py-0.5.0 (GIL), bench-ft (free-threaded 3.13t: moka_py and each peer
# that installs there from a wheel). The tier family (moka_py.redis against Redis and
# its peers) runs in bench alone, on redis-server servers of its own.
source "$(dirname "$0")/env.sh"
dev_venv
req="$ROOT/ci/requirements-bench.txt"

# The families asked for: all of them unless --only says otherwise.
only=()
prev=
for arg in "$@"; do
    [ "$prev" = --only ] && only+=("$arg")
    case "$arg" in --only=*) only+=("${arg#--only=}") ;; esac
    prev=$arg
done
tier=yes
gil_only=no
if [ "${#only[@]}" -gt 0 ]; then
    [[ " ${only[*]} " == *" tier "* ]] || tier=no
    [ -z "$(printf '%s\n' "${only[@]}" | grep -vx tier)" ] && gil_only=yes
fi
if [ "$tier" = yes ]; then
    # The tier family runs on Redis 8 (redis-py's client-side cache refuses servers before
    # 7.4), built once by ci/redis-servers.sh; MOKA_PY_REDIS_SERVER may name another.
    need_redis
    MOKA_PY_REDIS_BIN=$(bash "$ROOT/ci/redis-servers.sh" "${MOKA_PY_REDIS_SERVER:-redis8}")
    export MOKA_PY_REDIS_BIN
fi

bench=$(new_venv bench "$PY_GIL")
log "peers (current PyPI versions) and matplotlib in bench"
"$bench/bin/python" -m pip install -q --upgrade -r "$req" >&2
install_wheel "$bench"

# The package ci/bench/ runs as ci.bench with the repository on PYTHONPATH; its
# worker processes, in the other venvs, inherit that.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ "$gil_only" = yes ]; then
    # The tier family needs neither moka-py 0.5.0 nor 3.13t.
    log "benchmark (progress on stderr)"
    PYTHONHASHSEED=0 exec "$bench/bin/python" -m ci.bench "$@"
fi

peer=$(new_venv bench-moka-py-0.5.0 "$PY_GIL")
"$peer/bin/python" -m pip install -q "moka-py==0.5.0" >&2

# Free-threaded 3.13t. Its own target directory keeps both builds cached.
ft=$(new_venv bench-ft "$(bash "$ROOT/ci/python-ft.sh")")
CARGO_TARGET_DIR="$ROOT/target/bench-ft" install_wheel "$ft"
log "peers on 3.13t, each from a wheel or not at all"
status="$ft/peers-status.tsv"
: >"$status"
ft_pip() { "$ft/bin/python" -m pip install -q --upgrade --only-binary :all: "$@" >"$ft/pip.log" 2>&1; }
# why: the reason in pip's log, in a few words.
why() {
    local versions
    versions=$(sed -nE 's/.*from versions: ([^)]*)\).*/\1/p' "$ft/pip.log" | head -n1)
    case "$versions" in
        "") echo "pip could not install it, see $ft/pip.log" ;;
        none) echo "no wheel for 3.13t" ;;
        *) echo "no wheel for 3.13t; pip finds 3.13t wheels of $versions only" ;;
    esac
}
while read -r name _; do
    if ft_pip "$name"; then
        continue
    fi
    if [ "$name" = theine ] && ft_pip --no-deps theine theine-core typing-extensions; then
        # theine's cache imports theine-core and typing-extensions only.
        printf '%s\t%s\n' theine "installed without its dependency zstandard, which has no \
wheel for 3.13t and which theine's cache does not import" >>"$status"
        continue
    fi
    printf '%s\t%s\n' "$name" "$(why)" >>"$status"
done < <(grep -vE '^[[:space:]]*(#|$)|gil-only' "$req")
ft_peer_args=()
if "$ft/bin/python" -m pip install -q --dry-run --only-binary :all: "moka-py==0.5.0" \
    >"$ft/pip.log" 2>&1; then
    ft_peer=$(new_venv bench-ft-moka-py-0.5.0 "$(bash "$ROOT/ci/python-ft.sh")")
    "$ft_peer/bin/python" -m pip install -q --only-binary :all: "moka-py==0.5.0" >&2
    ft_peer_args=(--ft-peer-python "$ft_peer/bin/python")
else
    printf '%s\t%s\n' "moka-py==0.5.0" "$(why)" >>"$status"
fi

log "benchmark (progress on stderr)"
PYTHONHASHSEED=0 "$bench/bin/python" -m ci.bench --peer-python "$peer/bin/python" \
    --ft-python "$ft/bin/python" "${ft_peer_args[@]}" --ft-status "$status" "$@"
