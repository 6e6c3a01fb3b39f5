#!/usr/bin/env bash
# Regenerates packaging/code-order.txt, the order the release binary's code is linked in
# (packaging/cc-ordered). Two runs under callgrind give the functions executed:
#   1. `fieldbridge run` on the memory bench's workload (1,000 Modbus TCP points every second,
#      history on, the commissioning page configured but not open): what every gateway runs.
#      These come first, so a gateway touches one compact stretch of code. The page at rest
#      adds a handful of small functions; left out, each would pull a 64 KiB fault-around
#      window of its own into memory.
#   2. `fieldbridge demo`: Modbus RTU, a line device, Home Assistant discovery, commands (good
#      and bad) against simulated devices. What it adds comes next, together, touched only by
#      gateways that use it.
# Run it after a toolchain or dependency update, or when BENCHMARKS.md's code-layout figures
# slip: the list holds demangled names without hashes, so it survives rebuilds, but not renames.
# Needs valgrind, mosquitto, mosquitto-clients, binutils and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}/code-order
CARGO_PROFILE_RELEASE_STRIP=none cargo build --release --target-dir "$target"
bin=$(realpath "$target/release/fieldbridge")

dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$dir/m.conf"
mosquitto -c "$dir/m.conf" >/dev/null 2>&1 &
sleep 0.5

# 1. The memory bench's gateway, under callgrind; the profile is dumped before the bench kills it.
printf '#!/bin/sh\nexec valgrind --tool=callgrind --demangle=no --callgrind-out-file=%s/run.%%p "%s" "$@"\n' \
    "$dir" "$bin" >"$dir/gateway"
chmod +x "$dir/gateway"
# Three minutes: SQLite's first WAL checkpoint (at 4 MB of WAL) comes after one to two, and
# its code is as much a part of a running gateway as the inserts are.
BENCH_WEB=1 BENCH_GATEWAY_BIN="$dir/gateway" BENCH_MEMORY_SECS=190 cargo bench --bench gateway -- memory >/dev/null &
bench=$!
until pid=$(pgrep -f "callgrind.*$bin run -c"); do sleep 1; done
sleep 180
callgrind_control -d "$pid" >/dev/null
wait "$bench"

# 2. The demo.
valgrind --tool=callgrind --demangle=no --callgrind-out-file="$dir/demo.out" \
    "$bin" demo --mqtt "mqtt://127.0.0.1:$port" --duration 60s >/dev/null 2>&1 &
demo=$!
sleep 30
for v in 21 22.5 23; do
    mosquitto_pub -p "$port" -t demo/home/device/thermostat/command -m "{\"setpoint\": $v}"
    mosquitto_pub -p "$port" -t demo/home/device/weather/command -m '{"action": "led", "value": 1}'
    sleep 2
done
# A bad command, as users send them: the error path runs too.
mosquitto_pub -p "$port" -t demo/home/device/thermostat/command -m '{"setpoint": "warm"}'
wait "$demo"

# Executed functions: every `fn=` block of the profiles, in order of first appearance. A name
# is given once per profile, at its id's first use, which may be as a callee (`cfn=`).
awk 'match($0, /^c?fn=\([0-9]+\)/) {
        id = substr($0, index($0, "(") + 1); id = FILENAME ":" substr(id, 1, index(id, ")") - 1)
        if (length($0) > RLENGTH + 1) name[id] = substr($0, RLENGTH + 2)
        if ($0 ~ /^fn=/ && !(id in done)) { done[id] = 1; print name[id] }
    }' "$dir"/run.*.1 "$dir/demo.out" >"$dir/executed"
grep -qx 'sqlite3WalCheckpoint' "$dir/executed" ||
    echo "warning: no WAL checkpoint in the profile; its code is left out of the list" >&2
# Their demangled names, as packaging/cc-ordered names them when it links.
packaging/cc-ordered --symbols "$bin" >"$dir/symbols"
awk -F '\t' 'FNR == NR { if (!($0 in ran)) ran[$0] = FNR; next }
     ($1 in ran) { print ran[$1] "\t" $2 }' "$dir/executed" "$dir/symbols" |
    sort -n -s -k1,1 | cut -f2 | awk '!seen[$0]++' >packaging/code-order.txt
echo "packaging/code-order.txt: $(wc -l <packaging/code-order.txt) functions"
