#!/usr/bin/env bash
# The HTTP benchmark: `GET /hello/world` served by a plain axum route and by the host in each way
# it can serve the same endpoint, rounds alternated in one run, on loopback.
#
#   benches/http/run.sh [ROUNDS] [SECONDS]        # default: 6 rounds (three pairs) of 4 s per server
#   benches/http/run.sh --instructions [N]        # instructions per request (default N 2000)
#
# Servers (each started on a free port, loaded, then stopped):
#   axum      benches/http/axum_baseline.rs: the handler as a plain axum route (the baseline)
#   axum-hook the same route with the request-id plugin's work in front of it, as an axum service
#             does it (`--request-id`: tower-http's request-id layers): the like-for-like
#             baseline of `hook`
#   builtin   the host with `hello` compiled in (benches/http/builtin_host.rs)
#   so        `backworks serve`, `hello` from libhello.so
#   hook      the same behind the `request-id` plugin (before_request + after_response)
#   process   the same .so under `isolation: process`
# SERVERS="axum so" picks some. COMPARE_BIN=path/to/another/backworks adds `so@cmp` and
# `hook@cmp` rows served by that binary (an older build, for a before/after in one run);
# COMPARE_PLUGINS=DIR makes those rows load libhello.so and librequest_id.so from DIR (copies of
# an older build of the plugins, for a before/after of an SDK change), by this tree's binary
# unless COMPARE_BIN names another.
#
# --instructions counts what a request costs in instructions, which stay put on a noisy machine:
# each server runs under valgrind's callgrind (twice), serves 300 requests from one keep-alive
# client to warm up, has its counters zeroed, serves N more, and the count over N is printed.
#
# Load: wrk -t1 -c32 (installed with apt-get when missing), after a 1 s warm-up. CPU per request
# is utime + stime of the server process and its children (a process plugin's child) from
# /proc/PID/stat around the load, divided by the requests wrk counted: the steadiest figure on a
# shared machine. The ratio is req/s over the axum baseline's in the same round; the `hook` rows
# also get their ratio over `axum-hook`'s (the same work written in axum) in the same round.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
mode=load
if [[ "${1:-}" == --instructions ]]; then
    mode=instructions
    shift
fi
rounds=${1:-6}
secs=${2:-4}
servers=${SERVERS:-axum axum-hook builtin so hook process}
if [[ -n "${COMPARE_BIN:-}${COMPARE_PLUGINS:-}" ]]; then servers="$servers so@cmp hook@cmp"; fi

needs=wrk
[[ $mode == instructions ]] && needs=valgrind
if ! command -v $needs >/dev/null; then
    sudo=$([[ $(id -u) == 0 ]] || echo sudo)
    $sudo apt-get update -qq && $sudo apt-get install -y -qq $needs >/dev/null
fi
# Each on its own, as operators build the host: built in one command with an example of
# `backworks`, the host would get `backworks`'s dev-dependencies' features (tokio's `test-util`,
# whose time driver reads its clock under a lock: ~340 instructions a request more). The
# baselines are examples of a package of their own (`benches/http/Cargo.toml`) for the same reason.
cargo build --release -q -p backworks-http-bench --examples
cargo build --release -q -p backworks --bin backworks
cargo build --release -q -p backworks-example-hello -p backworks-example-request-id

work=$(mktemp -d)
pid=
cleanup() {
    [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# config NAME HELLO_ENTRY [REQUEST_ID], with the plugins of $plugins
plugins=$root/target/release
config() {
    {
        printf 'server:\n  host: 127.0.0.1\n  port: 0\n  admin:\n    port: 0\n'
        printf 'plugin_dirs:\n  - %s\n' "$plugins"
        printf 'plugins:\n  hello:\n%s\n' "$2"
        if [[ -n "${3:-}" ]]; then
            printf '  request-id:\n    type: external\n    path: librequest_id.so\n'
            printf '    hooks: [before_request, after_response]\n'
        fi
        printf 'endpoints:\n  hello:\n    path: /hello/{name}\n    methods: [GET]\n    plugin: hello\n'
    } >"$work/$1.yaml"
}
config builtin '    type: builtin'
config so $'    type: external\n    path: libhello.so'
config hook $'    type: external\n    path: libhello.so' yes
config process $'    type: external\n    path: libhello.so\n    isolation: process'
plugins=${COMPARE_PLUGINS:-$plugins}
config so@cmp $'    type: external\n    path: libhello.so'
config hook@cmp $'    type: external\n    path: libhello.so' yes

# The server command of a row.
command_of() {
    local bin=$root/target/release/backworks
    case $1 in
        axum) echo "$root/target/release/examples/http_axum_baseline 127.0.0.1:0" ;;
        axum-hook) echo "$root/target/release/examples/http_axum_baseline 127.0.0.1:0 --request-id" ;;
        builtin) echo "$root/target/release/examples/http_builtin_host $work/builtin.yaml" ;;
        *@cmp) echo "${COMPARE_BIN:-$bin} serve -c $work/$1.yaml" ;;
        *) echo "$bin serve -c $work/$1.yaml" ;;
    esac
}

# CPU clock ticks of a process and its children.
ticks() {
    local total=0 p
    for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        total=$((total + $(awk '{print $14+$15}' /proc/"$p"/stat 2>/dev/null || echo 0)))
    done
    echo "$total"
}

threads() {
    local total=0 p
    for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        total=$((total + $(awk '/^Threads:/ {print $2}' /proc/"$p"/status 2>/dev/null || echo 0)))
    done
    echo "$total"
}

