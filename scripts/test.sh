#!/usr/bin/env bash
# The whole test suite, from a fresh machine with only the Rust toolchain:
# installs ZooKeeper (Debian's package) if missing, checks formatting and lints,
# builds every binary, runs every test, and prints the totals.
set -euo pipefail
# shellcheck source=scripts/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
cd "$(dirname "$0")/.."

scripts/zookeeper.sh install
# The fault-injection bed (tests/tests/chaos.rs) runs hosts in network namespaces.
scripts/netbed.sh install
command -v java >/dev/null || { echo "java is required to run ZooKeeper" >&2; exit 1; }
# The interactive shell is tested in a real terminal, run by tmux.
command -v tmux >/dev/null || apt_install tmux

# The status page is tested in a real headless browser.
scripts/chromium.sh install

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (binaries used by the process tests)"
cargo build --workspace --bins --locked

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"; scripts/netbed.sh clean' EXIT
status=0
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || status=$?

# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     END { printf "\ntotal: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
