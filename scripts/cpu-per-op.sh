#!/usr/bin/env bash
# Node CPU time per acknowledged put: a steadier measure than throughput on a shared machine.
# Usage: scripts/cpu-per-op.sh [bench kv flags...]   (against the running `basalt dev` cluster)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/target/release/basalt"
cluster_file="${BASALT_HOME:-$HOME/.basalt}/dev/cluster.json"
pids=$(python3 -c "import json; print(' '.join(map(str, json.load(open('$cluster_file'))['pids'])))")
ticks() { read -r -a f < "/proc/$1/stat"; echo $((f[13] + f[14])); }
hz=$(getconf CLK_TCK)
declare -A before
for p in $pids; do before[$p]=$(ticks "$p"); done
out=$("$bin" bench kv "$@" 2>/dev/null | tail -1)
echo "$out"
# `bench kv` puts one value per task request, whether or not the SDK coalesced it with others.
puts=$(echo "$out" | sed -n 's/.* requests \([0-9]*\) .*/\1/p')
if [ -z "$puts" ] || [ "$puts" -eq 0 ]; then
  echo "no puts completed" >&2
  exit 1
fi
total=0
for p in $pids; do
  used=$(( $(ticks "$p") - before[$p] ))
  total=$((total + used))
  echo "node pid $p: $(( used * 1000000 / hz / puts )) us/put"
done
echo "nodes together: $(( total * 1000 / hz )) ms of CPU for $puts puts = $(( total * 1000000 / hz / puts )) us/put"
