#!/usr/bin/env bash
# Timing of the installer's no-change paths on an installed appliance (as root):
# `flowstage-setup reconfigure` with nothing to change, and `flowstage-setup status`
# with the database up. Install first, e.g.:
#   bash scripts/install.sh --answers provision/ci-answers.toml
#   bash scripts/bench-setup.sh
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "bench-setup.sh: run as root" >&2; exit 1; }
command -v flowstage-setup >/dev/null || { echo "bench-setup.sh: install Flowstage first" >&2; exit 1; }
command -v hyperfine >/dev/null || apt-get install -y -q hyperfine
flowstage-setup reconfigure 2>&1 | tail -1 | grep -qx "no changes" \
    || { echo "bench-setup.sh: reconfigure still has changes; run it once first" >&2; exit 1; }
# status exits 1 with warnings (e.g. time sync on a machine without a time source).
hyperfine --warmup 1 --runs 10 -i 'flowstage-setup reconfigure' 'flowstage-setup status'
