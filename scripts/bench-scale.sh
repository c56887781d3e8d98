#!/usr/bin/env bash
# Many partitions on one machine: scripts/bench-scale.sh
#   SCALE_TABLES=100 SCALE_PARTITIONS=100 SCALE_TABLETS=5 by default (10,000 partitions,
#   three replicas each); SCALE_DIR=<dir> keeps the processes' data and logs.
# Prints create and showtable times, the idle nameserver's CPU and ZooKeeper's writes,
# the failover of the partitions a killed tablet led, and a whole-cluster recoverdata.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/zookeeper.sh install
cargo build --release --bins --quiet
cargo bench -p tessera-tests --bench scale
