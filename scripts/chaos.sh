#!/usr/bin/env bash
# Runs seeded fault schedules against a real cluster on loopback and checks each history.
#   scripts/chaos.sh [--seed N] [--schedules N] [--steps N]
# Each schedule's history (JSON lines) and checker report go to chaos-out/seed-<N>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seed=1 schedules=1 steps=6
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seed) seed="$2"; shift 2 ;;
    --schedules) schedules="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
scripts/zookeeper.sh install
cargo build --workspace --bins --tests
failed=0
for ((i = 0; i < schedules; i++)); do
  s=$((seed + i))
  out="chaos-out/seed-$s"
  mkdir -p "$out"
  echo "== schedule seed $s ($steps steps) -> $out"
  if ! CHAOS_SEED=$s CHAOS_STEPS=$steps CHAOS_OUT="$PWD/$out" \
      cargo test -q -p tessera-tests --test chaos -- --nocapture >"$out/run.log" 2>&1; then
    echo "   FAILED: see $out/run.log and $out/report.txt"
    failed=$((failed + 1))
  else
    grep -E "^\| (op|anomaly)" "$out/report.txt" | sed 's/^/   /' || true
  fi
done
echo "schedules: $schedules, failed: $failed"
[[ $failed -eq 0 ]]
