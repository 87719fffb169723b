#!/usr/bin/env python3
"""Runs the load benchmark (see benches/load.sh): the bare backend, nginx and HAProxy as
plain reverse proxies, and stackgate with full enforcement over HTTP/1.1, h2 and TLS,
alternating, same connections and duration; then stackgate with 1,000,000 tokens.
Prints medians and ratios to nginx and (unless QUICK) rewrites README's results section.
Loopback only; every run is bounded in time."""
import os, re, socket, statistics, subprocess, sys, tempfile, time, datetime, platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.environ.get("QUICK") == "1"
# Five rounds: on a shared VM one disturbed round in three moves a median a lot.
ROUNDS = 1 if QUICK else 5
DURATION = 3 if QUICK else 10
CONNS = 50
NCPU = os.cpu_count() or 1
# Proxy under test on core 0; load generator and backend on the other core(s).
PROXY_CPU = "0"
LOAD_CPU = "1" if NCPU > 1 else "0"
BIN = os.path.join(ROOT, "target/dist/stackgate")
SEED = os.path.join(ROOT, "target/dist/examples/seed_store")
CLK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def start(cmd, cpu, **kw):
    return subprocess.Popen(["taskset", "-c", cpu] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def peak_rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url, headers):
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{CONNS}", f"-d{DURATION}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=DURATION + 60).stdout
    lat = {p: ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.M)}
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"rps": rps, "p50": lat.get("50"), "p99": lat.get("99"), "errors": errors, "requests": reqs}


def run_h2load(url, headers):
    log = tempfile.NamedTemporaryFile(delete=False).name
    cmd = ["taskset", "-c", LOAD_CPU, "h2load", "-c", str(CONNS), "-m", "1", "-D", str(DURATION), "--log-file", log]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=DURATION + 60).stdout
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    done, ok = int(m.group(2)), int(m.group(3))
    status2xx = re.search(r"status codes: (\d+) 2xx", out)
    lats = sorted(int(l.split()[2]) / 1000.0 for l in open(log) if len(l.split()) >= 3)
    os.unlink(log)
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    pct = lambda q: lats[min(len(lats) - 1, int(q * len(lats)))] if lats else None
    errors = done - (int(status2xx.group(1)) if status2xx else ok)
    return {"rps": rps, "p50": pct(0.50), "p99": pct(0.99), "errors": errors, "requests": done}


NGINX_BACKEND = """daemon off; master_process off; worker_processes 1; pid {d}/backend.pid; error_log {d}/backend.err;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 10000000; client_body_temp_path {d}; proxy_temp_path {d};
  fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json;
    return 200 '{{"entries":[{{"uid":"blt0000000000000e01","title":"Hello"}}],"count":1}}'; }} }} }}
"""
NGINX_PROXY = """daemon off; master_process off; worker_processes 1; pid {d}/proxy.pid; error_log {d}/proxy.err;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 10000000; client_body_temp_path {d}; proxy_temp_path {d};
  fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 128; }}
  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://backend; proxy_http_version 1.1;
    proxy_set_header Connection ""; }} }} }}
"""
HAPROXY = """global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:{port}
  default_backend b
backend b
  server s1 127.0.0.1:{backend} maxconn 1000
"""


