#!/usr/bin/env bash
# Debian's `chromium`, headless, for the status page test.
#
#   scripts/chromium.sh install             install the package if it is missing
#   scripts/chromium.sh dom URL             print the page's DOM once it has loaded
#   scripts/chromium.sh screenshot URL PNG  save a screenshot of the page
set -euo pipefail
# shellcheck source=scripts/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

install() {
  if command -v chromium >/dev/null; then
    return 0
  fi
  apt_install chromium
  command -v chromium >/dev/null || { echo "chromium still missing after install" >&2; exit 1; }
}

# A profile of its own per run (parallel runs must not share one), removed afterwards;
# no sandbox, since tests may run as root.
browse() {
  local profile
  profile=$(mktemp -d)
  trap 'rm -rf "$profile"' RETURN
  timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --no-first-run --user-data-dir="$profile" "$@" 2>/dev/null
}

case "${1:-}" in
  install) install ;;
  dom) browse --dump-dom "$2" ;;
  screenshot) browse --window-size=1400,1400 --screenshot="$3" "$2" ;;
  *) echo "usage: $0 install | dom URL | screenshot URL PNG" >&2; exit 2 ;;
esac
