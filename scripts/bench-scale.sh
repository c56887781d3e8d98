#!/usr/bin/env bash
# Many partitions on one machine: scripts/bench-scale.sh
#   SCALE_TABLES=100 SCALE_PARTITIONS=100 SCALE_TABLETS=5 by default (10,000 partitions,
#   three replicas each); SCALE_DIR=<dir> keeps the processes' data and logs;
#   SCALE_TABLET_ARGS="--flag=value ..." passes flags to every tablet.
# Prints create and showtable times, the idle nameserver's CPU and ZooKeeper's writes,
# the failover of the partitions a killed tablet led, and a whole-cluster recoverdata.
# Then the nameserver alone at a million partitions on fake tablets (tests/benches/
# simulation.rs; SIM_PARTITIONS, SIM_TABLE_PARTITIONS, SIM_TABLETS, SIM_DIR). SCALE=0 or
# SIM=0 skips either part.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/zookeeper.sh install
cargo build --release --bins --quiet
if [ "${SCALE:-1}" != 0 ]; then
    cargo bench -p tessera-tests --bench scale
fi
if [ "${SIM:-1}" != 0 ]; then
    # A million partitions are about 100 MB of node data, which ZooKeeper keeps in memory.
    ZK_HEAP=${ZK_HEAP:-2g} cargo bench -p tessera-tests --bench simulation
fi
