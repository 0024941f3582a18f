# Sourced by the redis-benchmark scripts (bench-redis.sh, bench-redis-types.sh): what they share.
# Checks the release build, installs redis-server / redis-tools if missing, makes a scratch
# directory removed on exit with whatever still runs, and runs interleaved rounds (the order
# swaps each round), each on a fresh 3-node Basalt region and a fresh redis-server with
# `--appendonly yes --appendfsync always`. The sourcing script defines
# `measure PORT LABEL PROCESS-PATTERN` and calls `interleave ROUNDS`.
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

basalt_round() {
  rm -rf "$work/basalt"
  "$basalt" dev --data-dir "$work/basalt" --clean --base-port 17101 --http-base-port 18101 \
    --control-port 17100 --resp-base-port "$basalt_resp" > "$work/dev.log" 2>&1 &
  dev_pid=$!
  for _ in $(seq 100); do
    redis-cli -p "$basalt_resp" SET warmup 1 >/dev/null 2>&1 && break
    sleep 0.2
  done
  measure "$basalt_resp" basalt "basalt start.*$work"
  kill "$dev_pid"; wait "$dev_pid" 2>/dev/null || true; dev_pid=
}

redis_round() {
  rm -rf "$work/redis"; mkdir -p "$work/redis"
  redis-server --port "$redis_port" --appendonly yes --appendfsync always --save "" \
    --dir "$work/redis" --daemonize yes --pidfile "$work/redis.pid" >/dev/null
  for _ in $(seq 50); do redis-cli -p "$redis_port" PING >/dev/null 2>&1 && break; sleep 0.1; done
  measure "$redis_port" redis "redis-server.*$redis_port"
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  sleep 0.5
}

interleave() { # rounds
  local round
  for round in $(seq "$1"); do
    echo "round $round"
    if [ $((round % 2)) -eq 1 ]; then basalt_round; redis_round; else redis_round; basalt_round; fi
  done
}
