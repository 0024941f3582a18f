#!/usr/bin/env bash
# RESP against Redis on this machine: `redis-benchmark -t set,get,incr -c 50` (plain and -P 16)
# against a fresh 3-node Basalt region (node 1's RESP port, release build) and against
# redis-server with `--appendonly yes --appendfsync always`, in interleaved rounds (the order
# swaps each round), each round on a fresh Basalt cluster and a fresh Redis data directory.
#
#   scripts/bench-redis.sh [ROUNDS (3)] [REQUESTS (200000)]
#
# Needs a release build (cargo build --release -p basalt-cli) and redis-server / redis-benchmark
# (Debian redis-server and redis-tools; installed if missing). Prints per round, target and
# test: requests/s and p50 / p99 in ms, and each target's server CPU time per request (its
# processes' user+system ticks over the run). Three Basalt nodes, Redis and redis-benchmark share
# this machine's cores: compare only the ratios of one run.
set -euo pipefail
rounds=${1:-3}
requests=${2:-200000}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
basalt="$root/target/release/basalt"
[ -x "$basalt" ] || { echo "build first: cargo build --release -p basalt-cli" >&2; exit 1; }

"$root/scripts/ensure-packages.sh" redis-server redis-tools

work=$(mktemp -d)
redis_port=16400 basalt_resp=16379
cleanup() {
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  [ -n "${dev_pid:-}" ] && kill "$dev_pid" 2>/dev/null && wait "$dev_pid" 2>/dev/null || true
  pkill -f "basalt start.*$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ticks() { # user+system clock ticks of the processes matching $1
  local total=0 pid
  for pid in $(pgrep -f "$1" || true); do
    [ -r "/proc/$pid/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}

# One redis-benchmark run: "test rps p50 p99" per test.
run_bench() { # port pipeline
  # Progress lines end in a carriage return, not a newline: only what follows the last one counts.
  redis-benchmark -p "$1" -t set,get,incr -c 50 -n "$requests" -P "$2" 2>/dev/null | awk '
    { sub(/.*\r/, "") }
    /^====== / { test = $2 }
    /throughput summary:/ { rps = $3 }
    /^ +avg +min +p50/ { getline; printf "%s %s %s %s\n", test, rps, $3, $5 }'
}

measure() { # port process-pattern (the label comes from $label)
  local port=$1 pattern=$2 pipeline before after lines line
  for pipeline in 1 16; do
    before=$(ticks "$pattern")
    lines=$(run_bench "$port" "$pipeline")
    after=$(ticks "$pattern")
    local cpu_us=$(( (after - before) * 1000000 / $(getconf CLK_TCK) / (3 * requests) ))
    while read -r line; do
      read -r test rps p50 p99 <<< "$line"
      printf "%-8s -P %-2s %-5s %10s req/s  p50 %6s ms  p99 %6s ms  server CPU %s us/req (3 tests)\n" \
        "$label" "$pipeline" "$test" "$rps" "$p50" "$p99" "$cpu_us"
    done <<< "$lines"
  done
}

basalt_round() {
  rm -rf "$work/basalt"
  "$basalt" dev --data-dir "$work/basalt" --clean --base-port 17101 --http-base-port 18101 \
    --control-port 17100 --resp-base-port "$basalt_resp" > "$work/dev.log" 2>&1 &
  dev_pid=$!
  for _ in $(seq 100); do
    redis-cli -p "$basalt_resp" SET warmup 1 >/dev/null 2>&1 && break
    sleep 0.2
  done
  label=basalt measure "$basalt_resp" "basalt start.*$work"
  kill "$dev_pid"; wait "$dev_pid" 2>/dev/null || true; dev_pid=
}

redis_round() {
  rm -rf "$work/redis"; mkdir -p "$work/redis"
  redis-server --port "$redis_port" --appendonly yes --appendfsync always --save "" \
    --dir "$work/redis" --daemonize yes --pidfile "$work/redis.pid" >/dev/null
  for _ in $(seq 50); do redis-cli -p "$redis_port" PING >/dev/null 2>&1 && break; sleep 0.1; done
  label=redis measure "$redis_port" "redis-server.*$redis_port"
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  sleep 0.5
}

echo "redis-benchmark -c 50 -n $requests, $rounds rounds; $(nproc) cores shared by everything"
for round in $(seq "$rounds"); do
  echo "round $round"
  if [ $((round % 2)) -eq 1 ]; then basalt_round; redis_round; else redis_round; basalt_round; fi
done
