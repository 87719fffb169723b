#!/usr/bin/env python3
"""Client shapes the load run's rows leave out, stackgate beside nginx, HAProxy and Caddy.

The load run (benches/load.py) measures each protocol the way its load generator
defaults: one request in flight per connection, 50-64 keep-alive connections, bodies of
at most 64 KiB. Clients also come as HTTP/2 connections multiplexing many streams,
HTTP/1.0 keep-alive (ApacheBench), a thousand connections, a connection per request,
HTTP/1.1 pipelining (16 requests written at once), or
uploads of 256 KiB (HTTP/2 and HTTP/1.1; the backend, nginx's `return`, answers without
waiting for the rest of a body, which it discards as it comes); each is a row here,
measured in alternating rounds against the same backend, in the shapes of the load run
(pinned: every proxy on one core; all: nothing pinned, each at its defaults).

    python3 benches/shapes.py                 # both shapes, one dated section each in docs/benchmarks.md
    SHAPE=pinned ROUNDS=3 DURATION=4 python3 benches/shapes.py
    QUICK=1 python3 benches/shapes.py         # one short round, docs left alone

Uses the binaries load.py uses (STACKGATE_BIN, default target/dist/stackgate, and the
seed_store example); needs ab (apache2-utils) beside load.sh's peers.
"""
import copy
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load as L  # noqa: E402

PEERS = ["nginx", "HAProxy", "Caddy", "stackgate"]
# The upload rows' body: an entry's JSON of 256 KiB, POSTed to the read rows' path.
UPLOAD_BYTES = 256 * 1024
# The pipelining row: requests written at once on each connection.
PIPELINE_DEPTH = 16


def run_h2(shape, d, url, headers, conns, streams, data=None):
    """h2load with `conns` connections of `streams` streams each (POSTing the file `data`, if given)."""
    log = tempfile.NamedTemporaryFile(delete=False, dir=d).name
    cmd = L.pinned(["h2load", "-c", str(conns), "-m", str(streams), "-D", str(L.DURATION), "--log-file", log],
                   shape.load_cpu)
    if data:
        cmd += ["-d", data]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=L.DURATION + 60).stdout
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    lats = sorted(int(line.split()[2]) / 1000.0 for line in open(log) if len(line.split()) >= 3)
    os.unlink(log)
    if not m or not rate:
        raise RuntimeError(f"h2load failed on {url}: {out[-300:]}")
    errors = int(m.group(3)) + (sum(int(codes.group(k)) for k in (2, 3, 4)) if codes else 0)
    p99 = lats[min(len(lats) - 1, int(0.99 * len(lats)))] if lats else None
    return {"rps": float(rate.group(1)), "p50": None, "p99": p99, "errors": errors, "requests": int(m.group(1))}


def run_ab(shape, d, url, headers):
    """ApacheBench: HTTP/1.0 with keep-alive (`-k`), 50 connections, for DURATION seconds."""
    cmd = L.pinned(["ab", "-q", "-k", "-c", "50", "-t", str(L.DURATION), "-n", "100000000"], shape.load_cpu)
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=L.DURATION + 60).stdout
    field = lambda name: re.search(name + r":\s+([\d.]+)", out)
    rate, done = field("Requests per second"), field("Complete requests")
    if not rate or not done:
        raise RuntimeError(f"ab failed on {url}: {out[-300:]}")
    errors = sum(int(m.group(1)) for m in (field("Failed requests"), field("Non-2xx responses")) if m)
    p99 = re.search(r"^\s+99%\s+(\d+)", out, re.M)
    return {"rps": float(rate.group(1)), "p50": None, "p99": float(p99.group(1)) if p99 else None,
            "errors": errors, "requests": int(done.group(1))}


def upload_body(d):
    """An entry's JSON of UPLOAD_BYTES, the upload rows' body (written once)."""
    path = os.path.join(d, "upload.json")
    if not os.path.exists(path):
        head = '{"entry":{"title":"upload","body":"'
        open(path, "w").write(head + "x" * (UPLOAD_BYTES - len(head) - 3) + '"}}')
    return path


