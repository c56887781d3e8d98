#!/usr/bin/env bash
# A local Tessera to try things on: ZooKeeper, a nameserver and three tablets, all on
# loopback. Data lives under $TESSERA_PLAYGROUND (default /tmp/tessera-playground);
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dir=${TESSERA_PLAYGROUND:-/tmp/tessera-playground}
zk_port=${ZK_PORT:-2181}

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
for i in 0 1 2; do
  endpoint=127.0.0.1:$((9527 + i))
  "$root/target/debug/tessera-tablet" --endpoint="$endpoint" --db_root_path="$dir/tablet$i" \
    --zk_cluster=127.0.0.1:$zk_port --zk_root_path=/tessera >"$dir/tablet$i.log" 2>&1 &
  pids+=($!)
done

"$root/target/debug/tessera-nameserver" --endpoint=127.0.0.1:7527 \
  --zk_cluster=127.0.0.1:$zk_port --zk_root_path=/tessera >"$dir/nameserver.log" 2>&1 &
pids+=($!)

for i in 0 1 2; do
  for _ in $(seq 200); do
    grep -q "registered in ZooKeeper" "$dir/tablet$i.log" 2>/dev/null && break
    sleep 0.1
  done
  grep -q "registered in ZooKeeper" "$dir/tablet$i.log" || {
    echo "tablet $i did not come up:"; tail -20 "$dir/tablet$i.log"; exit 1; }
done
for _ in $(seq 200); do
  grep -q "became the nameserver leader" "$dir/nameserver.log" 2>/dev/null && break
  sleep 0.1
done
grep -q "became the nameserver leader" "$dir/nameserver.log" || {
  echo "the nameserver did not come up:"; tail -20 "$dir/nameserver.log"; exit 1; }

cat <<MSG
Tessera playground is up.
  ZooKeeper   127.0.0.1:$zk_port              (log: $dir/zookeeper.log)
  nameserver  127.0.0.1:7527               (log: $dir/nameserver.log; curl 127.0.0.1:7527/metrics)
  tablets     127.0.0.1:9527, :9528, :9529   (data and logs: $dir/tablet<N>, $dir/tablet<N>.log)
The nameserver leads and repairs the cluster (auto_failover is on). ns_client is not built
yet: the nameserver and tablets serve their gRPC APIs (proto/protos/), and
target/debug/tessera-bench --endpoints=127.0.0.1:9527,127.0.0.1:9528,127.0.0.1:9529
creates a replicated table on the tablets and writes to it. Press Ctrl-C to stop.
MSG
if [[ -t 0 ]]; then
  tail -f "$dir"/nameserver.log "$dir"/tablet*.log
else
  wait
fi
