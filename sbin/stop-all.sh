#!/usr/bin/env bash
# Stops the processes of conf/hosts running on this machine: taskmanagers, nameservers,
# tablets, then ZooKeeper. Each daemon forwards SIGTERM to its process, waits for it to
# stop cleanly, and exits.
set -euo pipefail
source "$(dirname "$0")/common.sh"

# stop NAME…: SIGTERM to each daemon, then wait for all of them (60 s, then SIGKILL).
stop() {
  local name pidfile pid pids=()
  for name in "$@"; do
    pidfile=$RUN_DIR/$name.pid
    if running "$pidfile" && pid=$(cat "$pidfile"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      echo "  stopping $name"
    fi
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 600); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "  daemon $pid did not stop in 60 s; killing it (its process dies with it)"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

# The names of one role's local entries.
local_names() {
  local role=$1 address _
  while read -r address _; do
    is_local "${address%:*}" && echo "$role-${address##*:}"
  done < <(section "$role")
  return 0
}

echo "Stopping Tessera (configuration: $TESSERA_CONF)"
for role in taskmanager nameserver tablet zookeeper; do
  mapfile -t names < <(local_names "$role")
  [[ ${#names[@]} -gt 0 ]] && stop "${names[@]}"
done
echo "stopped"
