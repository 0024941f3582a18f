#!/usr/bin/env bash
# Node CPU time per acknowledged put: a steadier measure than throughput on a shared machine.
# Usage: scripts/cpu-per-op.sh [bench kv flags...]   (against the running `basalt dev` cluster)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/target/release/basalt"
cluster_file="${BASALT_HOME:-$HOME/.basalt}/dev/cluster.json"
pids=$(python3 -c "import json,sys; print(' '.join(map(str, json.load(open('$cluster_file'))['pids'])))")
ticks() { local t=0; for p in $pids; do read -r -a f < "/proc/$p/stat"; t=$((t + f[13] + f[14])); done; echo "$t"; }
hz=$(getconf CLK_TCK)
before=$(ticks)
out=$("$bin" bench kv "$@" 2>/dev/null | tail -1)
after=$(ticks)
ops=$(echo "$out" | sed -n 's/.* ops \([0-9]*\) .*/\1/p')
echo "$out"
echo "node cpu: $(( (after - before) * 1000 / hz )) ms for $ops puts = $(( (after - before) * 1000000 / hz / ops )) us/put (3 nodes together)"