hz=$(getconf CLK_TCK)
results=$work/results.tsv
# run ROUND SERVER: one load of one server; appends a line to $results.
run() {
    local log=$work/log url t0 t1 out n rps bad
    : >"$log"
    # shellcheck disable=SC2046
    $(command_of "$2") 2>"$log" &
    pid=$!
    url=$(wait_url "$log")
    if [[ -z "$url" ]] || ! curl -sf "$url/hello/world" | grep -q '"Hello, world!"'; then
        echo "$2 did not serve GET /hello/world; its log:" >&2
        cat "$log" >&2
        exit 1
    fi
    wrk -t1 -c32 -d1s "$url/hello/world" >/dev/null
    t0=$(ticks "$pid")
    out=$(wrk -t1 -c32 -d"${secs}s" "$url/hello/world")
    t1=$(ticks "$pid")
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    bad=$(echo "$out" | awk '/Non-2xx/ {print $NF} /Socket errors/ {print "socket-errors"}' | paste -sd, -)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$rps" \
        "$(python3 -c "print(round(($t1-$t0)*1e6/$hz/$n, 2))")" "$(threads "$pid")" "${bad:-0}" \
        | tee -a "$results"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
}

# wait_url LOG: the URL a server said it listens on (empty if it did not within a minute).
wait_url() {
    local url=
    for _ in $(seq 1 1200); do
        # Whole lines only: a line still being written may hold half the port.
        url=$(python3 -c 'import re, sys
text = open(sys.argv[1], errors="replace").read()
lines = [l for l in text[: text.rfind("\n") + 1].splitlines() if "admin API" not in l]
found = [m.group(0) for l in lines for m in [re.search(r"listening on (http://[0-9.:]+)", l)] if m]
print(found[0].split()[-1] if found else "")' "$1")
        [[ -n "$url" ]] && break
        sleep 0.05
    done
    echo "$url"
}

# requests URL N: N keep-alive GET /hello/world, each checked.
requests() {
    python3 - "$1" "$2" <<'PY'
import http.client, sys, urllib.parse
url = urllib.parse.urlparse(sys.argv[1])
conn = http.client.HTTPConnection(url.hostname, url.port)
for _ in range(int(sys.argv[2])):
    conn.request("GET", "/hello/world")
    response = conn.getresponse()
    assert response.status == 200 and b"Hello, world!" in response.read(), response.status
PY
}

# instructions SERVER N: the instructions of the server process per request over N requests,
# counted from after 300 warm-up requests (which also take one-time costs such as the clock's
# calibration) to a dump after the N.
instructions() {
    local log=$work/log out=$work/callgrind.out url
    : >"$log"
    rm -f "$out"*
    # shellcheck disable=SC2046
    valgrind --tool=callgrind --callgrind-out-file="$out" --log-file="$work/valgrind.log" \
        $(command_of "$1") 2>"$log" &
    pid=$!
    url=$(wait_url "$log")
    if [[ -z "$url" ]]; then
        echo "$1 did not start under valgrind; its log:" >&2
        cat "$log" "$work/valgrind.log" >&2
        exit 1
    fi
    requests "$url" 300
    callgrind_control -z "$pid" >/dev/null 2>&1
    requests "$url" "$2"
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
    echo $(($(awk '/^summary:/ {print $2}' "$out.1") / $2))
}

if [[ $mode == instructions ]]; then
    n=${1:-2000}
    read -r -a list <<<"$servers"
    printf '%-10s %s\n' server "instructions/request (callgrind, $n requests after 300, two runs)"
    for server in "${list[@]}"; do
        printf '%-10s %s %s\n' "$server" "$(instructions "$server" "$n")" "$(instructions "$server" "$n")"
    done
    exit 0
fi

read -r -a list <<<"$servers"
echo "round	server	req/s	CPU us/req	threads	non-2xx"
n_servers=${#list[@]}
for round in $(seq 1 "$rounds"); do
    # Rounds go in pairs: the second of a pair runs the first's order backwards, so a drift of the
    # machine's load over a pair weighs on every server alike (each one's mean place in the pair
    # is the middle). Each pair starts one server later than the one before, so no server always
    # follows the same one.
    shift_by=$(((round - 1) / 2))
    for i in "${!list[@]}"; do
        place=$i
        ((round % 2 == 0)) && place=$((n_servers - 1 - i))
        run "$round" "${list[$(((place + shift_by) % n_servers))]}"
    done
done

python3 - "$results" "$servers" <<'PY'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
order = sys.argv[2].split()
by = {}
for rnd, server, rps, cpu, threads, bad in rows:
    by.setdefault(server, {})[rnd] = (float(rps), float(cpu), int(threads), bad)
base = by.get("axum", {})
like = by.get("axum-hook", {})


def ratio_over(got, to):
    """The median and range of the per-round ratios of `got`'s req/s over `to`'s."""
    ratios = [got[r][0] / to[r][0] for r in got if r in to]
    if not ratios:
        return "-"
    return f"{statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})"


print()
print(f"{'server':10} {'req/s (median)':>15} {'ratio to axum':>22} {'to axum-hook':>22} {'CPU us/req':>11} {'+CPU us':>8} {'threads':>8}")
for server in order:
    got = by[server]
    rps = statistics.median(v[0] for v in got.values())
    cpu = statistics.median(v[1] for v in got.values())
    threads = max(v[2] for v in got.values())
    ratio = ratio_over(got, base)
    like_ratio = ratio_over(got, like) if server.startswith("hook") else "-"
    extra = f"{cpu - statistics.median(v[1] for v in base.values()):+.2f}" if base else "-"
    print(f"{server:10} {rps:>15,.0f} {ratio:>22} {like_ratio:>22} {cpu:>11.2f} {extra:>8} {threads:>8}")
PY
