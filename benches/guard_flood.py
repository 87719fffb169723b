#!/usr/bin/env python3
"""What a failure from a new address costs while the guard's table fills up.

Starts a stackgate binary on loopback that trusts 127.0.0.1 as a proxy, then sends N
wrong guesses on one keep-alive connection, each with a new `X-Forwarded-For` address
(a flood of forwarded or IPv6 addresses, each a new entry in the guard's table). Prints
the median time per request for each tenth of the run: flat means a new entry costs the
same however many there are.

    python3 benches/guard_flood.py [--requests N] BINARY

Loopback only; N requests (250,000 take about 5 s against a release build).
"""
import argparse
import hashlib
import os
import socket
import statistics
import subprocess
import tempfile
import time

CONFIG = """
[server]
listen = "127.0.0.1:{port}"
trusted_proxies = ["127.0.0.1"]
[upstream]
url = "http://127.0.0.1:9"
[guard]
max_failures = 50
window = "600s"
cooldown = "600s"
[[organizations]]
uid = "o"
[[stacks]]
api_key = "bltstackA"
organization = "o"
[[stacks.tokens]]
uid = "a"
name = "a"
secret_sha256 = "{sha}"
scope = [{{ module = "$all", acl = {{ read = true, write = true }} }}, {{ module = "branch", branches = ["main"] }}]
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exchange(s, data):
    start = time.perf_counter_ns()
    s.sendall(data)
    buf = b""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        buf += s.recv(65536)
    head = buf[:end].decode("latin-1").split("\r\n")
    length = next((int(v) for k, v in (l.split(":", 1) for l in head[1:]) if k.lower() == "content-length"), 0)
    while len(buf) < end + 4 + length:
        buf += s.recv(65536)
    return time.perf_counter_ns() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=250_000)
    ap.add_argument("binary")
    args = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        config = os.path.join(d, "gw.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(port=port, sha=hashlib.sha256(b"cs" + b"a" * 32).hexdigest()))
        env = dict(os.environ, RUST_LOG="warn")
        gw = subprocess.Popen([args.binary, "run", "--config", config], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env)
        try:
            for _ in range(100):
                try:
                    s = socket.create_connection(("127.0.0.1", port))
                    break
                except OSError:
                    time.sleep(0.05)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            step = args.requests // 10
            medians, started = [], time.time()
            for tenth in range(10):
                times = []
                for i in range(tenth * step, (tenth + 1) * step):
                    address = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
                    request = (f"GET /v3/content_types/blog/entries HTTP/1.1\r\nHost: gw\r\napi_key: bltstackA\r\n"
                               f"authorization: cs0123456789abcdef0123456789abcdef\r\nX-Forwarded-For: {address}\r\n\r\n")
                    times.append(exchange(s, request.encode()))
                medians.append(statistics.median(times) / 1000)
            print(f"{args.binary}: {args.requests} new addresses; median us per tenth:",
                  " ".join(f"{m:.0f}" for m in medians), f"({time.time() - started:.1f} s)")
        finally:
            gw.terminate()
            gw.wait()


if __name__ == "__main__":
    main()
