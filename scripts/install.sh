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
for p in build-essential pkg-config curl ca-certificates; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || pkgs+=("$p")
done
if [ ${#pkgs[@]} -gt 0 ]; then
    apt-get update -q
    apt-get install -y -q "${pkgs[@]}"
fi
# Rust 1.85 or newer builds the binaries; Debian 12's own rustc is older, so a fresh
# machine gets the stable toolchain from rustup (for root, in ~/.cargo).
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if ! command -v cargo >/dev/null; then
    echo "install.sh: installing the Rust toolchain with rustup (https://rustup.rs)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --profile minimal --default-toolchain stable
    . "$HOME/.cargo/env"
fi

cargo build --release --locked
exec target/release/flowstage-setup install --yes "$@"
