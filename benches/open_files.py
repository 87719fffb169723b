#!/usr/bin/env python3
"""Many connections to proxies started under a given open-file limit.

A shell or a service manager often starts a process with a soft open-file limit of
1,024 under a far higher hard one. This starts nginx and HAProxy (as the load run
configures them, all cores) and each stackgate binary given, every one of them under
`prlimit --nofile=SOFT:HARD`, in front of an nginx backend started without it; then runs
`wrk -t2 -cCONNS` against each in turn and prints, per proxy, the limit it ended up
with (from /proc), requests, req/s, non-2xx answers and socket errors.

    python3 benches/open_files.py [BINARY...]      # default: target/dist/stackgate
    SOFT=1024 HARD=20000 CONNS=2000 DURATION=5 python3 benches/open_files.py OLD NEW

Needs the load run's peers (nginx, haproxy, wrk: benches/load.sh installs them), prlimit
(util-linux) and the seed_store example (target/dist/examples). Loopback only; each run
lasts DURATION seconds. The hard limit must not exceed this shell's (`ulimit -Hn`)
unless run as root.
"""
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load as L  # noqa: E402

SOFT = int(os.environ.get("SOFT", "1024"))
HARD = int(os.environ.get("HARD", "20000"))
CONNS = int(os.environ.get("CONNS", "2000"))
DURATION = int(os.environ.get("DURATION", "5"))


def limited(cmd):
    return ["prlimit", f"--nofile={SOFT}:{HARD}", "--"] + cmd


def open_file_limits(pid):
    """The (soft, hard) open-file limits of pid's last descendant (nginx's worker)."""
    line = next(x for x in open(f"/proc/{L.proc_tree(pid)[-1]}/limits") if x.startswith("Max open files"))
    return tuple(line.split()[3:5])


def main():
    binaries = sys.argv[1:] or [L.BIN]
    shape = L.Shape("all")
    procs = []
    # Every peer started through prlimit (the backend, started first, without it).
    plain_start = L.start
    with tempfile.TemporaryDirectory() as d:
        try:
            bport = L.free_port()
            backend = L.start_nginx(shape, d, "backend", L.NGINX_BACKEND, None, port=bport)
            procs.append(backend)
            L.wait_port(bport, proc=backend)
            L.start = lambda cmd, cpu, log=None, **kw: plain_start(limited(cmd), cpu, log, **kw)
            small = os.path.join(d, "small")
            L.seed(small, 34, 30, bport, "127.0.0.1:0")
            # The default cap, not the load run's 100,000: what a user's config has.
            base = open(os.path.join(small, "stackgate.toml")).read().replace("max_connections = 100000\n", "")
            targets = []
            port = L.free_port()
            p = L.start_nginx(shape, d, "proxy", L.NGINX_PROXY, None, backend=bport, listen=f"listen 127.0.0.1:{port};")
            procs.append(p)
            targets.append(("nginx", p, port))
            port = L.free_port()
            p = L.start_haproxy(shape, d, "plain", [f"bind 127.0.0.1:{port}"], bport)
            procs.append(p)
            targets.append(("HAProxy", p, port))
            for i, binary in enumerate(binaries):
                cfg = os.path.join(small, f"sg{i}.toml")
                open(cfg, "w").write(L.own_store(small, base, f"sg{i}"))
                env = dict(os.environ, RUST_LOG="warn")
                p = subprocess.Popen(limited([binary, "run", "--config", cfg]), stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
                procs.append(p)
                m = re.search(r"listening on http://[\d.]+:(\d+)", p.stdout.readline())
                if not m:
                    raise RuntimeError(f"{binary} did not start")
                targets.append((f"stackgate {os.path.basename(binary)}" if len(binaries) > 1 else "stackgate",
                                p, int(m.group(1))))
            started = []
            for name, p, port in targets:
                try:
                    L.wait_port(port, proc=p)
                    started.append((name, p, port))
                except RuntimeError:
                    # HAProxy, say, refuses to start when the hard limit cannot hold its maxconn.
                    print(f"{name} did not start under this limit (exit {p.poll()})")
            i = 777
            headers = [f"api_key: blt{i // 30:016x}", f"authorization: cs{i:032x}", "branch: main"]
            print(f"prlimit --nofile={SOFT}:{HARD}; wrk -t2 -c{CONNS} -d{DURATION}s, nothing pinned")
            print("| proxy | open-file limit (soft, hard) | requests | req/s | non-2xx | socket errors |")
            print("|---|---|---|---|---|---|")
            for name, p, port in started:
                cmd = ["wrk", "-t2", f"-c{CONNS}", f"-d{DURATION}s"]
                for h in headers:
                    cmd += ["-H", h]
                out = subprocess.run(cmd + [f"http://127.0.0.1:{port}{L.PATH}"], capture_output=True, text=True,
                                     timeout=DURATION + 60).stdout
                n = re.search(r"(\d+) requests in", out)
                rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
                non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
                errors = re.search(r"Socket errors: (.*)", out)
                soft, hard = open_file_limits(p.pid)
                print(f"| {name} | {soft}, {hard} | {int(n.group(1)):,} | {float(rate.group(1)):,.0f} | "
                      f"{int(non2xx.group(1)) if non2xx else 0:,} | {errors.group(1) if errors else 'none'} |", flush=True)
        finally:
            L.stop(procs)


if __name__ == "__main__":
    main()
