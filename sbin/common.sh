# Shared by sbin/start-all.sh and sbin/stop-all.sh: reads conf/hosts and tessera.env.
# TESSERA_CONF points at another configuration directory (the playground uses one).

TESSERA_HOME=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESSERA_CONF=${TESSERA_CONF:-$TESSERA_HOME/conf}
[[ -f $TESSERA_CONF/hosts ]] || { echo "no $TESSERA_CONF/hosts" >&2; exit 2; }
# shellcheck source=../conf/tessera.env
[[ -f $TESSERA_CONF/tessera.env ]] && source "$TESSERA_CONF/tessera.env"
ZK_ROOT_PATH=${ZK_ROOT_PATH:-/tessera}
ZK_SESSION_TIMEOUT=${ZK_SESSION_TIMEOUT:-10000}
RUN_DIR=${RUN_DIR:-/tmp/tessera/run}
DAEMON_RESTART_DELAY=${DAEMON_RESTART_DELAY:-2000}
DAEMON_MAX_RESTARTS=${DAEMON_MAX_RESTARTS:-5}
DAEMON_RESTART_WINDOW=${DAEMON_RESTART_WINDOW:-300}
if [[ -z ${TESSERA_BIN:-} ]]; then
  if [[ -x $TESSERA_HOME/target/release/tessera-tablet ]]; then
    TESSERA_BIN=$TESSERA_HOME/target/release
  else
    TESSERA_BIN=$TESSERA_HOME/target/debug
  fi
fi

# The entries of one [section] of conf/hosts, comments and blank lines dropped.
section() {
  awk -v want="[$1]" '
    /^[[:space:]]*#/ || /^[[:space:]]*$/ { next }
    /^\[/ { inside = ($1 == want); next }
    inside { sub(/#.*/, ""); print }
  ' "$TESSERA_CONF/hosts"
}

# Whether host names this machine.
is_local() {
  local host=$1
  case $host in
    localhost | 127.*) return 0 ;;
  esac
  [[ $host == "$(hostname)" || $host == "$(hostname -f 2>/dev/null)" ]] && return 0
  hostname -I 2>/dev/null | tr ' ' '\n' | grep -qx "$host"
}

# The connect string: ZK_CLUSTER, else every [zookeeper] entry's host:port.
zk_cluster() {
  if [[ -n ${ZK_CLUSTER:-} ]]; then
    echo "$ZK_CLUSTER"
  else
    section zookeeper | awk '{ print $1 }' | paste -sd, -
  fi
}

# Whether the process named by a pidfile runs.
running() {
  local pid
  [[ -f $1 ]] && pid=$(cat "$1") && [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}
