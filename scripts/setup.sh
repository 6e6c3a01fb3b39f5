#!/usr/bin/env bash
# Installs what fieldbridge needs to build and test on Debian or Raspberry Pi OS: a C compiler
# (bundled SQLite, ring), mosquitto and its clients (the tests start their own broker on a free
# loopback port), openssl (test certificates), socat (pseudo-terminal pairs standing in for
# RS-485 cables) and a Rust toolchain (rustup, when cargo is missing); with `--tests`, also
# debootstrap and cargo-deb, which the package test (tests/packaging.rs) uses, PostgreSQL for
# the history forwarding tests (tests/forward.rs), started and reachable as below, and Home
# Assistant in a venv of its own for the Home Assistant tests (tests/homeassistant.rs,
# tests/ha_live.rs).
# Safe to run again: it installs only what is missing.
set -euo pipefail
tests=false
[ "${1:-}" = "--tests" ] && tests=true

packages=()
need() { command -v "$1" >/dev/null 2>&1 || packages+=("$2"); }
need cc build-essential
need pkg-config pkg-config
need mosquitto mosquitto
need mosquitto_sub mosquitto-clients
need mosquitto_passwd mosquitto
need openssl openssl
need socat socat
need curl curl
# tests/packaging.rs installs the .deb in a throwaway Debian root and boots it with
# systemd-nspawn (tests/booted.rs).
$tests && need debootstrap debootstrap
$tests && need systemd-nspawn systemd-container
# tests/forward.rs: a PostgreSQL server (and initdb, for the tests' private clusters).
if $tests; then
  need psql postgresql-client
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || packages+=(postgresql)
  need make-ssl-cert ssl-cert
fi
# tests/web.rs drives the commissioning page in Debian's headless Chromium (through its
# chromedriver).
$tests && need chromium chromium
$tests && need chromedriver chromium-driver
# tests/power_cut.rs restarts the gateway under libfaketime (a clock stepped across the command
# id window, as NTP does on a Pi without a real-time clock).
$tests && need faketime faketime
# tests/ha_live.rs runs Home Assistant in a private network namespace.
$tests && need unshare util-linux
$tests && need ip iproute2
# The system CA bundle: the default roots for an mqtts:// broker (and for the TLS tests).
[ -f /etc/ssl/certs/ca-certificates.crt ] || packages+=(ca-certificates)

if [ "${#packages[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${packages[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${packages[@]}"
fi

# The distribution's rustc is too old (sqlx 0.9 needs 1.94); use rustup's stable toolchain.
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  echo "setup: installing the Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi

# tests/forward.rs uses the PostgreSQL on 127.0.0.1:5432 as the user postgres without a
# password (each test makes and drops a database of its own), over TLS too. Start it where it
# is not running (there is no systemd on CI machines), and where it asks for a password or has
# TLS off, make it trust 127.0.0.1 and turn TLS on with the machine's snakeoil certificate.
if $tests; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  pg() { psql -X -w -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atc "$1" 2>/dev/null; }
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$ver" ]; then
    ver=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    echo "setup: creating PostgreSQL cluster $ver/main"
    $sudo pg_createcluster "$ver" main
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "setup: starting PostgreSQL $ver/main"
    $sudo pg_ctlcluster --skip-systemctl-redirect "$ver" main start
    for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  fi
  if [ "$(pg 'SELECT 1')" != 1 ]; then
    echo "setup: PostgreSQL $ver/main: trusting user postgres on 127.0.0.1 (for the tests)"
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    $sudo sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
    $sudo pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
    sleep 1
  fi
  if [ "$(pg 'SHOW ssl')" != on ]; then
    echo "setup: PostgreSQL $ver/main: turning TLS on with the snakeoil certificate"
    [ -f /etc/ssl/certs/ssl-cert-snakeoil.pem ] || $sudo make-ssl-cert generate-default-snakeoil
    $sudo usermod -a -G ssl-cert postgres
    pg "ALTER SYSTEM SET ssl_cert_file = '/etc/ssl/certs/ssl-cert-snakeoil.pem'" >/dev/null
    pg "ALTER SYSTEM SET ssl_key_file = '/etc/ssl/private/ssl-cert-snakeoil.key'" >/dev/null
    pg "ALTER SYSTEM SET ssl = on" >/dev/null
    $sudo pg_ctlcluster --skip-systemctl-redirect "$ver" main restart
    for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  fi
  [ "$(pg 'SHOW ssl')" = on ] || { echo "setup: PostgreSQL on 127.0.0.1:5432 is not usable for the tests" >&2; exit 1; }
fi

# tests/packaging.rs packs the .deb with cargo-deb (from crates.io).
export PATH="$HOME/.cargo/bin:$PATH"
if $tests && ! cargo deb --version >/dev/null 2>&1; then
  echo "setup: installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi

# Home Assistant for the tests, from PyPI, pinned (tests/ha/constraints.txt): a venv outside the
# repository (~850 MB, about 5 minutes to make), made again only when the pins change.
# FIELDBRIDGE_HA_VENV puts it elsewhere. Home Assistant 2025.4 needs Python 3.13.
if $tests; then
  ha_version=2025.4.4
  constraints="$(cd "$(dirname "$0")/.." && pwd)/tests/ha/constraints.txt"
  ha_venv="${FIELDBRIDGE_HA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/fieldbridge/ha-$ha_version}"
  if ! cmp -s "$constraints" "$ha_venv/.fieldbridge-constraints"; then
    python=""
    for p in "$(pyenv root 2>/dev/null)/versions/3.13.0/bin/python" \
             "$HOME/.pyenv/versions/3.13.0/bin/python" "$(command -v python3.13 || true)"; do
      if [ -x "$p" ]; then python="$p"; break; fi
    done
    if [ -z "$python" ]; then
      echo "setup: Home Assistant $ha_version needs Python 3.13 (pyenv install 3.13.0)" >&2
      exit 1
    fi
    echo "setup: installing Home Assistant $ha_version in $ha_venv"
    rm -rf "$ha_venv"
    "$python" -m venv "$ha_venv"
    "$ha_venv/bin/pip" install --quiet --disable-pip-version-check -c "$constraints" \
      "homeassistant==$ha_version" home-assistant-frontend paho-mqtt
    cp "$constraints" "$ha_venv/.fieldbridge-constraints"
  fi
fi
