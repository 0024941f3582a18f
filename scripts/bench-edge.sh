#!/usr/bin/env bash
# The edge cache against its peers on this machine: hits/s of one 1 KiB object through Basalt's
# edge (one node), nginx proxy_cache and Varnish, all in front of the same origin (nginx serving a
# static file), measured by `wrk -t1 -c50` in interleaved rounds (the order rotates each round).
#
#   scripts/bench-edge.sh [ROUNDS (3)] [DURATION (10s)]
#
# Needs a release build (cargo build --release -p basalt-cli); installs nginx, varnish and wrk
# from Debian if they are missing. Prints, per round and cache: requests/s, p50, p99, and the
# cache's CPU time per request (its processes' user+system ticks over the run). Everything shares
# this machine's cores with wrk: compare only the ratios of one run.
set -euo pipefail
rounds=${1:-3}
duration=${2:-10s}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
basalt="$root/target/release/basalt"
[ -x "$basalt" ] || { echo "build first: cargo build --release -p basalt-cli" >&2; exit 1; }

"$root/scripts/ensure-packages.sh" nginx varnish wrk

work=$(mktemp -d)
origin=127.0.0.1:19000 basalt_edge=127.0.0.1:19001 nginx_edge=127.0.0.1:19002 varnish_edge=127.0.0.1:19003
# A process and its children (nginx's workers, Varnish's cache process).
tree_of() { local root; root=$(pgrep -of "$1" || true); [ -n "$root" ] && echo "$root $(pgrep -P "$root" | tr '\n' ' ')"; }
cleanup() {
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  pkill -f "varnishd.*$work" 2>/dev/null || true
  pkill -f "basalt start.*$work" 2>/dev/null || true
  sleep 1
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/www" "$work/nginx-cache" "$work/varnish"
head -c 1024 /dev/urandom > "$work/www/obj.bin"
# nginx's workers run as www-data: the origin's file must be readable by them.
chmod -R a+rX "$work"
cat > "$work/nginx.conf" <<CONF
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  proxy_cache_path $work/nginx-cache levels=1:2 keys_zone=edge:10m max_size=256m;
  server { listen $origin; root $work/www; location / { add_header Cache-Control "max-age=3600"; } }
  server {
    listen $nginx_edge;
    location / {
      proxy_pass http://$origin;
      proxy_cache edge;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
CONF
nginx -c "$work/nginx.conf"
varnishd -n "$work/varnish" -a "$varnish_edge" -b "$origin" -s malloc,256m -F >"$work/varnish.log" 2>&1 &
"$basalt" start --id 1 --listen 127.0.0.1:19010 --http 127.0.0.1:19011 --data-dir "$work/basalt" \
  --peers 1=127.0.0.1:19010 --init --edge-listen "$basalt_edge" --origin "/=http://$origin" \
  --cache-bytes $((256 << 20)) >"$work/basalt.log" 2>&1 &
for _ in $(seq 100); do
  curl -s -o /dev/null "http://$basalt_edge/obj.bin" && curl -s -o /dev/null "http://$varnish_edge/obj.bin" && break
  sleep 0.2
done

# A benchmark of an error page or of a pass-through measures nothing: each cache must answer 200
# from its store before it is measured.
check_hit() { # name address hit-pattern
  curl -s -o /dev/null "http://$2/obj.bin"
  local head; head=$(curl -s -D - -o /dev/null "http://$2/obj.bin")
  if ! echo "$head" | head -1 | grep -q ' 200'; then echo "$1: not 200: $head" >&2; exit 1; fi
  if ! echo "$head" | grep -qiE "$3"; then echo "$1: the second request was not a cache hit: $head" >&2; exit 1; fi
}
check_hit basalt "$basalt_edge" '^x-cache: HIT'
check_hit nginx "$nginx_edge" '^x-cache: HIT'
check_hit varnish "$varnish_edge" '^x-varnish: [0-9]+ [0-9]+'

hz=$(getconf CLK_TCK)
ticks() { local t=0; for p in $1; do read -r -a f < "/proc/$p/stat" && t=$((t + f[13] + f[14])); done; echo $t; }
run() { # name address process-pattern
  local name=$1 addr=$2 pids
  pids=$(tree_of "$3")
  for _ in 1 2 3; do curl -s -o /dev/null "http://$addr/obj.bin"; done
  local before; before=$(ticks "$pids")
  local out; out=$(wrk -t1 -c50 -d"$duration" --latency "http://$addr/obj.bin")
  local used=$(( $(ticks "$pids") - before ))
  local rps p50 p99 requests
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  printf '%-8s %10s req/s  p50 %8s  p99 %8s  cpu %5s us/req\n' "$name" "$rps" "$p50" "$p99" \
    "$(( used * 1000000 / hz / (requests > 0 ? requests : 1) ))"
}
order=(basalt nginx varnish)
for round in $(seq "$rounds"); do
  echo "round $round"
  for name in "${order[@]}"; do
    case $name in
      basalt) run basalt "$basalt_edge" "basalt start.*$work" ;;
      nginx) run nginx "$nginx_edge" "nginx -c $work/nginx.conf" ;;
      varnish) run varnish "$varnish_edge" "varnishd.*$work" ;;
    esac
  done
  order=("${order[@]:1}" "${order[0]}")
done
