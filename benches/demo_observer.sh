#!/usr/bin/env bash
# Requests/s of the demo (`backworks.yaml`) with the Python `report` plugin on the request path
# (`hooks: [after_response]`, as before issue #8) and off it (`hooks: [observe]`, as now), rounds
# alternated in one run, with the server's CPU time per request.
#
#   cargo build --release --workspace && benches/demo_observer.sh [ROUNDS] [SECONDS]
#
# Needs wrk (Debian package `wrk`; installed here when missing). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-4}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
before=$(mktemp -p . .demo-before-XXXX.yaml)
trap 'rm -f "$before"' EXIT
sed 's/    hooks: \[observe\]/    hooks: [after_response]/' backworks.yaml >"$before"

run() { # config label
    local log pid url t0 t1 out n
    log=$(mktemp)
    ./target/release/backworks serve -c "$1" --port 0 --admin-port 0 2>"$log" &
    pid=$!
    for _ in $(seq 1 200); do grep -q "backworks listening on" "$log" && break; sleep 0.05; done
    url=$(grep -o "backworks listening on http://[0-9.:]*" "$log" | head -1 | awk '{print $4}')
    curl -s "$url/hello/world" >/dev/null
    sleep 0.5
    t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
    out=$(wrk -t1 -c32 -d"${secs}s" "$url/hello/world")
    t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    rm -f "$log"
    # Clock ticks are 10 ms here: ticks * 10000 / requests = µs per request.
    printf '%-28s %10s req/s %6s us CPU/request (server process only)\n' "$2" \
        "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
        "$(python3 -c "print(round(($t1-$t0)*10000/$n, 1))")"
}

for round in $(seq 1 "$rounds"); do
    echo "round $round"
    run "$before" "report as after_response"
    run backworks.yaml "report as observer"
done