def lua_script(d, name, text):
    """A wrk script in d (written once), its path."""
    path = os.path.join(d, name)
    if not os.path.exists(path):
        open(path, "w").write(text)
    return path


def upload_script(d):
    """A wrk script that POSTs the upload body with every request."""
    return lua_script(d, "upload.lua", f'local f = io.open("{upload_body(d)}")\nwrk.method = "POST"\n'
                      'wrk.body = f:read("*a")\nf:close()\nwrk.headers["Content-Type"] = "application/json"\n')


def pipeline_script(d):
    """A wrk script that writes PIPELINE_DEPTH requests at once on a connection."""
    return lua_script(d, "pipeline.lua", f"init = function(args)\n  local r = {{}}\n  for i = 1, {PIPELINE_DEPTH} do "
                      "r[i] = wrk.format() end\n  req = table.concat(r)\nend\nrequest = function() return req end\n")


def with_conns(shape, conns):
    s = copy.copy(shape)
    s.conns = conns
    return s


def rows_for(shape, d, headers):
    """(row, function of the URL) for each client shape."""
    return [
        ("h2c, 10 connections of 10 streams (h2load -c10 -m10)", lambda u: run_h2(shape, d, u, headers, 10, 10)),
        ("h2c, 4 connections of 256 streams (h2load -c4 -m256)", lambda u: run_h2(shape, d, u, headers, 4, 256)),
        ("HTTP/1.0 keep-alive, 50 connections (ab -k -c50)", lambda u: run_ab(shape, d, u, headers)),
        ("HTTP/1.1, 1,000 connections (wrk -c1000)", lambda u: L.run_wrk(with_conns(shape, 1000), d, u, headers)),
        ("HTTP/1.1, a connection per request (wrk -c50, Connection: close)",
         lambda u: L.run_wrk(with_conns(shape, 50), d, u, headers + ["Connection: close"])),
        (f"HTTP/1.1 pipelined, {PIPELINE_DEPTH} requests per write (wrk -c50, pipeline script)",
         lambda u: L.run_wrk(with_conns(shape, 50), d, u, headers, pipeline_script(d))),
        ("h2c uploads of 256 KiB, 4 connections of 4 streams (h2load -c4 -m4 -d)",
         lambda u: run_h2(shape, d, u, headers + ["content-type: application/json"], 4, 4, upload_body(d))),
        ("HTTP/1.1 uploads of 256 KiB, 16 connections (wrk -c16, POST)",
         lambda u: L.run_wrk(with_conns(shape, 16), d, u, headers, upload_script(d))),
    ]


def start_peers(shape, d, bport, small):
    """Each peer on one port serving HTTP/1.x and h2c; (procs, {peer: (port, pid)})."""
    procs, where = [], {}
    h1, h2c = L.free_port(), L.free_port()
    p = L.start_nginx(shape, d, "proxy", L.NGINX_PROXY, shape.proxy_cpu, backend=bport,
                      listen=f"listen 127.0.0.1:{h1}; listen 127.0.0.1:{h2c} http2;")
    procs.append(p)
    where["nginx"] = {"h1": (h1, p.pid), "h2c": (h2c, p.pid)}
    h1, h2c = L.free_port(), L.free_port()
    p = L.start_haproxy(shape, d, "plain", [f"bind 127.0.0.1:{h1}", f"bind 127.0.0.1:{h2c} proto h2"], bport)
    procs.append(p)
    where["HAProxy"] = {"h1": (h1, p.pid), "h2c": (h2c, p.pid)}
    port = L.free_port()
    p = L.start_caddy(shape, d, "plain", "http", port, "", bport)
    procs.append(p)
    where["Caddy"] = {"h1": (port, p.pid), "h2c": (port, p.pid)}
    sg, port, _ = L.start_stackgate(shape, os.path.join(small, "stackgate.toml"))
    procs.append(sg)
    where["stackgate"] = {"h1": (port, sg.pid), "h2c": (port, sg.pid)}
    for peer in where.values():
        for port, _ in peer.values():
            L.wait_port(port)
    return procs, where


