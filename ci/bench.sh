#!/usr/bin/env bash
# Builds moka_py in release mode, installs the peers in their own virtual
# environments from the lock (ci/lock/TAG/bench.txt, `bash ci/lock.sh`), runs every
# case of the benchmark side by side, prints the Markdown tables and writes them with
# the charts to bench-out/.
#   bash ci/bench.sh [--quick] [--out DIR]
#       [--only latency|scaling|scaling_gil|hit_ratio|memory|tier]
# Environments (under .venvs/): bench (GIL: moka_py, the peers, matplotlib),
# bench-moka-py-0.5.0 (GIL), bench-ft (free-threaded 3.13t: moka_py and each peer
# that installs there from a wheel). The tier family (moka_py.redis against Redis and
# its peers) runs in bench alone, on redis-server servers of its own.
source "$(dirname "$0")/env.sh"
dev_venv

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
log "peers and matplotlib in bench (ci/lock/$(python_tag "$PY_GIL")/bench.txt)"
sync_venv "$bench" bench
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
sync_venv "$peer" moka-py-0.5.0

# Free-threaded 3.13t. Its own target directory keeps both builds cached.
ftpy=$(bash "$ROOT/ci/python-ft.sh")
ft=$(new_venv bench-ft "$ftpy")
log "peers on 3.13t: those of ci/lock/3.13t/bench.txt, which have a wheel there"
sync_venv "$ft" bench --only-binary :all:
CARGO_TARGET_DIR="$ROOT/target/bench-ft" install_wheel "$ft"
# The peers that ci/lock.sh found no wheel for on 3.13t, and why.
status="$ft/peers-status.tsv"
sed -n 's/^# ft-status: //p' "$(lock_file bench 3.13t)" >"$status"
ft_peer_args=()
if [ -f "$LOCK/3.13t/moka-py-0.5.0.txt" ]; then
    ft_peer=$(new_venv bench-ft-moka-py-0.5.0 "$ftpy")
    sync_venv "$ft_peer" moka-py-0.5.0 --only-binary :all:
    ft_peer_args=(--ft-peer-python "$ft_peer/bin/python")
fi

log "benchmark (progress on stderr)"
PYTHONHASHSEED=0 "$bench/bin/python" -m ci.bench --peer-python "$peer/bin/python" \
    --ft-python "$ft/bin/python" "${ft_peer_args[@]}" --ft-status "$status" "$@"
if [[ " $* " == *" --quick "* ]]; then
    # The tags benchmark (python -m ci.bench.tags; README, Performance, Tags), small.
    log "tags benchmark, smoke run"
    tags_args=(--entries 2000 --rounds 1)
    [ "$tier" = yes ] || tags_args+=(--no-tier)
    "$bench/bin/python" -m ci.bench.tags "${tags_args[@]}"
fi
