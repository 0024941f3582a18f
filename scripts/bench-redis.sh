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
# shellcheck source=scripts/bench-redis-common.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-redis-common.sh"

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

measure() { # port label process-pattern
  local port=$1 label=$2 pattern=$3 pipeline before after lines line
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

echo "redis-benchmark -c 50 -n $requests, $rounds rounds; $(nproc) cores shared by everything"
interleave "$rounds"