def run_shape(shape, d):
    sd = os.path.join(d, shape.name)
    os.makedirs(sd)
    procs = []
    try:
        bport = L.free_port()
        backend = L.start_nginx(shape, sd, "backend", L.NGINX_BACKEND, shape.load_cpu, port=bport)
        procs.append(backend)
        L.wait_port(bport, proc=backend)
        small = os.path.join(sd, "small")
        L.seed(small, 34, 30, bport, "127.0.0.1:0")
        started, where = start_peers(shape, sd, bport, small)
        procs += started
        i = 777
        headers = [f"api_key: blt{i // 30:016x}", f"authorization: cs{i:032x}", "branch: main"]
        scen = []
        for row, fn in rows_for(shape, sd, headers):
            proto = "h2c" if row.startswith("h2c") else "h1"
            for peer in PEERS:
                port, pid = where[peer][proto]
                url = f"http://127.0.0.1:{port}{L.PATH}"
                scen.append((row, peer, pid, (lambda f, u: lambda: f(u))(fn, url)))
        runs = {(row, peer): [] for row, peer, _, _ in scen}
        for rnd in range(L.ROUNDS):
            for row, peer, pid, fn in (scen if rnd % 2 == 0 else scen[::-1]):
                try:
                    r = L.measure(pid, fn)
                except Exception as e:
                    print(f"[{shape.name}] round {rnd + 1} {row} {peer} FAILED: {str(e)[:200]}", flush=True)
                    continue
                runs[(row, peer)].append(r)
                print(f"[{shape.name}] round {rnd + 1} {peer:9} {r['rps']:>9.0f} req/s  errors {r['errors']}  "
                      f"CPU {r['cpu_per_100k']:.2f} s/100k  {row}", flush=True)
        return runs
    finally:
        L.stop(procs)


def section(shape, runs):
    sh = L.Shape(shape)
    rows = list(dict.fromkeys(row for row, _ in runs))
    med = lambda row, peer, key="rps": L.median(runs[(row, peer)], key) if runs[(row, peer)] else None
    out = [f"## {datetime.date.today()}: client shapes, {shape} shape", "",
           f"Measured on {L.NCPU} cores ({L.cpu_model()}), Linux {platform.release()}; `python3 benches/shapes.py` "
           f"(`SHAPE={shape}`): {L.ROUNDS} alternating rounds of {L.DURATION} s per row and peer, medians; the load run's "
           f"processes, backend and token ({'each proxy single-threaded on CPU 0, clients and backend on CPU 1' if sh.pinned else 'nothing pinned, each proxy at its defaults'}), "
           f"stackgate: {L.BUILD}. Errors: failed requests and non-2xx answers over all rounds. CPU: the proxy's user+system "
           f"seconds per 100k requests.", "",
           "| client shape | stackgate req/s | nginx | HAProxy | Caddy | vs faster of nginx/HAProxy | CPU s/100k (stackgate / nginx / HAProxy) | errors |",
           "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        n, h, c, s = (med(row, p) for p in PEERS)
        best = max(x for x in (n, h) if x) if (n or h) else None
        cpu = " / ".join(L.fmt(med(row, p, "cpu_per_100k")) for p in ("stackgate", "nginx", "HAProxy"))
        errors = sum(r["errors"] for p in PEERS for r in runs[(row, p)])
        out.append(f"| {row} | {L.fmt(s, 0)} | {L.fmt(n, 0)} | {L.fmt(h, 0)} | {L.fmt(c, 0)} | {L.ratio(s, best)} | "
                   f"{cpu} | {errors} |")
    return "\n".join(out + [""])


def main():
    d = tempfile.mkdtemp(prefix="stackgate-shapes-")
    os.chmod(d, 0o755)
    sections = [section(name, run_shape(L.Shape(name), d)) for name in L.SHAPES]
    print()
    for s in sections:
        print(s)
    if not L.QUICK:
        L.write_doc(sections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
