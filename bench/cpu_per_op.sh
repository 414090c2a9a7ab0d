#!/usr/bin/env bash
# CPU time per operation, server and load generator apart: the figure that
# decides throughput when both share the machine's cores (see bench/README.md,
# "Where Baton's time goes").
#
#   bench/cpu_per_op.sh                          # lock-uncontended, 64 clients, 4 s
#   bench/cpu_per_op.sh kv-put 16 3s
#   BENCH=/path/to/other/baton-bench bench/cpu_per_op.sh   # compare two clients
#
# Starts a fresh `baton serve` on 127.0.0.1:17719 with its data in a temporary
# directory, runs one baton-bench cell against it, and prints
#   <workload> clients=N ops/s=X server_cpu_us/op=Y client_cpu_us/op=Z
# where the server's CPU is read from /proc/<pid>/stat around the run and the
# client's is baton-bench's own user + system time (its setup included, so a
# slight overestimate). Uses the release binaries; SKIP_BUILD=1 skips cargo.
set -euo pipefail

cd "$(dirname "$0")/.."
WORKLOAD=${1:-lock-uncontended}
CLIENTS=${2:-64}
DURATION=${3:-4s}
PORT=17719
BATON=${BATON:-$PWD/target/release/baton}
BENCH=${BENCH:-$PWD/target/release/baton-bench}

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    cargo build --release -p baton-cli -p baton-bench >&2
fi

WORK=$(mktemp -d /tmp/baton-cpu.XXXXXX)
SERVER=""
cleanup() {
    if [[ -n "$SERVER" ]]; then
        kill "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BATON" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" >"$WORK/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null || {
    echo "cpu_per_op.sh: baton serve did not come up:" >&2
    cat "$WORK/serve.log" >&2
    exit 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }
before=$(cpu_ticks)
start=$(date +%s.%N)
TIMEFORMAT='%U %S'
{ time "$BENCH" --systems baton --baton-url "http://127.0.0.1:$PORT" --workloads "$WORKLOAD" \
    --clients "$CLIENTS" --duration "$DURATION" --no-extras >"$WORK/bench.out" 2>&1; } 2>"$WORK/time"
end=$(date +%s.%N)
after=$(cpu_ticks)

ops=$(grep -F "| $WORKLOAD | $CLIENTS | baton |" "$WORK/bench.out" | head -1 |
    awk -F'|' '{gsub(/[ ,]/, "", $5); print $5}')
if [[ -z "$ops" ]]; then
    echo "cpu_per_op.sh: no result line for $WORKLOAD; baton-bench said:" >&2
    cat "$WORK/bench.out" >&2
    exit 1
fi
read -r client_user client_system <"$WORK/time"
python3 - "$WORKLOAD" "$CLIENTS" "$ops" "$before" "$after" "$(getconf CLK_TCK)" \
    "$client_user" "$client_system" "$DURATION" <<'EOF'
import re, sys
workload, clients, ops, before, after, tick, user, system, duration = sys.argv[1:]
seconds = float(re.sub(r"s$", "", duration)) if not duration.endswith("ms") else float(duration[:-2]) / 1000
operations = float(ops) * seconds
server = (float(after) - float(before)) / float(tick)
client = float(user) + float(system)
print(f"{workload} clients={clients} ops/s={ops} "
      f"server_cpu_us/op={server / operations * 1e6:.1f} client_cpu_us/op={client / operations * 1e6:.1f}")
EOF
