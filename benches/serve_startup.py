#!/usr/bin/env python3
"""Start-up through `backworks serve`: N distinct plugin libraries, from the command to serving.

Writes N copies of the release `hello` plugin into a fresh 0700 folder, each renamed in its
metadata section (`name=hello` becomes `name=h0000`, `h0001`, …: distinct content and distinct
plugins, as a signature binds the plugin's name to the config entry that loads it; identical files
would share one private copy), and a `backworks.yaml` naming each of them, with one endpoint. With `--signed`
(the default), each copy is signed (`backworks plugin sign`) with a fresh key that the config
trusts, and `require_signatures: true`: every load checks the file, reads it once into its
private copy, verifies the signature and its binding, checks the metadata, opens the copy, then
creates and initializes the instance, as an operator's server does.

Each run starts `backworks serve` and reports the time from starting the process to the
"backworks listening" log line (config read, every plugin started, one round of health checks,
the listeners bound), the CPU time the server used until then (user + system, from
/proc/PID/stat), and the same for the line that says the last plugin is active. The figure
against the brief's bar (discover, check and load 100 < 300 ms) is the median of the runs. Every
plugin must be active; a run where one is not fails the script.

Standard library only. Build first, the plugin on its own, as its author builds it (built in one
command with the host, Cargo would give its tokio the host's `signal` feature, whose driver every
plugin runtime would then build):

    cargo build --release -p backworks
    cargo build --release -p backworks-example-hello

    python3 benches/serve_startup.py                    # 100 signed plugins, 5 runs
    python3 benches/serve_startup.py --plugins 1000 --unsigned
    python3 benches/serve_startup.py --plugins 1000 --unsigned --immutable   # loaded in place
    python3 benches/serve_startup.py --plugins 1000 --identical              # one file, 1000 times
    python3 benches/serve_startup.py --binary path/to/another/backworks
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def backworks(binary, *args):
    out = subprocess.run([binary, *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"backworks {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def setup(binary, hello, folder, n, signed, identical):
    original = open(hello, "rb").read()
    if original.count(b"name=hello\0") != 1 or n > 10000:
        sys.exit("expected one `name=hello` in the hello plugin's metadata, and at most 10000 plugins")
    os.chmod(folder, 0o700)
    files = []
    for i in range(n):
        path = os.path.join(folder, f"libh{i:04}.so")
        with open(path, "wb") as f:
            if identical:
                f.write(original)
            else:
                f.write(original.replace(b"name=hello\0", f"name=h{i:04}\0".encode()))
        os.chmod(path, 0o644)
        files.append(path)
    trust = ""
    if signed:
        public, secret = os.path.join(folder, "k.pub"), os.path.join(folder, "k.key")
        backworks(binary, "plugin", "keygen", "-W", "-p", public, "-s", secret)
        for path in files:
            backworks(binary, "plugin", "sign", path, "-s", secret)
        key = open(public).read().splitlines()[1]
        trust = f"trust:\n  require_signatures: true\n  keys: [\"{key}\"]\n"
    plugins = "".join(f"  h{i:04}:\n    path: {path}\n" for i, path in enumerate(files))
    config = os.path.join(folder, "backworks.yaml")
    with open(config, "w") as f:
        f.write(
            "server:\n  host: 127.0.0.1\n" + trust + "plugins:\n" + plugins
            + "endpoints:\n  hello: { path: \"/hello/{name}\", methods: [GET], plugin: h0000 }\n"
        )
    return config


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run(binary, config, log_path, n):
    log = open(log_path, "w")
    started = time.monotonic()
    proc = subprocess.Popen(
        [binary, "serve", "-c", config, "--port", "0", "--admin-port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "NO_COLOR": "1", "RUST_LOG": "info"},
    )
    marker = "backworks listening on http://"
    active = None
    try:
        deadline = started + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                sys.exit(f"backworks exited: {open(log_path).read()[-2000:]}")
            text = open(log_path).read()
            if active is None and text.count("(library) active") >= n:
                active = (time.monotonic() - started, cpu_seconds(proc.pid))
            if marker in text:
                listening = (time.monotonic() - started, cpu_seconds(proc.pid))
                if active is None:
                    sys.exit(f"listening with fewer than {n} plugins active: {text[-2000:]}")
                return active, listening
            time.sleep(0.002)
        sys.exit("backworks did not start in 120 s")
    finally:
        proc.terminate()
        proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plugins", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--unsigned", action="store_true", help="no signatures required")
    parser.add_argument(
        "--identical",
        action="store_true",
        help="byte-identical copies (one library, N instances); implies --unsigned",
    )
    parser.add_argument(
        "--immutable",
        action="store_true",
        help="mark every plugin file immutable (chattr +i; needs CAP_LINUX_IMMUTABLE): "
        "the host loads them in place, with no private copy",
    )
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/backworks"))
    parser.add_argument("--hello", default=os.path.join(ROOT, "target/release/libhello.so"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        signed = not (args.unsigned or args.identical)
        config = setup(args.binary, args.hello, folder, args.plugins, signed, args.identical)
        libraries = [os.path.join(folder, f"libh{i:04}.so") for i in range(args.plugins)]
        if args.immutable:
            subprocess.run(["chattr", "+i", *libraries], check=True)
        try:
            rows = measure(args, config, folder)
        finally:
            if args.immutable:
                subprocess.run(["chattr", "-i", *libraries], check=True)
        median = lambda k: statistics.median(r[k] for r in rows) * 1e3
        kind = "identical" if args.identical else "signed" if signed else "unsigned"
        kind += " immutable" if args.immutable else ""
        print(
            f"{args.plugins} {kind} plugins, median of {args.runs}: every plugin active "
            f"{median(0):.0f} ms (CPU {median(1):.0f} ms), listening {median(2):.0f} ms "
            f"(CPU {median(3):.0f} ms); load average {os.getloadavg()[0]:.1f}"
        )


def measure(args, config, folder):
    rows = []
    for i in range(args.runs):
        (active, active_cpu), (up, up_cpu) = run(
            args.binary, config, os.path.join(folder, "serve.log"), args.plugins
        )
        rows.append((active, active_cpu, up, up_cpu))
        print(
            f"run {i + 1}: every plugin active {active * 1e3:.0f} ms "
            f"(CPU {active_cpu * 1e3:.0f} ms), listening {up * 1e3:.0f} ms "
            f"(CPU {up_cpu * 1e3:.0f} ms)"
        )
    return rows


if __name__ == "__main__":
    main()
