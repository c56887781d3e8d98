#!/usr/bin/env bash
# Replicated put throughput and latency: three release-built tablets on loopback, one
# partition in quorum mode and one in async mode, driven by tessera-bench.
#   ROWS=50000 CONCURRENCY=32 scripts/bench-replication.sh
# BIN_DIR=<dir> runs binaries built elsewhere (another revision, to compare) instead of
# building this tree's.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${ROWS:-50000}
concurrency=${CONCURRENCY:-32}
bin=${BIN_DIR:-target/release}
[[ -n "${BIN_DIR:-}" ]] || cargo build --release --bins --quiet
dir=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
endpoints=()
for i in 0 1 2; do
  port=$((19527 + i))
  "$bin/tessera-tablet" --insecure --endpoint=127.0.0.1:$port --db_root_path="$dir/t$i" >"$dir/t$i.log" 2>&1 &
  pids+=($!)
  endpoints+=("127.0.0.1:$port")
done
for i in 0 1 2; do
  for _ in $(seq 100); do grep -q "tablet serving" "$dir/t$i.log" 2>/dev/null && break; sleep 0.1; done
done
list=$(IFS=,; echo "${endpoints[*]}")
"$bin/tessera-bench" --endpoints="$list" --mode=quorum --tid=901 --rows="$rows" --concurrency="$concurrency"
"$bin/tessera-bench" --endpoints="$list" --mode=async --tid=902 --rows="$rows" --concurrency="$concurrency"
"$bin/tessera-bench" --endpoints="$list" --mode=quorum --tid=903 --rows=$((rows / 10)) --concurrency=1
"$bin/tessera-bench" --endpoints="$list" --mode=async --tid=904 --rows=$((rows / 10)) --concurrency=1
