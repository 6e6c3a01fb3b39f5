#!/usr/bin/env bash
# Cross-builds fieldbridge for Raspberry Pi — arm64 (aarch64) and 32-bit (armv7) — on an x86_64
# Debian machine, and packs a .deb for each with cargo-deb. Installs what it needs when missing:
# Debian's cross gcc and libc, the rustup targets, cargo-deb.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
need() { command -v "$1" >/dev/null 2>&1 || packages+=("${@:2}"); }
need aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu libc6-dev-arm64-cross
need arm-linux-gnueabihf-gcc gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
if [ "${#packages[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${packages[@]}"
fi

targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
rustup target add "${targets[@]}"
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked

for t in "${targets[@]}"; do
  # The release profile strips the binary; the demo's broker is left out (no `demo` feature).
  cargo build --release --target "$t"
  cargo deb --no-build --no-strip --target "$t"
done
ls -l target/*/release/fieldbridge target/debian/*.deb
