#!/usr/bin/env bash
# A local Tessera to try things on, every process under tessera-daemon on loopback:
# ZooKeeper, two nameservers, three tablets and two taskmanagers, with a demo table of
# sample rows. Opens ns_client when it is up.
#
#   scripts/playground.sh          install ZooKeeper if missing, build, start, open ns_client
#                                  (logged in as root; the password is printed)
#   scripts/playground.sh stop     stop every playground process
#   scripts/playground.sh status   which processes run, and the cluster's view of them
#
# Everything lives under $TESSERA_PLAYGROUND (default: ./playground of this checkout):
# conf/ (generated, with the cluster secret and root's password), run/ (pid files),
# run/logs/, and the data directories. Authentication is on: every process shares the
# secret, and ns_client logs in as root.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dir=${TESSERA_PLAYGROUND:-$root/playground}
zk_port=${ZK_PORT:-2181}
zk=127.0.0.1:$zk_port
bin=$root/target/release
export TESSERA_CONF=$dir/conf
secret=$dir/conf/cluster.secret
root_password=$dir/conf/root.password

# A random printable secret of 32 characters.
random_secret() {
  head -c 24 /dev/urandom | base64 -w0
}

write_conf() {
  mkdir -p "$dir/conf"
  # Made once: a cluster keeps its secret, and root's password is read on the first
  # start only.
  (
    umask 077
    [[ -s $secret ]] || random_secret >"$secret"
    [[ -s $root_password ]] || random_secret >"$root_password"
  )
  cat >"$dir/conf/hosts" <<HOSTS
[zookeeper]
$zk $dir/zookeeper
[nameserver]
127.0.0.1:7527
127.0.0.1:7528
[tablet]
127.0.0.1:9527 $dir/tablet-9527
127.0.0.1:9528 $dir/tablet-9528
127.0.0.1:9529 $dir/tablet-9529
[taskmanager]
127.0.0.1:9902 $dir/job_data
127.0.0.1:9903 $dir/job_data
HOSTS
  cat >"$dir/conf/tessera.env" <<ENV
ZK_ROOT_PATH=/tessera
ZK_SESSION_TIMEOUT=5000
TESSERA_BIN=$bin
RUN_DIR=$dir/run
TABLET_ARGS="--cluster_secret_file=$secret"
NAMESERVER_ARGS="--cluster_secret_file=$secret --root_password_file=$root_password"
TASKMANAGER_ARGS="--cluster_secret_file=$secret"
ENV
}

ns_client() {
  TESSERA_PASSWORD=$(cat "$root_password") \
    "$bin/ns_client" --zk_cluster="$zk" --zk_root_path=/tessera --user=root "$@"
}

status() {
  [[ -f $dir/conf/hosts ]] || { echo "no playground under $dir"; exit 0; }
  local pidfile name
  for pidfile in "$dir"/run/*.pid; do
    [[ -e $pidfile ]] || continue
    name=$(basename "$pidfile" .pid)
    [[ $name == *.child ]] && continue
    if kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "  $name: running (daemon $(cat "$pidfile"), process $(cat "$dir/run/$name.child.pid" 2>/dev/null || echo '?'))"
    else
      echo "  $name: not running"
    fi
  done
  if [[ -x $bin/ns_client ]]; then
    ns_client --cmd=showns 2>/dev/null || echo "  the nameservers do not answer"
    ns_client --cmd=showtablet 2>/dev/null || true
  fi
}

# wait_for WHAT COMMAND…: until the command succeeds (60 s).
wait_for() {
  local what=$1
  shift
  for _ in $(seq 300); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "$what did not happen within 60 s; logs are in $dir/run/logs" >&2
  exit 1
}

case "${1:-start}" in
  stop)
    [[ -f $dir/conf/hosts ]] || { echo "no playground under $dir"; exit 0; }
    exec sbin/stop-all.sh
    ;;
  status)
    status
    exit 0
    ;;
  start) ;;
  *)
    echo "usage: $0 [start|stop|status]" >&2
    exit 2
    ;;
esac

scripts/zookeeper.sh install
echo "Building release binaries (the first build takes a few minutes)..."
cargo build --release --bins --quiet
write_conf
sbin/start-all.sh

wait_for "a nameserver leading" ns_client --cmd=showns
wait_for "three healthy tablets" bash -c \
  "TESSERA_PASSWORD=\$(cat '$root_password') '$bin/ns_client' --zk_cluster=$zk --zk_root_path=/tessera --user=root --cmd=showtablet | grep -c kTabletHealthy | grep -qx 3"
if ns_client --cmd=showtable 2>/dev/null | grep -q demo; then
  # A restart of the whole playground is a whole-cluster restart: recoverdata puts the
  # most advanced replica of every partition back in the lead (and changes nothing when
  # all is well).
  echo "Existing tables found: running recoverdata"
  TESSERA_PASSWORD=$(cat "$root_password") "$bin/tessera-ops" --zk_cluster="$zk" \
    --zk_root_path=/tessera --cluster_secret_file="$secret" --user=root \
    --cmd=recoverdata | tail -n 6 ||
    echo "recoverdata reported a problem; run it again with: TESSERA_PASSWORD=\$(cat $root_password) $bin/tessera-ops --zk_cluster=$zk --cluster_secret_file=$secret --user=root --cmd=recoverdata"
else
  ns_client --cmd="create table demo (user string not null, ts timestamp, amount double, city string, \
index(key=user, ts=ts)) options (partitionnum=4, replicanum=3);"
  i=0
  for row in "alice 1700000000000 12.5 paris" "alice 1700000060000 7.25 paris" \
    "bob 1700000000000 99.0 lyon" "carol 1700000120000 3.5 nice" "dave 1700000180000 42.0 lille"; do
    ns_client --cmd="put demo $row" >/dev/null
    i=$((i + 1))
  done
  echo "demo table created with $i rows"
fi

cat <<MSG

Tessera playground is up (everything under $dir):
  ZooKeeper     $zk (root /tessera)
  nameservers   127.0.0.1:7527, 127.0.0.1:7528   (status page http://127.0.0.1:7527/)
  tablets       127.0.0.1:9527, 127.0.0.1:9528, 127.0.0.1:9529
  metrics       /metrics on every port above (conf/prometheus.yml, conf/grafana-dashboard.json)
  taskmanagers  127.0.0.1:9902, 127.0.0.1:9903   (jobs: load data infile, export table, showjobs;
                files only under $dir/job_data)
  logs          $dir/run/logs/
  root password $(cat "$root_password")   (in $root_password; ns_client --user=root)
  secret        $secret   (for tessera-ops: --cluster_secret_file, with --user=root)
Try: showtable demo · info demo · scan demo alice · showtablet · showopstatus · help · man setttl ·
     export table demo to 'demo.csv' · showjobs ·
     create user ann options (password='ann-password') · grant select on default.* to ann
Kill a tablet's process (kill -9 \$(cat $dir/run/tablet-9527.child.pid)) and watch
its daemon restart it and the nameserver repair the partitions.
Stop everything with: scripts/playground.sh stop
MSG
if [[ -t 0 ]]; then
  TESSERA_PASSWORD=$(cat "$root_password") exec "$bin/ns_client" --zk_cluster="$zk" \
    --zk_root_path=/tessera --user=root
fi
