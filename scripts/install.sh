#!/usr/bin/env bash
# Install and start Flowstage on this Debian/Ubuntu host with defaults: builds the
# binaries, then runs `flowstage-setup install --yes`, which installs packages,
# configures time, mail and PostgreSQL, creates the flowstage user, installs the
# binaries to /usr/local/bin and starts the collector and web daemon. Re-running it is
# safe. Extra arguments go to flowstage-setup install, e.g.:
#   bash scripts/install.sh --answers provision/answers.example.toml
# See docs/operator-guide.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
pkgs=()
for p in build-essential pkg-config; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || pkgs+=("$p")
done
if [ ${#pkgs[@]} -gt 0 ]; then
    apt-get update -q
    apt-get install -y -q "${pkgs[@]}"
fi
command -v cargo >/dev/null || { echo "install.sh: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }

cargo build --release --locked
exec target/release/flowstage-setup install --yes "$@"
