#!/usr/bin/env bash
# Runs the cross-built binaries under qemu-user: `check` on the example config, and a bounded
# `demo --mqtt` against a mosquitto started here on a free loopback port, which must publish
# readings. Needs packaging/build-debs.sh first, and qemu-user + mosquitto-clients.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v qemu-aarch64 >/dev/null 2>&1 || { sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get install -y -q qemu-user; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" > "$dir/m.conf"
mosquitto -c "$dir/m.conf" >/dev/null 2>&1 &
sleep 0.5

run() { # qemu, sysroot, target
  local bin="target/$3/release/fieldbridge"
  echo "== $3 ($(stat -c %s "$bin") bytes)"
  "$1" -L "$2" "$bin" check -c config.example.toml | head -1
  timeout 10 mosquitto_sub -p "$port" -t 'demo/+/sensor/#' -C 6 > "$dir/$3.txt" &
  local sub=$!
  "$1" -L "$2" "$bin" demo --mqtt "mqtt://127.0.0.1:$port" --duration 8s > /dev/null
  wait "$sub" || true
  echo "readings received: $(wc -l < "$dir/$3.txt")"
  head -3 "$dir/$3.txt"
  [ "$(wc -l < "$dir/$3.txt")" -ge 6 ]
}
run qemu-aarch64 /usr/aarch64-linux-gnu aarch64-unknown-linux-gnu
run qemu-arm /usr/arm-linux-gnueabihf armv7-unknown-linux-gnueabihf
echo "qemu smoke: ok"
