#!/usr/bin/env bash
# ZooKeeper from Debian's `zookeeper` package, for tests and the playground.
#
#   scripts/zookeeper.sh install            install the package if it is missing
#   scripts/zookeeper.sh classpath          print the java class path of the server
#   scripts/zookeeper.sh run DIR PORT       run a standalone server in the foreground,
#                                           data and zoo.cfg under DIR, on 127.0.0.1:PORT
#   scripts/zookeeper.sh member DIR ID ADDRESS PEERS
#                                           run member ID (1-based) of an ensemble in the
#                                           foreground, serving ADDRESS:2181; PEERS lists
#                                           every member's address, comma-separated, in
#                                           id order (quorum ports 2888 and 3888)
#   ZK_HEAP (256m by default) sets the server's heap: a million partitions need about 2g.
#   ZK_JAVA_OPTS (-XX:TieredStopAtLevel=1 by default) is passed to java. The JVM's
#   optimising compiler took a fifth of this 2-core machine while a failover drove new
#   code paths hot, competing with the tablets; ZooKeeper's own work is a small part of
#   the load, so the quick compiler alone serves it better here. ZK_JAVA_OPTS= (empty)
#   restores the JVM's default.
set -euo pipefail
# shellcheck source=scripts/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

JAR_DIR=/usr/share/java
read -ra JAVA_OPTS <<<"${ZK_JAVA_OPTS--XX:TieredStopAtLevel=1}"
# The server's jars and what it loads at run time; one slf4j binding (simple, to stderr).
JARS=(
  zookeeper zookeeper-jute slf4j-api slf4j-simple commons-cli metrics-core snappy-java
  netty-handler netty-common netty-buffer netty-transport netty-codec netty-resolver
  netty-transport-native-epoll netty-transport-native-unix-common
)

install() {
  if [[ -f $JAR_DIR/zookeeper.jar ]]; then
    return 0
  fi
  apt_install zookeeper
  [[ -f $JAR_DIR/zookeeper.jar ]] || { echo "zookeeper.jar still missing after install" >&2; exit 1; }
}

classpath() {
  local cp="" jar
  for jar in "${JARS[@]}"; do
    [[ -f $JAR_DIR/$jar.jar ]] && cp+="${cp:+:}$JAR_DIR/$jar.jar"
  done
  echo "$cp"
}

# zoo.cfg under DIR for a server on ADDRESS:PORT; more lines (an ensemble's) from stdin.
write_config() {
  local dir=$1 address=$2 port=$3
  mkdir -p "$dir/data"
  { cat <<CFG
tickTime=200
minSessionTimeout=400
maxSessionTimeout=20000
initLimit=10
syncLimit=5
dataDir=$dir/data
clientPort=$port
clientPortAddress=$address
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,cons,mntr
# Every local process connects from 127.0.0.1: no cap of 60 per address.
maxClientCnxns=0
CFG
    cat
  } > "$dir/zoo.cfg"
}

run() {
  local dir=$1 port=$2
  write_config "$dir" 127.0.0.1 "$port" </dev/null
  exec java -Xmx"${ZK_HEAP:-256m}" "${JAVA_OPTS[@]}" -cp "$(classpath)" org.apache.zookeeper.server.ZooKeeperServerMain "$dir/zoo.cfg"
}

member() {
  local dir=$1 id=$2 address=$3 peers=$4 i=0 peer
  local servers=""
  IFS=, read -ra addresses <<<"$peers"
  for peer in "${addresses[@]}"; do
    i=$((i + 1))
    servers+="server.$i=$peer:2888:3888"$'\n'
  done
  printf '%s' "$servers" | write_config "$dir" "$address" 2181
  echo "$id" > "$dir/data/myid"
  exec java -Xmx"${ZK_HEAP:-256m}" "${JAVA_OPTS[@]}" -cp "$(classpath)" org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg"
}

case "${1:-}" in
  install) install ;;
  classpath) classpath ;;
  run) shift; run "$@" ;;
  member) shift; member "$@" ;;
  *) echo "usage: $0 install | classpath | run DIR PORT | member DIR ID ADDRESS PEERS" >&2; exit 2 ;;
esac