def start_stackgate(cfg, cpu):
    t0 = time.time()
    # Access logs off, as for nginx (access_log off) and HAProxy (no log directive).
    env = dict(os.environ, RUST_LOG="warn")
    p = subprocess.Popen(["taskset", "-c", cpu, BIN, "run", "--config", cfg], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = p.stdout.readline()
    m = re.search(r"listening on https?://([\d.]+):(\d+)", line)
    if not m:
        raise RuntimeError(f"stackgate did not start: {line!r}")
    return p, int(m.group(2)), time.time() - t0


def seed(d, stacks, per_stack, backend_port, listen):
    subprocess.run([SEED, d, str(stacks), str(per_stack), f"127.0.0.1:{backend_port}", listen], check=True, stdout=subprocess.DEVNULL)


def tls_config(d):
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    text = open(os.path.join(d, "stackgate.toml")).read()
    text = text.replace('[server]\n', f'[server]\ntls = {{ cert = "{cert}", key = "{key}" }}\n', 1)
    path = os.path.join(d, "stackgate-tls.toml")
    open(path, "w").write(text)
    return path


def measure(proc_pid, fn):
    before = cpu_seconds(proc_pid)
    r = fn()
    r["cpu_per_100k"] = (cpu_seconds(proc_pid) - before) / max(r["requests"], 1) * 100_000
    r["rss"] = peak_rss_mib(proc_pid)
    return r


def median(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main():
    d = tempfile.mkdtemp(prefix="stackgate-bench-")
    procs = []
    try:
        bport, nport, hport = free_port(), free_port(), free_port()
        for name, tmpl, port in [("backend", NGINX_BACKEND, bport), ("proxy", NGINX_PROXY, nport)]:
            path = os.path.join(d, f"nginx-{name}.conf")
            open(path, "w").write(tmpl.format(d=d, port=port, backend=bport))
            cpu = LOAD_CPU if name == "backend" else PROXY_CPU
            procs.append(start(["nginx", "-p", d, "-c", path], cpu))
        hcfg = os.path.join(d, "haproxy.cfg")
        open(hcfg, "w").write(HAPROXY.format(port=hport, backend=bport))
        procs.append(start(["haproxy", "-db", "-f", hcfg], PROXY_CPU))
        for p in (bport, nport, hport):
            wait_port(p)
        nginx_proxy, haproxy = procs[1], procs[2]

        # stackgate with 1,000 tokens (34 stacks x 30); the token used is one of them.
        small = os.path.join(d, "small")
        seed(small, 34, 30, bport, "127.0.0.1:0")
        sg, sport, _ = start_stackgate(os.path.join(small, "stackgate.toml"), PROXY_CPU)
        sg_tls, tport, _ = start_stackgate(tls_config(small), PROXY_CPU)
        procs += [sg, sg_tls]
        # The same gateway with its buckets in Redis (a private redis-server beside the
        # backend): one script round trip per request. fail_mode closed, so a Redis
        # failure would show as errors instead of silently admitting.
        rport = free_port()
        procs.append(start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], LOAD_CPU))
        wait_port(rport)
        rcfg = os.path.join(small, "stackgate-redis.toml")
        open(rcfg, "w").write(open(os.path.join(small, "stackgate.toml")).read()
                              + f'\n[ratelimit]\nbackend = "redis"\nurl = "redis://127.0.0.1:{rport}"\nfail_mode = "closed"\n')
        sg_redis, rsport, _ = start_stackgate(rcfg, PROXY_CPU)
        procs.append(sg_redis)
        i = 777
        headers = [f"api_key: blt{i // 30:016x}", f"authorization: cs{i:032x}", "branch: main"]
        path = "/v3/content_types/blog_post/entries?locale=en-us"

        scenarios = [
            ("backend (nginx, direct)", procs[0].pid, lambda: run_wrk(f"http://127.0.0.1:{bport}{path}", headers)),
            ("nginx reverse proxy", nginx_proxy.pid, lambda: run_wrk(f"http://127.0.0.1:{nport}{path}", headers)),
            ("HAProxy reverse proxy", haproxy.pid, lambda: run_wrk(f"http://127.0.0.1:{hport}{path}", headers)),
            ("stackgate, HTTP/1.1", sg.pid, lambda: run_wrk(f"http://127.0.0.1:{sport}{path}", headers)),
            ("stackgate, HTTP/1.1, Redis buckets", sg_redis.pid, lambda: run_wrk(f"http://127.0.0.1:{rsport}{path}", headers)),
            ("stackgate, h2 (h2load)", sg.pid, lambda: run_h2load(f"http://127.0.0.1:{sport}{path}", headers)),
            ("stackgate, TLS HTTP/1.1", sg_tls.pid, lambda: run_wrk(f"https://127.0.0.1:{tport}{path}", headers)),
            ("stackgate, TLS h2 (h2load)", sg_tls.pid, lambda: run_h2load(f"https://127.0.0.1:{tport}{path}", headers)),
        ]
        results = {name: [] for name, _, _ in scenarios}
        for rnd in range(ROUNDS):
            for name, pid, fn in scenarios:
                r = measure(pid, fn)
                results[name].append(r)
                print(f"round {rnd + 1} {name:28} {r['rps']:>10.0f} req/s  p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms  errors {r['errors']}", flush=True)
        for p in (sg, sg_tls, sg_redis):
            p.terminate()
            p.wait(timeout=60)

        # Scale: 1,000,000 tokens over 33,334 stacks (30 per stack).
        big = os.path.join(d, "big")
        t0 = time.time()
        seed(big, 33_334, 30, bport, "127.0.0.1:0")
        seed_s = time.time() - t0
        sgb, bgport, startup = start_stackgate(os.path.join(big, "stackgate.toml"), PROXY_CPU)
        procs.append(sgb)
        rss_peak = peak_rss_mib(sgb.pid)
        rss_now = int(open(f"/proc/{sgb.pid}/status").read().split("VmRSS:")[1].split()[0]) / 1024
        j = 777_777
        big_headers = [f"api_key: blt{j // 30:016x}", f"authorization: cs{j:032x}", "branch: main"]
        results["stackgate, HTTP/1.1, 1M tokens"] = [measure(sgb.pid, lambda: run_wrk(f"http://127.0.0.1:{bgport}{path}", big_headers)) for _ in range(ROUNDS)]
        # The allocator returns start-up garbage lazily: resident memory once serving.
        rss_serving = int(open(f"/proc/{sgb.pid}/status").read().split("VmRSS:")[1].split()[0]) / 1024
        report(results, {"seed_s": seed_s, "startup_s": startup, "rss_peak": rss_peak, "rss_now": rss_now,
                         "rss_serving": rss_serving})
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except Exception:
                p.kill()


