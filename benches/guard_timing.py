#!/usr/bin/env python3
"""Does a cooling address's 429 take longer for some credentials than for others?

During the guard's cool-down every credential not at work gets the same 429; this
measures whether it also takes the same time. It starts each given stackgate binary on
loopback with a small config (one stack, one token), starts a cool-down with wrong
guesses, then sends, in shuffled order per round, four kinds of request on one
keep-alive connection (on connections of their own, a connection's own speed shows as a
difference between kinds): a control (an `api_key` that names no stack), the same
control again (the noise floor), an existing `api_key` with a wrong secret, and with the
right one. For each it prints the median time and in what share of rounds it was slower than
the control; a difference that is real sits outside the control-again figure.

    python3 benches/guard_timing.py [--pairs N] [--rounds R] BINARY [BINARY ...]

Binaries are measured in alternating rounds (`cargo build --release` first; pass an
older build beside it to compare). Loopback only; about 3 x N requests per round.
"""
import argparse
import hashlib
import os
import random
import socket
import statistics
import subprocess
import tempfile
import time

RIGHT = "csaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
WRONG = "cs0123456789abcdef0123456789abcdef"
KEY = "bltexisting00001"
CONFIG = """
[server]
listen = "127.0.0.1:{port}"
[upstream]
url = "http://127.0.0.1:9"
[guard]
max_failures = 5
window = "600s"
cooldown = "3600s"
[[organizations]]
uid = "o"
[[stacks]]
api_key = "{key}"
organization = "o"
[[stacks.tokens]]
uid = "a"
name = "a"
secret_sha256 = "{sha}"
scope = [{{ module = "$all", acl = {{ read = true, write = true }} }}, {{ module = "branch", branches = ["main"] }}]
"""


def request(key, secret):
    return (
        f"GET /v3/content_types/blog/entries HTTP/1.1\r\nHost: gw\r\napi_key: {key}\r\n"
        f"authorization: {secret}\r\n\r\n"
    ).encode()


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def exchange(s, data):
    """Sends one request; returns (nanoseconds to the whole answer, status line)."""
    start = time.perf_counter_ns()
    s.sendall(data)
    buf = b""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        buf += s.recv(65536)
    head = buf[:end].decode("latin-1").split("\r\n")
    length = next((int(v) for k, v in (l.split(":", 1) for l in head[1:]) if k.lower() == "content-length"), 0)
    while len(buf) < end + 4 + length:
        buf += s.recv(65536)
    return time.perf_counter_ns() - start, head[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(binary, pairs, workdir):
    port = free_port()
    config = os.path.join(workdir, f"gw-{port}.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(port=port, key=KEY, sha=hashlib.sha256(RIGHT.encode()).hexdigest()))
    log = open(os.path.join(workdir, f"gw-{port}.log"), "w+")
    gw = subprocess.Popen([binary, "run", "--config", config], stdout=subprocess.DEVNULL, stderr=log)
    try:
        for _ in range(100):
            try:
                connect(port).close()
                break
            except OSError:
                if gw.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"{binary} did not start: {log.read()}")
                time.sleep(0.05)
        guesser = connect(port)
        for i in range(8):
            exchange(guesser, request(f"bltnope{i}", WRONG))
        kinds = {
            "control (unknown api_key)": request("bltnotastack0001", WRONG),
            "control again": request("bltnotastack0001", WRONG),
            "existing api_key, wrong secret": request(KEY, WRONG),
            "existing api_key, right secret": request(KEY, RIGHT),
        }
        conn = connect(port)
        for k, data in kinds.items():
            status = exchange(conn, data)[1]
            assert " 429 " in status, f"{k}: {status} (no cool-down?)"
            for _ in range(200):
                exchange(conn, data)
        times = {k: [] for k in kinds}
        for _ in range(pairs):
            order = list(kinds)
            random.shuffle(order)
            for k in order:
                times[k].append(exchange(conn, kinds[k])[0])
        return times
    finally:
        gw.terminate()
        gw.wait()
        log.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("binaries", nargs="+")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        for r in range(args.rounds):
            for binary in args.binaries if r % 2 == 0 else reversed(args.binaries):
                times = measure(binary, args.pairs, workdir)
                control = times["control (unknown api_key)"]
                print(f"== {binary} (round {r + 1}, {args.pairs} rounds of requests)")
                for k, v in times.items():
                    if v is control:
                        print(f"  {k:32s} median {statistics.median(v) / 1000:7.2f} us")
                        continue
                    slower = sum(a > b for a, b in zip(v, control)) / len(v)
                    diff = statistics.median(a - b for a, b in zip(v, control)) / 1000
                    print(f"  {k:32s} median {statistics.median(v) / 1000:7.2f} us  "
                          f"slower than the control in {slower * 100:4.1f}%  median difference {diff:+.3f} us")


if __name__ == "__main__":
    main()
