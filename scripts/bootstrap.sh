#!/usr/bin/env bash
# Installs the system packages Basalt's build needs, only when they are missing.
#
# Why: the `rocksdb` crate links against Debian's librocksdb-dev (7.8.3) instead of building
# RocksDB's C++ sources (~40 CPU-minutes per cargo profile on a 2-core machine; ~1 minute this
# way). bindgen, used by librocksdb-sys, needs libclang. See docs/build.md.
#
# Source this file (`. scripts/bootstrap.sh`) so the exported variables reach cargo.
set -euo pipefail

# redis-tools: redis-cli and redis-benchmark, which tests/tests/redis.rs drives against a node.
basalt_packages=(librocksdb-dev libclang1-14 libclang-common-14-dev redis-tools)

basalt_missing=()
for pkg in "${basalt_packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    basalt_missing+=("$pkg")
  fi
done

if [ "${#basalt_missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing ${basalt_missing[*]}" >&2
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
    "${basalt_missing[@]}" >/dev/null
fi

# clippy runs in scripts/test; rustup's minimal profile leaves it out.
if ! cargo clippy --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
  echo "bootstrap: adding the clippy component" >&2
  rustup component add clippy >/dev/null
fi

export ROCKSDB_LIB_DIR=/usr/lib/x86_64-linux-gnu
export SNAPPY_LIB_DIR=/usr/lib/x86_64-linux-gnu
export LIBCLANG_PATH=/usr/lib/llvm-14/lib
