#!/usr/bin/env bash
# Runs seeded fault schedules against a cluster of separate hosts (network namespaces on a
# bridge of its own; needs root) and checks each history.
#   scripts/chaos.sh [--seed N] [--schedules N] [--minutes N] [--steps N]
#     --seed       first schedule's seed (default 1); schedule i uses seed N+i
#     --schedules  how many schedules (default 1)
#     --minutes    run each schedule this long (default: a fixed number of steps)
#     --steps      faults per schedule when --minutes is not given (default 6)
# Each schedule's history, fault record, checker report and process logs go to
# chaos-out/seed-<N>/; a summary of all of them ends the output.
set -euo pipefail
cd "$(dirname "$0")/.."
seed=1 schedules=1 steps=6 minutes=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seed) seed="$2"; shift 2 ;;
    --schedules) schedules="$2"; shift 2 ;;
    --minutes) minutes="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ $(id -u) -eq 0 ]] || { echo "chaos.sh needs root (network namespaces, nftables, mounts)" >&2; exit 2; }

scripts/zookeeper.sh install
scripts/netbed.sh install
# Whatever happens (a failure, Ctrl-C), no namespace, bridge or mount of a run outlives it.
trap 'scripts/netbed.sh clean' EXIT
cargo build --workspace --bins --tests

failed=0 folders=()
for ((i = 0; i < schedules; i++)); do
  s=$((seed + i))
  out="chaos-out/seed-$s"
  rm -rf "$out" && mkdir -p "$out"
  folders+=("$out")
  echo "== schedule seed $s -> $out"
  if ! CHAOS_SEEDS=$s CHAOS_STEPS=$steps CHAOS_MINUTES=$minutes CHAOS_OUT="$PWD/chaos-out" \
      cargo test -q -p tessera-tests --test chaos -- --nocapture >"$out/run.log" 2>&1; then
    echo "   FAILED: see $out/run.log and $out/report.txt"
    failed=$((failed + 1))
  fi
done
target/debug/chaos-report "${folders[@]}" || true
echo "schedules: $schedules, failed: $failed"
[[ $failed -eq 0 ]]
