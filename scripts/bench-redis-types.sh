#!/usr/bin/env bash
# Hashes and sorted sets over RESP against Redis on this machine, interleaved round by round,
# each round on a fresh 3-node Basalt region (release build) and a fresh redis-server with
# `--appendonly yes --appendfsync always`:
# - `redis-benchmark -t hset` and `-t zadd` (-r 100000): every write to ONE hash / sorted set,
#   which grows to ~18,000 fields or members (a hot collection);
# - `ZADD win:__rand_int__ __rand_int__ m__rand_int__` (-r 10000): 10,000 keys, as per-client
#   sliding windows.
#
#   scripts/bench-redis-types.sh [ROUNDS (2)] [REQUESTS (20000)]
#
# Prints per round and target: requests/s, p50 and p99 in ms, and the collections' sizes (every
# write counted). Three Basalt nodes, Redis and redis-benchmark share this machine's cores:
# compare only the ratios of one run.
set -euo pipefail
rounds=${1:-2}
requests=${2:-20000}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
basalt="$root/target/release/basalt"
[ -x "$basalt" ] || { echo "build first: cargo build --release -p basalt-cli" >&2; exit 1; }

"$root/scripts/ensure-packages.sh" redis-server redis-tools

work=$(mktemp -d)
redis_port=16400 basalt_resp=16379
cleanup() {
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  [ -n "${dev_pid:-}" ] && kill "$dev_pid" 2>/dev/null && wait "$dev_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

summary() { # label test: reads redis-benchmark's output, prints one line
  tr '\r' '\n' | awk -v l="$1" -v t="$2" '
    /throughput summary:/ { rps = $3 }
    /^ +avg +min +p50/ { getline; printf "%-7s %-16s %10s req/s  p50 %7s ms  p99 %7s ms\n", l, t, rps, $3, $5 }'
}

run() { # port label
  local t
  for t in hset zadd; do
    redis-benchmark -p "$1" -t "$t" -c 50 -n "$requests" -r 100000 2>/dev/null | summary "$2" "$t one key"
  done
  redis-benchmark -p "$1" -c 50 -n "$requests" -r 10000 ZADD 'win:__rand_int__' __rand_int__ 'm__rand_int__' \
    2>/dev/null | summary "$2" "zadd 10k keys"
  echo "$2 sizes: myhash $(redis-cli -p "$1" hlen myhash) fields, myzset $(redis-cli -p "$1" zcard myzset) members"
}

for round in $(seq 1 "$rounds"); do
  echo "round $round"
  order="basalt redis"
  [ $((round % 2)) -eq 0 ] && order="redis basalt"
  for target in $order; do
    if [ "$target" = basalt ]; then
      BASALT_HOME="$work/basalt-$round" "$basalt" dev --nodes 3 --clean --base-port 17101 \
        --http-base-port 18101 --control-port 17100 --resp-base-port "$basalt_resp" >"$work/dev-$round.log" 2>&1 &
      dev_pid=$!
      for _ in $(seq 1 100); do redis-cli -p "$basalt_resp" ping >/dev/null 2>&1 && break; sleep 0.2; done
      sleep 2
      run "$basalt_resp" basalt
      kill "$dev_pid"; wait "$dev_pid" 2>/dev/null || true; dev_pid=
    else
      mkdir -p "$work/redis-$round"
      (cd "$work/redis-$round" && redis-server --port "$redis_port" --appendonly yes --appendfsync always \
        --save '' --daemonize yes >/dev/null)
      for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
      run "$redis_port" redis
      redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
    fi
  done
done
