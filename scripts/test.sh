#!/usr/bin/env bash
# The whole test suite. On a fresh Debian 12 machine, as root, it first installs what
# the tests need (PostgreSQL 15 server binaries, tshark, softflowd, nfdump, pmacct's
# sfacctd, net-snmp's snmpd and snmpget as a real SNMP agent and client on loopback,
# and DuckDB from PyPI in a virtualenv under target/, to read the Parquet archive); the
# tests start their own PostgreSQL clusters and collectors and stop them at the end. As root
# on Debian/Ubuntu it also runs the installer's end-to-end test, which really installs
# the appliance on this machine and uninstalls it again (FLOWSTAGE_E2E_INSTALL=0 skips
# it).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15 postgresql-client-15)
command -v tshark >/dev/null || need+=(tshark)
command -v mergecap >/dev/null || need+=(wireshark-common)
command -v softflowd >/dev/null || need+=(softflowd)
command -v nfcapd >/dev/null || need+=(nfdump)
[ -x /usr/sbin/sfacctd ] || need+=(pmacct)
command -v runuser >/dev/null || need+=(util-linux)
command -v systemd-analyze >/dev/null || need+=(systemd)
[ -x /usr/sbin/snmpd ] || need+=(snmpd)
command -v snmpget >/dev/null || need+=(snmp)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "test.sh: missing packages: ${need[*]}; install them or run as root" >&2
        exit 1
    fi
    echo "test.sh: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi

[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if ! command -v cargo >/dev/null; then
    # Debian 12's rustc is older than 1.85: the stable toolchain comes from rustup.
    echo "test.sh: installing the Rust toolchain with rustup (https://rustup.rs)"
    command -v curl >/dev/null || { apt-get update -q && apt-get install -y -q curl ca-certificates; }
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --profile minimal --default-toolchain stable --component rustfmt,clippy
    . "$HOME/.cargo/env"
fi
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
if [ "$(id -u)" -eq 0 ] && [ -f /etc/debian_version ]; then
    export FLOWSTAGE_E2E_INSTALL=${FLOWSTAGE_E2E_INSTALL:-1}
fi
# DuckDB reads the archive in the tests, as an operator's tools would.
if [ ! -x target/pyenv/bin/python ] || ! target/pyenv/bin/python -c 'import duckdb' 2>/dev/null; then
    mkdir -p target
    python3 -m venv target/pyenv
    target/pyenv/bin/pip install -q --disable-pip-version-check duckdb \
        || echo "test.sh: WARNING: could not install duckdb from PyPI; the archive tests will skip their DuckDB read-back" >&2
fi
export FLOWSTAGE_PYTHON="$PWD/target/pyenv/bin/python"
if target/pyenv/bin/python -c 'import duckdb' 2>/dev/null; then
    export FLOWSTAGE_REQUIRE_DUCKDB=1
fi
# The packages above include the browser, so its test must run, not skip.
export FLOWSTAGE_REQUIRE_BROWSER=1
cargo test --locked --all-targets
