#!/usr/bin/env bash
# Installs what fieldbridge needs to build and test on Debian or Raspberry Pi OS: a C compiler
# (bundled SQLite, ring), mosquitto and its clients (the tests start their own broker on a free
# loopback port), openssl (test certificates), socat (pseudo-terminal pairs standing in for
# RS-485 cables) and a Rust toolchain (rustup, when cargo is missing); with `--tests`, also
# debootstrap and cargo-deb, which the package test (tests/packaging.rs) uses.
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

# tests/packaging.rs packs the .deb with cargo-deb (from crates.io).
export PATH="$HOME/.cargo/bin:$PATH"
if $tests && ! cargo deb --version >/dev/null 2>&1; then
  echo "setup: installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi
