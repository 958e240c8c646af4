#!/usr/bin/env bash
# Install and start the Flowstage collector on this Debian host with defaults:
# PostgreSQL from Debian, a `flowstage` system user, database and role (peer
# authentication over the local socket), the binaries in /usr/local/bin, and the
# collector service (systemd, or a SysV init script where systemd is not PID 1).
# Re-running it is safe. flowstage-setup will take this job over with checks,
# plans and diffs (see docs/installer.md when it lands).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
pkgs=()
for p in postgresql build-essential pkg-config curl; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || pkgs+=("$p")
done
if [ ${#pkgs[@]} -gt 0 ]; then
    apt-get update -q
    apt-get install -y -q "${pkgs[@]}"
fi
command -v cargo >/dev/null || { echo "install.sh: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }

cargo build --release --locked
install -m 0755 target/release/flowstage-collector target/release/flowstage-setup \
    target/release/flowstage-web /usr/local/bin/

getent group flowstage >/dev/null || groupadd --system flowstage
getent passwd flowstage >/dev/null || useradd --system --gid flowstage \
    --home-dir /var/lib/flowstage --shell /usr/sbin/nologin flowstage
install -d -o flowstage -g flowstage -m 0750 /var/lib/flowstage /var/log/flowstage
install -d -m 0755 /etc/flowstage
[ -f /etc/flowstage/flowstage.toml ] || install -m 0644 provision/flowstage.example.toml /etc/flowstage/flowstage.toml

# Room for bursts: the collector asks for a 32 MiB receive buffer; without
# CAP_NET_ADMIN (SysV mode) the kernel caps it at rmem_max.
echo "net.core.rmem_max = 33554432" > /etc/sysctl.d/60-flowstage.conf
sysctl -q -p /etc/sysctl.d/60-flowstage.conf 2>/dev/null || echo "install.sh: could not raise net.core.rmem_max here (container?)" >&2

systemd_pid1=false
[ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && systemd_pid1=true
if ! $systemd_pid1; then
    pg_ctlcluster 15 main start 2>/dev/null || true
fi
for _ in $(seq 1 30); do pg_isready -q && break; sleep 1; done
runuser -u postgres -- psql -qtAX -c "SELECT 1 FROM pg_roles WHERE rolname='flowstage'" | grep -q 1 \
    || runuser -u postgres -- createuser flowstage
runuser -u postgres -- psql -qtAX -c "SELECT 1 FROM pg_database WHERE datname='flowstage'" | grep -q 1 \
    || runuser -u postgres -- createdb -O flowstage flowstage

if $systemd_pid1; then
    install -m 0644 units/flowstage-collector.service /etc/systemd/system/
    systemctl daemon-reload
    systemctl enable --now flowstage-collector.service
    systemctl restart flowstage-collector.service
else
    install -m 0755 units/flowstage-collector.init /etc/init.d/flowstage-collector
    update-rc.d flowstage-collector defaults >/dev/null 2>&1 || true
    /etc/init.d/flowstage-collector restart
fi
echo "Flowstage collector installed: UDP 2055 (v5, v9, IPFIX). Try:"
echo "  flowstage-collector gen --target 127.0.0.1:2055 --flows 10000"
echo "  sleep 120   # a minute bucket is written a minute after it ends"
echo "  runuser -u flowstage -- flowstage-collector report --by dst-port --from -1h"
