#!/usr/bin/env bash
# Starts the ZooKeeper, nameservers, tablets and taskmanagers of conf/hosts that run on
# this machine, each under tessera-daemon (restarted if it crashes). Already running
# processes are left alone. Logs and pid files go to RUN_DIR (conf/tessera.env).
set -euo pipefail
source "$(dirname "$0")/common.sh"

mkdir -p "$RUN_DIR/logs"
daemon=$TESSERA_BIN/tessera-daemon
[[ -x $daemon ]] || { echo "$daemon is missing: build with cargo build --release --bins" >&2; exit 2; }
ZK=$(zk_cluster)
[[ -n $ZK ]] || { echo "no ZooKeeper: fill [zookeeper] in hosts or set ZK_CLUSTER" >&2; exit 2; }
started=0

# start NAME COMMAND…: runs the command under the daemon unless NAME runs already.
start() {
  local name=$1
  shift
  local pidfile=$RUN_DIR/$name.pid
  if running "$pidfile"; then
    echo "  $name is running already (daemon pid $(cat "$pidfile"))"
    return
  fi
  # setsid: the daemon outlives this shell and its terminal.
  setsid "$daemon" --pidfile="$pidfile" --child_pidfile="$RUN_DIR/$name.child.pid" \
    --log="$RUN_DIR/logs/$name.log" --restart_delay="$DAEMON_RESTART_DELAY" \
    --max_restarts="$DAEMON_MAX_RESTARTS" --restart_window="$DAEMON_RESTART_WINDOW" \
    -- "$@" </dev/null >/dev/null 2>&1 &
  for _ in $(seq 50); do
    [[ -f $pidfile ]] && break
    sleep 0.1
  done
  echo "  $name started (log: $RUN_DIR/logs/$name.log)"
  started=$((started + 1))
}

# wait_port HOST:PORT: until something listens there (at most 30 s).
wait_port() {
  local host=${1%:*} port=${1##*:}
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "  nothing listens on $1 after 30 s; see the log" >&2
  return 1
}

echo "Starting Tessera (configuration: $TESSERA_CONF, binaries: $TESSERA_BIN)"
while read -r address dir; do
  is_local "${address%:*}" || continue
  start "zookeeper-${address##*:}" "$TESSERA_HOME/scripts/zookeeper.sh" run "$dir" "${address##*:}"
  wait_port "$address"
done < <(section zookeeper)

common=(--zk_cluster="$ZK" --zk_root_path="$ZK_ROOT_PATH" --zk_session_timeout="$ZK_SESSION_TIMEOUT")
# Authentication (tessera.env): the servers refuse to start without a secret unless
# their *_ARGS say --insecure.
if [[ -n ${CLUSTER_SECRET_FILE:-} ]]; then
  common+=(--cluster_secret_file="$CLUSTER_SECRET_FILE")
fi
root_password=()
if [[ -n ${ROOT_PASSWORD_FILE:-} ]]; then
  root_password=(--root_password_file="$ROOT_PASSWORD_FILE")
fi

while read -r endpoint dir; do
  is_local "${endpoint%:*}" || continue
  conf=()
  [[ -f $TESSERA_CONF/tablet.toml ]] && conf=(--conf="$TESSERA_CONF/tablet.toml")
  # shellcheck disable=SC2086
  start "tablet-${endpoint##*:}" "$TESSERA_BIN/tessera-tablet" "${conf[@]}" --endpoint="$endpoint" \
    --db_root_path="$dir" "${common[@]}" ${TABLET_ARGS:-}
done < <(section tablet)

while read -r endpoint _; do
  is_local "${endpoint%:*}" || continue
  # shellcheck disable=SC2086
  start "nameserver-${endpoint##*:}" "$TESSERA_BIN/tessera-nameserver" --endpoint="$endpoint" \
    "${common[@]}" "${root_password[@]}" ${NAMESERVER_ARGS:-}
done < <(section nameserver)

while read -r endpoint job_data_dir; do
  is_local "${endpoint%:*}" || continue
  if [[ ! -x $TESSERA_BIN/tessera-taskmanager ]]; then
    echo "  taskmanager-${endpoint##*:} skipped: $TESSERA_BIN/tessera-taskmanager is not built"
    continue
  fi
  # shellcheck disable=SC2086
  start "taskmanager-${endpoint##*:}" "$TESSERA_BIN/tessera-taskmanager" --endpoint="$endpoint" \
    --job_data_dir="${job_data_dir:-$RUN_DIR/job_data}" "${common[@]}" ${TASKMANAGER_ARGS:-}
done < <(section taskmanager)

echo "$started processes started. ZooKeeper: $ZK$ZK_ROOT_PATH"
echo "Operate with: $TESSERA_BIN/ns_client --zk_cluster=$ZK --zk_root_path=$ZK_ROOT_PATH --user=root"
