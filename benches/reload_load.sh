#!/usr/bin/env bash
# Requests/s of `GET /hello/world` with and without reloads: a hello plugin and a kv-store,
# `wrk -t1 -c32` on loopback; during the second half of each round, `backworks reload` is run
# every 250 ms with the greeting alternating (each reload starts a new generation of hello and
# drains the old one). Prints req/s, non-2xx answers (must be 0) and the time of each reload.
#
#   cargo build --release --workspace && benches/reload_load.sh [ROUNDS] [SECONDS]
#
# Needs wrk (Debian package `wrk`; installed here when missing). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-4}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
write() { # greeting
    cat >"$dir/backworks.yaml" <<YAML
plugin_dirs: ["$PWD/target/release"]
reload: { max_generations: 10000 }
plugins:
  hello: { path: libhello.so, config: { greeting: $1 } }
  kv: { path: libkv_store.so }
endpoints:
  hello: { path: "/hello/{name}", plugin: hello }
  kv: { path: "/kv/{key}", plugin: kv }
YAML
}
write Hello
log="$dir/server.log"
./target/release/backworks serve -c "$dir/backworks.yaml" --port 0 --admin-port 0 2>"$log" &
pid=$!
for _ in $(seq 1 200); do grep -q "backworks listening on" "$log" && break; sleep 0.05; done
url=$(grep -o "backworks listening on http://[0-9.:]*" "$log" | head -1 | awk '{print $4}')
admin=$(grep -o "admin API listening on http://[0-9.:]*" "$log" | head -1 | awk '{print $5}')
curl -s "$url/hello/world" >/dev/null
run() { # label reloading
    local out times=()
    if [ "$2" = yes ]; then
        (
            n=0
            end=$(( $(date +%s%N) + secs * 1000000000 ))
            while [ "$(date +%s%N)" -lt "$end" ]; do
                n=$((n + 1))
                if [ $((n % 2)) = 1 ]; then write Hi; else write Hello; fi
                curl -s -o /dev/null -w '%{time_total}\n' -X POST "$admin/_backworks/reload" >>"$dir/times"
                sleep 0.25
            done
        ) &
        local reloader=$!
    fi
    out=$(wrk -t1 -c32 -d"${secs}s" "$url/hello/world")
    [ "$2" = yes ] && wait "$reloader"
    printf '%-16s %10s req/s   non-2xx: %s   socket errors: %s\n' "$1" \
        "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
        "$(echo "$out" | awk '/Non-2xx/ {print $4}' | grep . || echo 0)" \
        "$(echo "$out" | awk -F'Socket errors: ' '/Socket errors/ {print $2}' | grep . || echo none)"
}
for round in $(seq 1 "$rounds"); do
    echo "round $round"
    run "no reloads" no
    run "reloading" yes
done
if [ -s "$dir/times" ]; then
    sort -n "$dir/times" | awk '{a[NR]=$1} END {printf "reloads: %d, time per reload (s): median %s, max %s\n", NR, a[int((NR+1)/2)], a[NR]}'
fi
curl -s "$admin/_backworks/plugins/hello" | python3 -c 'import json,sys; p=json.load(sys.stdin); print("hello generation", p["generation"], "retired", p["retired_generations"])'
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
