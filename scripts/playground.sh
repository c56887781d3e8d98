#!/usr/bin/env bash
# A local Tessera to try things on: ZooKeeper and a tablet on loopback.
# Data lives under $TESSERA_PLAYGROUND (default /tmp/tessera-playground); Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dir=${TESSERA_PLAYGROUND:-/tmp/tessera-playground}
zk_port=${ZK_PORT:-2181}
tablet_endpoint=${TABLET_ENDPOINT:-127.0.0.1:9527}

scripts/zookeeper.sh install
echo "Building..."
cargo build --workspace --bins --quiet
mkdir -p "$dir"

pids=()
stop() {
  echo
  echo "Stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

scripts/zookeeper.sh run "$dir/zookeeper" "$zk_port" >"$dir/zookeeper.log" 2>&1 &
pids+=($!)
"$root/target/debug/tessera-tablet" --endpoint="$tablet_endpoint" --db_root_path="$dir/tablet" \
  >"$dir/tablet.log" 2>&1 &
pids+=($!)

for _ in $(seq 100); do
  grep -q "tablet serving" "$dir/tablet.log" 2>/dev/null && break
  sleep 0.1
done
grep -q "tablet serving" "$dir/tablet.log" || { echo "the tablet did not start:"; tail -20 "$dir/tablet.log"; exit 1; }

cat <<MSG
Tessera playground is up.
  ZooKeeper   127.0.0.1:$zk_port        (log: $dir/zookeeper.log)
  tablet      $tablet_endpoint   (data: $dir/tablet, log: $dir/tablet.log)
The nameserver and ns_client are not built yet; the tablet serves its gRPC API
(proto/protos/tablet.proto) directly. Press Ctrl-C to stop.
MSG
if [[ -t 0 ]]; then
  tail -f "$dir/tablet.log"
else
  wait
fi
