#!/usr/bin/env bash
# Hashes and sorted sets over RESP against Redis on this machine, interleaved round by round,
# each round on a fresh 3-node Basalt region (release build) and a fresh redis-server with
# `--appendonly yes --appendfsync always`:
# - `redis-benchmark -t hset` and `-t zadd` (-r 100000): every write to ONE hash / sorted set,
#   which grows to ~18,000 fields or members (a hot collection);
# - `ZADD win:__rand_int__ __rand_int__ m__rand_int__` (-r 10000): 10,000 keys, as per-client
#   sliding windows;
# - `XADD events * field __rand_int__`: every entry appended to ONE stream (an event log), and
#   `XRANGE events - + COUNT 10`, reading its first ten entries.
#
#   scripts/bench-redis-types.sh [ROUNDS (2)] [REQUESTS (20000)]
#
# Prints per round and target: requests/s, p50 and p99 in ms, and the collections' sizes (every
# write counted). Three Basalt nodes, Redis and redis-benchmark share this machine's cores:
# compare only the ratios of one run.
set -euo pipefail
rounds=${1:-2}
requests=${2:-20000}
# shellcheck source=scripts/bench-redis-common.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-redis-common.sh"

summary() { # label test: reads redis-benchmark's output, prints one line
  tr '\r' '\n' | awk -v l="$1" -v t="$2" '
    /throughput summary:/ { rps = $3 }
    /^ +avg +min +p50/ { getline; printf "%-7s %-16s %10s req/s  p50 %7s ms  p99 %7s ms\n", l, t, rps, $3, $5 }'
}

measure() { # port label process-pattern
  local t
  for t in hset zadd; do
    redis-benchmark -p "$1" -t "$t" -c 50 -n "$requests" -r 100000 2>/dev/null | summary "$2" "$t one key"
  done
  redis-benchmark -p "$1" -c 50 -n "$requests" -r 10000 ZADD 'win:__rand_int__' __rand_int__ 'm__rand_int__' \
    2>/dev/null | summary "$2" "zadd 10k keys"
  redis-benchmark -p "$1" -c 50 -n "$requests" -r 100000 XADD events '*' field __rand_int__ \
    2>/dev/null | summary "$2" "xadd one stream"
  redis-benchmark -p "$1" -c 50 -n "$requests" XRANGE events - + COUNT 10 \
    2>/dev/null | summary "$2" "xrange count 10"
  echo "$2 sizes: myhash $(redis-cli -p "$1" hlen myhash) fields, myzset $(redis-cli -p "$1" zcard myzset) members, events $(redis-cli -p "$1" xlen events) entries"
}

interleave "$rounds"
