#!/usr/bin/env bash
# What a secure cluster costs: interleaved rounds of a fresh 3-node `basalt dev` without and with
# `--secure` (mutual TLS between the nodes, TLS between the clients and the nodes, and client
# authentication: every request carries a token the node checks), `basalt bench kv` against each
# (docs/performance.md).
# Usage: scripts/bench-peer-tls.sh [ROUNDS] [DURATION]
set -u
rounds="${1:-3}"
duration="${2:-10s}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bootstrap.sh
. "$root/scripts/bootstrap.sh"
cargo build --quiet --release --manifest-path "$root/Cargo.toml" -p basalt-cli --bin basalt || exit 1
basalt="$root/target/release/basalt"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for round in $(seq 1 "$rounds"); do
  for mode in plain secure; do
    home="$work/$mode"
    rm -rf "$home" && mkdir -p "$home"
    flags=()
    [ "$mode" = secure ] && flags=(--secure)
    BASALT_HOME="$home" "$basalt" dev --clean "${flags[@]}" --base-port 17001 --peer-base-port 17101 \
      --http-base-port 17201 --resp-base-port 17301 --control-port 17400 > "$home/dev.log" 2>&1 &
    dev=$!
    for _ in $(seq 1 100); do
      BASALT_HOME="$home" "$basalt" cluster status > /dev/null 2>&1 && break
      sleep 0.2
    done
    sleep 1
    echo "== round $round $mode"
    BASALT_HOME="$home" "$basalt" bench kv --clients 64 --duration "$duration" --value-size 256 2>&1 | tail -1
    kill -TERM "$dev"
    wait "$dev" 2> /dev/null
  done
done
