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
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from guard_timing import CONFIG, KEY, RIGHT, exchange, free_port  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=250_000)
    ap.add_argument("binary")
    args = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        config = os.path.join(d, "gw.toml")
        with open(config, "w") as f:
            text = CONFIG.format(port=port, key=KEY, sha=hashlib.sha256(RIGHT.encode()).hexdigest())
            f.write(text.replace("[upstream]", 'trusted_proxies = ["127.0.0.1"]\n[upstream]', 1))
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
                    request = (f"GET /v3/content_types/blog/entries HTTP/1.1\r\nHost: gw\r\napi_key: {KEY}\r\n"
                               f"authorization: cs0123456789abcdef0123456789abcdef\r\nX-Forwarded-For: {address}\r\n\r\n")
                    times.append(exchange(s, request.encode())[0])
                medians.append(statistics.median(times) / 1000)
            print(f"{args.binary}: {args.requests} new addresses; median us per tenth:",
                  " ".join(f"{m:.0f}" for m in medians), f"({time.time() - started:.1f} s)")
        finally:
            gw.terminate()
            gw.wait()


if __name__ == "__main__":
    main()
