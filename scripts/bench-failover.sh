#!/usr/bin/env bash
# Failover time with default settings: RUNS=5 scripts/bench-failover.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/zookeeper.sh install
cargo build --release --bins --quiet
cargo bench -p tessera-tests --bench failover
