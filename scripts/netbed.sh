#!/usr/bin/env bash
# What the fault-injection bed needs from the machine.
#   scripts/netbed.sh install   install iproute2 and nftables (Debian packages) if missing
#   scripts/netbed.sh clean     remove namespaces, bridges and mounts of runs that died
set -euo pipefail
# shellcheck source=scripts/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

install() {
  command -v ip >/dev/null && command -v nft >/dev/null && return 0
  apt_install iproute2 nftables
}

# The names carry the pid of the test that made them (tc<pid>h<n>, tb<pid>, tschaos-<pid>).
dead() { ! kill -0 "$1" 2>/dev/null; }

clean() {
  local ns pid p link mount
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^tc[0-9]+h[0-9]+$' || true); do
    pid=${ns#tc}; pid=${pid%%h*}
    if dead "$pid"; then
      for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
  for link in $(ip -o link show type bridge 2>/dev/null | awk -F': ' '{print $2}' | grep -E '^tb[0-9]+$' || true); do
    dead "${link#tb}" && ip link del "$link" 2>/dev/null || true
  done
  awk '$1 ~ /^tschaos-[0-9]+$/ {print $1, $2}' /proc/mounts | while read -r mount target; do
    dead "${mount#tschaos-}" && umount -l "$target" 2>/dev/null || true
  done
}

case "${1:-}" in
  install) install ;;
  clean) clean ;;
  *) echo "usage: $0 install | clean" >&2; exit 2 ;;
esac
