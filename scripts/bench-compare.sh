#!/usr/bin/env bash
# Tessera and etcd side by side on this machine, in one run (see
# bench/compare/benches/compare.rs): RUNS=5 SECONDS=10 scripts/bench-compare.sh
# Installs what it needs: ZooKeeper, Debian's etcd-server, and protoc (which the etcd
# client's build needs; Tessera's own build does not).
set -euo pipefail
# shellcheck source=scripts/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
cd "$(dirname "$0")/.."
root=$(pwd)

scripts/zookeeper.sh install
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi

cargo build --release --bins --quiet
# The comparison is a workspace of its own (etcd's client is no dependency of Tessera);
# it starts from the main lock file so both build the same versions into one target/.
[ -f bench/compare/Cargo.lock ] || cp Cargo.lock bench/compare/Cargo.lock
cd bench/compare
CARGO_TARGET_DIR="$root/target" cargo bench --quiet --bench compare
