#!/usr/bin/env python3
"""What spinning costs over HTTP: CPU per request and latency, with the default settings (the
adaptive spin, 50 µs) and with `spin_us: 0`, and what an idle plugin costs.

Serves the `noop` library under `isolation: process` with the real `backworks serve`, sends
requests from this script (`http.client`, keep-alive), and reads the CPU time of the server and
of the plugin's child from /proc/PID/stat before and after. Each load with the default and with
`spin_us: 0`, one after the other in one run:

- one client, a request every 1 ms (sparse traffic);
- one client, back to back;
- four clients (threads), back to back, twice;
- idle: 10 s without requests right after 2,000 back to back (target: ≈ 0 CPU).

Run from the repository root, after `cargo build --release -p backworks-fixture-noop --example noop`
and then `cargo build --release -p backworks --bin backworks` (on its own: built together with an
example, the host would get the dev-dependencies' features, tokio's `test-util` among them):

    python3 benches/spin_cost.py

Results and what they mean are in BENCHMARKS.md ("What spinning costs, over HTTP").
"""

import http.client
import json
import os
import re
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXE = os.path.join(ROOT, "target", "release", "backworks")
LIB = os.path.join(ROOT, "target", "release", "examples", "libnoop.so")


def cpu_seconds(pid):
    """User plus system CPU time of process `pid`, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """`backworks serve` with the noop library under process isolation and `spin_us` (`None`: the
    default)."""

    def __init__(self, spin_us, folder):
        config = os.path.join(folder, f"spin{spin_us}.yaml")
        spin = "" if spin_us is None else f", spin_us: {spin_us}"
        with open(config, "w") as f:
            f.write(
                "server: { admin: { port: 0 } }\n"
                "plugins:\n"
                f'  noop: {{ path: "{LIB}", isolation: process{spin} }}\n'
                "endpoints:\n"
                '  noop: { path: "/noop/{id}", plugin: noop, hooks: [] }\n'
            )
        self.log_path = os.path.join(folder, f"spin{spin_us}.log")
        env = {**os.environ, "NO_COLOR": "1", "RUST_LOG": "warn,backworks=info"}
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [EXE, "serve", "-c", config, "--port", "0", "--admin-port", "0"],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )
        self.port, admin = self._addresses()
        admin_api = http.client.HTTPConnection("127.0.0.1", admin)
        admin_api.request("GET", "/_backworks/plugins/noop")
        self.child = json.loads(admin_api.getresponse().read())["process"]["pid"]

    def _addresses(self):
        deadline = time.time() + 60
        while time.time() < deadline:
            with open(self.log_path) as f:
                text = f.read()
            public = re.search(r"backworks listening on http://127\.0\.0\.1:(\d+) .*\n", text)
            admin = re.search(r"admin API listening on http://127\.0\.0\.1:(\d+) ", text)
            if public and admin:
                return int(public.group(1)), int(admin.group(1))
            if self.process.poll() is not None:
                raise SystemExit(f"backworks exited:\n{text}")
            time.sleep(0.05)
        raise SystemExit("backworks did not start within 60 s")

    def cpu(self):
        return cpu_seconds(self.process.pid) + cpu_seconds(self.child)

    def stop(self):
        self.process.terminate()
        self.process.wait()


def one_client(server, requests, gap):
    """Returns (CPU µs per request, sorted latencies in seconds)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port)
    for _ in range(200):  # warm-up
        conn.request("GET", "/noop/1")
        conn.getresponse().read()
    before = server.cpu()
    latencies = []
    for _ in range(requests):
        start = time.perf_counter()
        conn.request("GET", "/noop/1")
        conn.getresponse().read()
        latencies.append(time.perf_counter() - start)
        if gap:
            time.sleep(gap)
    used = server.cpu() - before
    return used / requests * 1e6, sorted(latencies)


def many_clients(server, clients, requests):
    """Returns (requests per second, CPU µs per request)."""

    def work():
        conn = http.client.HTTPConnection("127.0.0.1", server.port)
        for _ in range(requests):
            conn.request("GET", "/noop/1")
            conn.getresponse().read()

    before, start = server.cpu(), time.time()
    threads = [threading.Thread(target=work) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, used = time.time() - start, server.cpu() - before
    total = clients * requests
    return total / wall, used / total * 1e6


def label(spin):
    return "default  " if spin is None else f"spin_us={spin:<2}"


def main():
    with tempfile.TemporaryDirectory() as folder:
        for name, requests, gap in [("a request every 1 ms", 2000, 0.001), ("back to back", 5000, 0)]:
            for spin in (None, 0):
                server = Server(spin, folder)
                cpu, lat = one_client(server, requests, gap)
                server.stop()
                print(
                    f"{label(spin)}, one client, {name} ({requests}): {cpu:.0f} µs CPU/request, "
                    f"HTTP p50 {lat[len(lat) // 2] * 1e6:.0f} µs, p99 {lat[len(lat) * 99 // 100] * 1e6:.0f} µs"
                )
        for spin in (None, 0, None, 0):
            server = Server(spin, folder)
            rps, cpu = many_clients(server, 4, 3000)
            server.stop()
            print(f"{label(spin)}, four clients, back to back (4 x 3000): {rps:.0f} req/s, {cpu:.0f} µs CPU/request")
        for spin in (None, 0):
            server = Server(spin, folder)
            one_client(server, 2000, 0)
            before = server.cpu()
            time.sleep(10)
            used = server.cpu() - before
            server.stop()
            print(f"{label(spin)}, idle for 10 s after 2000 requests: {used * 1e3:.0f} ms CPU (server and child)")


if __name__ == "__main__":
    main()