def report(results, scale):
    nginx = median(results["nginx reverse proxy"], "rps")
    nginx_p99 = median(results["nginx reverse proxy"], "p99")
    rows = ["| scenario | req/s (median) | vs nginx | p50 ms | p99 ms | errors | CPU s / 100k req | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        rps = median(runs, "rps")
        rows.append(f"| {name} | {rps:,.0f} | {rps / nginx:.2f} | {median(runs, 'p50'):.3f} | {median(runs, 'p99'):.3f} | "
                    f"{sum(r['errors'] for r in runs)} | {median(runs, 'cpu_per_100k'):.2f} | {max(r['rss'] for r in runs):.1f} |")
    small = median(results["stackgate, HTTP/1.1"], "rps")
    big = median(results["stackgate, HTTP/1.1, 1M tokens"], "rps")
    cpu = platform.processor() or "unknown"
    try:
        cpu = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")][0]
    except Exception:
        pass
    text = "\n".join([
        f"Measured {datetime.date.today()} on {NCPU} cores ({cpu}), Linux {platform.release()}; "
        f"`bash benches/load.sh`: wrk -t1 -c{CONNS} -d{DURATION}s (h2load -c{CONNS} -m1 for h2), "
        f"{ROUNDS} alternating rounds, medians. Proxy pinned to CPU {PROXY_CPU}; wrk/h2load and the backend "
        f"(nginx `return 200` with a small JSON body) to CPU {LOAD_CPU}. stackgate enforces everything "
        f"(token lookup, scope, branch, rate limits set high) for a token among 1,000; nginx and HAProxy only proxy. "
        f"Access logs are off for all three.",
        "",
        *rows,
        "",
        f"p99 vs nginx: {median(results['stackgate, HTTP/1.1'], 'p99') / nginx_p99:.2f}x. "
        f"Redis buckets vs local buckets (same run): throughput {median(results['stackgate, HTTP/1.1, Redis buckets'], 'rps') / small:.2f}x, "
        f"p99 {median(results['stackgate, HTTP/1.1, Redis buckets'], 'p99') / median(results['stackgate, HTTP/1.1'], 'p99'):.2f}x "
        f"(Redis on the load generator's core). "
        f"With 1,000,000 tokens over 33,334 stacks: seeding the store took {scale['seed_s']:.1f} s, start-up "
        f"(store load + snapshot build, to listening) {scale['startup_s']:.1f} s, RSS {scale['rss_now']:.0f} MiB when it starts "
        f"listening (peak during start-up {scale['rss_peak']:.0f} MiB) and {scale['rss_serving']:.0f} MiB after the load runs; "
        f"throughput {big:,.0f} req/s = {big / small:.2f}x the 1,000-token run.",
    ])
    print("\n" + text)
    if not QUICK:
        readme = os.path.join(ROOT, "README.md")
        content = open(readme).read()
        start, end = "<!-- bench:start -->", "<!-- bench:end -->"
        if start in content and end in content:
            before, rest = content.split(start, 1)
            _, after = rest.split(end, 1)
            open(readme, "w").write(before + start + "\n" + text + "\n" + end + after)
            print("README.md results updated")


if __name__ == "__main__":
    sys.exit(main())
