#!/usr/bin/env bash
# Benchmarks Baton against etcd, Redis and PostgreSQL in one run.
#
#   bench/run.sh                 # full run: 3 s per cell, 1/16/64 clients
#   bench/run.sh --quick         # about a minute: 0.4 s per cell, fewer extras
#   bench/run.sh --rounds 3      # each cell the median of 3 rounds (shared disks are noisy)
#   bench/run.sh --duration 5s --clients 16,64 --no-extras
#
# Builds `baton` and `baton-bench` (release), starts what is not already
# running, all on 127.0.0.1 with data in a temporary directory:
#   baton serve   :17711 (workloads) and :17712 (a fresh one for the Baton-only extras)
#   etcd          :2379 (Debian's etcd-server; installed with apt-get if missing and root)
#   redis-server  :6380 appendonly yes, appendfsync always   (durable)
#                 :6381 appendonly yes, appendfsync everysec (not durable)
#   PostgreSQL    :5432 is expected to run (db test, trust auth)
#   baton-bench floor :17713 (the transport floor: canned answers, no work)
#   baton-bench floor --axum :17714 (the same through axum, as baton serve)
# then runs baton-bench with every argument given here, which prints the
# table and writes bench/results/<date>.json, <date>.md and latest.md.
# Everything the script started is stopped on exit (by its process id).
# SKIP_BUILD=1 skips the cargo builds; KEEP_WORK=1 keeps the data and logs.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d /tmp/baton-bench.XXXXXX)
STARTED=()
SERVER_PIDS=()

cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${KEEP_WORK:-0}" == 1 ]]; then
        echo "run.sh: data and logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "run.sh: $*" >&2; }

# Polls a command until it succeeds, at most $1 seconds.
wait_for() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.1
    done
}

# 1,000 SSE watchers and 64 clients per system need file descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building baton, baton-bench and restart_bench (release)"
    cargo build --release -p baton-cli -p baton-bench
    cargo build --release -p baton-server --example restart_bench
fi
BATON="$ROOT/target/release/baton"
BENCH="$ROOT/target/release/baton-bench"
RESTART_BENCH="$ROOT/target/release/examples/restart_bench"

# ---- etcd ----
if curl -sf http://127.0.0.1:2379/version >/dev/null 2>&1; then
    log "etcd already running on :2379, using it"
else
    if ! command -v etcd >/dev/null 2>&1 && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "installing Debian's etcd-server"
        apt-get install -y etcd-server >"$WORK/apt.log" 2>&1 || log "apt-get install etcd-server failed (see $WORK/apt.log)"
    fi
    if command -v etcd >/dev/null 2>&1; then
        etcd --name bench --data-dir "$WORK/etcd" \
            --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
            --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
            --initial-cluster bench=http://127.0.0.1:2380 --log-level warn --logger zap \
            >"$WORK/etcd.log" 2>&1 &
        STARTED+=($!)
        wait_for 30 curl -sf http://127.0.0.1:2379/health || log "etcd did not come up (see $WORK/etcd.log)"
    else
        log "no etcd: install Debian's etcd-server; the table will mark it unreachable"
    fi
fi

# ---- Redis: one durable (always), one not (everysec) ----
start_redis() {
    local port=$1 fsync=$2
    if redis-cli -p "$port" ping >/dev/null 2>&1; then
        local have
        have=$(redis-cli -p "$port" config get appendfsync | tail -1)
        if [[ "$have" != "$fsync" || "$(redis-cli -p "$port" config get appendonly | tail -1)" != yes ]]; then
            log "a Redis on :$port runs with appendfsync $have, not $fsync; stop it or free the port"
            exit 1
        fi
        log "Redis already running on :$port with appendfsync $fsync, using it"
        return
    fi
    mkdir -p "$WORK/redis-$port"
    redis-server --port "$port" --bind 127.0.0.1 --appendonly yes --appendfsync "$fsync" \
        --save "" --dir "$WORK/redis-$port" --logfile "$WORK/redis-$port.log" --daemonize no &
    STARTED+=($!)
    wait_for 10 redis-cli -p "$port" ping || log "Redis :$port did not come up"
}
if command -v redis-server >/dev/null 2>&1; then
    start_redis 6380 always
    start_redis 6381 everysec
else
    log "no redis-server; the table will mark Redis unreachable"
fi

# ---- PostgreSQL: the machine's own ----
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    log "PostgreSQL is not answering on 127.0.0.1:5432; the table will mark it unreachable"
fi

# ---- Baton: one server for the workloads, a fresh one for the extras ----
start_baton() {
    local port=$1
    "$BATON" serve --listen "127.0.0.1:$port" --data-dir "$WORK/baton-$port" \
        >"$WORK/baton-$port.log" 2>&1 &
    STARTED+=($!)
    LAST_PID=$!
    if ! wait_for 30 curl -sf "http://127.0.0.1:$port/readyz"; then
        log "baton serve on :$port did not come up:"
        cat "$WORK/baton-$port.log" >&2
        exit 1
    fi
}
start_baton 17711
SERVER_PIDS+=(--server-pid "baton=$LAST_PID")
start_baton 17712
EXTRAS_PID=$LAST_PID

# ---- the transport floor: a server that does no work ----
"$BENCH" floor --listen 127.0.0.1:17713 >"$WORK/floor.log" 2>&1 &
STARTED+=($!)
SERVER_PIDS+=(--server-pid "floor-sdk=$!" --server-pid "floor-raw=$!")
wait_for 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/17713' || log "the floor did not come up (see $WORK/floor.log)"
"$BENCH" floor --axum --listen 127.0.0.1:17714 >"$WORK/floor-axum.log" 2>&1 &
STARTED+=($!)
SERVER_PIDS+=(--server-pid "floor-axum-sdk=$!" --server-pid "floor-axum-raw=$!")
wait_for 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/17714' || log "the axum floor did not come up (see $WORK/floor-axum.log)"

# Each server's CPU per operation, where it is one process we can name
# (PostgreSQL runs a backend process per connection: not counted).
redis_pid() { redis-cli -p "$1" info server 2>/dev/null | sed -n 's/^process_id:\([0-9]*\).*/\1/p'; }
for entry in redis-always=6380 redis-everysec=6381; do
    pid=$(redis_pid "${entry#*=}")
    if [[ -n "$pid" ]]; then SERVER_PIDS+=(--server-pid "${entry%=*}=$pid"); fi
done
pid=$(pgrep -x etcd | head -1 || true)
if [[ -n "$pid" ]]; then SERVER_PIDS+=(--server-pid "etcd=$pid"); fi

log "running baton-bench $*"
export BATON_BENCH_COMMAND="bench/run.sh $*"
"$BENCH" --baton-url http://127.0.0.1:17711 --floor-url http://127.0.0.1:17713 \
    --floor-axum-url http://127.0.0.1:17714 \
    --extras-url http://127.0.0.1:17712 --extras-pid "$EXTRAS_PID" \
    --restart-bench "$RESTART_BENCH" --probe-dir "$WORK" "${SERVER_PIDS[@]}" \
    --results-dir "$ROOT/bench/results" "$@"
