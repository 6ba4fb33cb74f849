#!/usr/bin/env python3
"""Cold start: N concurrent requests to a handler that awaits 100 ms, against a server that has
just started (the brief's bar: 1,000 of them in < 0.5 s, not slowed by a small listen backlog).

Each run starts `backworks serve` on a fresh port, waits for the "listening" log line, then at once
opens N connections to 127.0.0.1 and sends `GET /sleep/<ms>` on each (the async-clock plugin);
"cold" is the time from the first connect to the last response. A second burst on the same server
is the "warm" figure. A listen backlog smaller than the burst makes the kernel drop SYNs, which the
client retries after 1 s: that second is what the cold figure shows.

The figure against the target: the median cold time of the runs, beside the warm burst of the
same runs (the baseline: the same server once it has served a burst) and the floor (the handler's
own sleep). Every request must be answered 200; a run where one is not fails the script.

Standard library only. Build first: cargo build --release -p backworks -p backworks-example-async-clock

    python3 benches/cold_burst.py                     # 3 runs, default backlog (4096)
    python3 benches/cold_burst.py --backlog 128       # the old backlog
    python3 benches/cold_burst.py --binary path/to/another/backworks
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(plugin_dir, backlog):
    server = f"  backlog: {backlog}\n" if backlog else ""
    return (
        f"server:\n  host: 127.0.0.1\n{server}"
        f"plugin_dirs: [\"{plugin_dir}\"]\n"
        "plugins:\n  async-clock:\n    path: libasync_clock.so\n"
        "endpoints:\n  sleep: { path: \"/sleep/{ms}\", methods: [GET], plugin: async-clock }\n"
    )


def start(binary, config_path, log_path):
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [binary, "serve", "-c", config_path, "--port", "0", "--admin-port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "NO_COLOR": "1", "RUST_LOG": "info"},
    )
    marker = "backworks listening on http://"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(log_path) as f:
            for line in f:
                if marker in line:
                    address = line.split(marker, 1)[1].split()[0]
                    host, port = address.rsplit(":", 1)
                    return proc, host, int(port)
        if proc.poll() is not None:
            sys.exit(f"backworks exited:\n{open(log_path).read()}")
        time.sleep(0.002)
    proc.kill()
    sys.exit("backworks did not start")


async def one(host, port, path):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer.startswith(b"HTTP/1.1 200")


async def burst(host, port, n, sleep_ms):
    started = time.perf_counter()
    results = await asyncio.gather(
        *(one(host, port, f"/sleep/{sleep_ms}") for _ in range(n)), return_exceptions=True
    )
    elapsed = time.perf_counter() - started
    ok = sum(1 for r in results if r is True)
    return elapsed, ok


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default=os.path.join(ROOT, "target/release/backworks"))
    p.add_argument("--plugins", default=os.path.join(ROOT, "target/release"))
    p.add_argument("--backlog", type=int, help="server.backlog (default: the server's default)")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--sleep-ms", type=int, default=100)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--target", type=float, default=0.5, help="seconds (the brief's bar)")
    args = p.parse_args()

    colds, warms, failed = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        config_path = os.path.join(tmp, "backworks.yaml")
        with open(config_path, "w") as f:
            f.write(config(args.plugins, args.backlog))
        for run in range(args.runs):
            proc, host, port = start(args.binary, config_path, os.path.join(tmp, "log"))
            try:
                cold, cold_ok = asyncio.run(burst(host, port, args.requests, args.sleep_ms))
                warm, warm_ok = asyncio.run(burst(host, port, args.requests, args.sleep_ms))
            finally:
                proc.terminate()
                proc.wait(timeout=60)
            colds.append(cold)
            warms.append(warm)
            failed += (args.requests - cold_ok) + (args.requests - warm_ok)
            print(
                f"run {run + 1}: cold {cold:.3f} s ({cold_ok}/{args.requests} ok), "
                f"warm {warm:.3f} s ({warm_ok}/{args.requests} ok)"
            )
    cold, warm = statistics.median(colds), statistics.median(warms)
    verdict = "met" if cold < args.target and failed == 0 else "NOT met"
    print(
        f"median of {args.runs}: cold {cold:.3f} s (range {min(colds):.3f}-{max(colds):.3f}), "
        f"warm {warm:.3f} s (range {min(warms):.3f}-{max(warms):.3f}), "
        f"floor {args.sleep_ms / 1000:.3f} s"
    )
    print(
        f"target: {args.requests} concurrent {args.sleep_ms} ms requests right after start "
        f"in < {args.target} s: {verdict} (cold {cold:.3f} s, {failed} not answered 200)"
    )
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
