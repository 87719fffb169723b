#!/usr/bin/env python3
"""Runs the load benchmark (see benches/load.sh) on loopback, in two deployment shapes:

  pinned  one core for the proxy under test, each proxy single-process / single-thread
          (nginx worker_processes 1, HAProxy nbthread 1, Caddy GOMAXPROCS=1, stackgate
          --threads 1); load generator, backend and Redis on the other core.
  all     nothing pinned, every process at its own default for the cores it has (nginx
          worker_processes auto, HAProxy's default nbthread, Caddy's default GOMAXPROCS,
          stackgate's default threads), wrk -t1 -c64.

Rows: the bare backend; nginx, HAProxy, Caddy and stackgate (full enforcement, a token
among 1,000) over HTTP/1.1 (wrk: reads with a small and a 64 KiB answer, and writes that
POST 2 KiB of JSON), h2c (h2load), TLS HTTP/1.1 (wrk) and TLS h2 (h2load);
stackgate with its buckets in Redis; stackgate with 1,000,000 tokens (start-up time, RSS,
throughput). Rounds alternate between rows (odd rounds in reverse order); medians.

Environment: SHAPE=pinned|all|both (default both), QUICK=1 (one short round, doc left
alone), ROUNDS=N, DURATION=seconds. Unless QUICK, each shape's table is inserted as a dated
section at the top of the results in docs/benchmarks.md. Every run is bounded in time."""
import datetime, json, os, platform, re, socket, sqlite3, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.environ.get("QUICK") == "1"
# Five rounds: on a shared VM one disturbed round in three moves a median a lot.
ROUNDS = int(os.environ.get("ROUNDS") or (1 if QUICK else 5))
DURATION = int(os.environ.get("DURATION") or (3 if QUICK else 10))
SHAPES = {"pinned": ["pinned"], "all": ["all"], "both": ["pinned", "all"]}[os.environ.get("SHAPE", "both")]
NCPU = os.cpu_count() or 1
# The gateway under test: benches/load.sh builds it with profile-guided optimisation
# (scripts/pgo.sh) unless PGO=0, and says which here.
BIN = os.environ.get("STACKGATE_BIN") or os.path.join(ROOT, "target/dist/stackgate")
BUILD = os.environ.get("STACKGATE_BUILD") or "the plain `dist` build"
SEED = os.path.join(ROOT, "target/dist/examples/seed_store")
DOC = os.path.join(ROOT, "docs/benchmarks.md")
DOC_MARK = "<!-- bench:results"
CLK = os.sysconf("SC_CLK_TCK")
PATH = "/v3/content_types/blog_post/entries?locale=en-us"
# The large-body rows: one asset's JSON of 64 KiB (a file the backend serves).
LARGE_PATH = "/v3/assets/blt0000000000000a01"
LARGE_BYTES = 64 * 1024
# The write rows: a POST of an entry's JSON, about 2 KiB, to the read rows' path.
WRITE_BODY = json.dumps({"entry": {"title": "Hello world", "url": "/hello", "body": "x" * 1900}})
# Every TLS client offers only this suite (wrk and `openssl s_client` through OPENSSL_CONF,
# h2load through --tls13-ciphers), so every server negotiates the same cipher.
TLS_SUITE = "TLS_AES_128_GCM_SHA256"
PEERS = ["nginx", "HAProxy", "Caddy"]
# Starts of the 1,000,000-token gateway whose start-up times give the median.
STARTS = 1 if QUICK else 3


class Shape:
    def __init__(self, name):
        self.name = name
        self.pinned = name == "pinned"
        # Proxy under test on core 0; load generator, backend and Redis on the other core.
        self.proxy_cpu = "0" if self.pinned else None
        self.load_cpu = ("1" if NCPU > 1 else "0") if self.pinned else None
        self.conns = 50 if self.pinned else 64


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode} before port {port} opened")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def pinned(cmd, cpu):
    return (["taskset", "-c", cpu] if cpu is not None else []) + cmd


def start(cmd, cpu, log=None, **kw):
    err = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen(pinned(cmd, cpu), stdout=subprocess.DEVNULL, stderr=err, **kw)


def proc_tree(pid):
    """pid and its descendants (nginx's workers), from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in open(f"/proc/{p}/task/{task}/children").read().split()]
        except OSError:
            pass
    return out


def cpu_seconds(pid):
    total = 0.0
    for p in proc_tree(pid):
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK
        except OSError:
            pass
    return total


def status_mib(pid, key):
    """VmHWM / VmRSS summed over the process tree, MiB."""
    total = 0
    for p in proc_tree(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def client_env(d):
    return dict(os.environ, OPENSSL_CONF=os.path.join(d, "openssl-client.cnf"))


def write_script(d):
    """A wrk script that sends every request as a POST of WRITE_BODY."""
    path = os.path.join(d, "write.lua")
    open(path, "w").write(f'wrk.method = "POST"\nwrk.body = {json.dumps(WRITE_BODY)}\n'
                          'wrk.headers["Content-Type"] = "application/json"\n')
    return path


def run_wrk(shape, d, url, headers, script=None):
    cmd = pinned(["wrk", "-t1", f"-c{shape.conns}", f"-d{DURATION}s", "--latency"], shape.load_cpu)
    if script:
        cmd += ["-s", script]
    for h in headers:
        cmd += ["-H", h]
    res = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=DURATION + 60, env=client_env(d))
    out = res.stdout
    m = re.search(r"(\d+) requests in", out)
    if not m:
        raise RuntimeError(f"wrk failed on {url}: {out}{res.stderr}")
    lat = {p: ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.M)}
    reqs = int(m.group(1))
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"rps": rps, "p50": lat.get("50"), "p99": lat.get("99"), "errors": errors, "requests": reqs}


def run_h2load(shape, d, url, headers):
    log = tempfile.NamedTemporaryFile(delete=False, dir=d).name
    cmd = pinned(["h2load", "-c", str(shape.conns), "-m", "1", "-D", str(DURATION), "--log-file", log,
                  f"--tls13-ciphers={TLS_SUITE}"], shape.load_cpu)
    for h in headers:
        cmd += ["-H", h]
    res = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=DURATION + 60, env=client_env(d))
    out = res.stdout
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if not m or not rate:
        os.unlink(log)
        raise RuntimeError(f"h2load failed on {url}: {out}{res.stderr}")
    done, ok = int(m.group(2)), int(m.group(3))
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    lats = sorted(int(l.split()[2]) / 1000.0 for l in open(log) if len(l.split()) >= 3)
    os.unlink(log)
    pct = lambda q: lats[min(len(lats) - 1, int(q * len(lats)))] if lats else None
    # Failed requests (stream or connection errors, timeouts) and non-2xx responses count
    # as errors. (Status codes are counted at the response head, so when the duration ends
    # they can run ahead of "done": no subtraction.)
    errors = int(m.group(4)) + (sum(int(codes.group(k)) for k in (2, 3, 4)) if codes else done - ok)
    return {"rps": float(rate.group(1)), "p50": pct(0.50), "p99": pct(0.99), "errors": errors, "requests": done}


NGINX_HEAD = """daemon off; {procs} pid {d}/{name}.pid; error_log {d}/{name}.err;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 10000000; client_body_temp_path {d}; proxy_temp_path {d};
  fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
"""
NGINX_BACKEND = NGINX_HEAD + """  server {{ listen 127.0.0.1:{port};
    location /v3/assets/ {{ default_type application/json; root {d}; try_files /asset-64k.json =404; }}
    location / {{ default_type application/json;
    return 200 '{{"entries":[{{"uid":"blt0000000000000e01","title":"Hello"}}],"count":1}}'; }} }} }}
"""
# nginx 1.22 (Debian 12) has no `http2 on;` (1.25.1+): `listen ... http2` without `ssl`
# serves h2c with prior knowledge, which is what h2load speaks.
NGINX_PROXY = NGINX_HEAD + """  upstream backend {{ server 127.0.0.1:{backend}; keepalive 128; }}
  server {{ {listen}
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
"""
HAPROXY = """global
  {threads}
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  {binds}
  default_backend b
backend b
  server s1 127.0.0.1:{backend} maxconn 1000
"""
CADDY = """{{
  admin off
  auto_https off
  storage file_system {d}/caddy-{name}
  log {{
    level ERROR
  }}
  servers {{
    protocols h1 h2 h2c
  }}
}}
{scheme}://:{port} {{
  bind 127.0.0.1
  {tls}
  reverse_proxy 127.0.0.1:{backend} {{
    transport http {{
      keepalive 90s
      keepalive_idle_conns_per_host 128
    }}
  }}
}}
"""


def nginx_procs(shape):
    # Pinned: one process (no master). All: master and one worker per core it may use.
    return "master_process off; worker_processes 1;" if shape.pinned else "worker_processes auto;"


def start_nginx(shape, d, name, tmpl, cpu, **fmt):
    path = os.path.join(d, f"nginx-{name}.conf")
    open(path, "w").write(tmpl.format(d=d, name=name, procs=nginx_procs(shape), **fmt))
    return start(["nginx", "-p", d, "-c", path], cpu, log=os.path.join(d, f"nginx-{name}.stderr"))


def start_haproxy(shape, d, name, binds, backend):
    path = os.path.join(d, f"haproxy-{name}.cfg")
    # All: no nbthread, so HAProxy takes one thread per core it may use (its default).
    threads = "nbthread 1" if shape.pinned else ""
    open(path, "w").write(HAPROXY.format(threads=threads, binds="\n  ".join(binds), backend=backend))
    return start(["haproxy", "-db", "-f", path], shape.proxy_cpu, log=os.path.join(d, f"haproxy-{name}.stderr"))


def start_caddy(shape, d, name, scheme, port, tls, backend):
    path = os.path.join(d, f"Caddyfile-{name}")
    open(path, "w").write(CADDY.format(d=d, name=name, scheme=scheme, port=port, tls=tls, backend=backend))
    env = dict(os.environ, XDG_DATA_HOME=os.path.join(d, "xdg"), XDG_CONFIG_HOME=os.path.join(d, "xdg"), HOME=d)
    env.pop("GOMAXPROCS", None)
    if shape.pinned:
        env["GOMAXPROCS"] = "1"
    return start(["caddy", "run", "--config", path, "--adapter", "caddyfile"], shape.proxy_cpu,
                 log=os.path.join(d, f"caddy-{name}.stderr"), env=env)


def start_stackgate(shape, cfg):
    t0 = time.time()
    # Access logs off, as for nginx (access_log off), HAProxy (no log directive) and Caddy.
    env = dict(os.environ, RUST_LOG="warn")
    env.pop("STACKGATE_THREADS", None)
    cmd = [BIN, "run", "--config", cfg] + (["--threads", "1"] if shape.pinned else [])
    p = subprocess.Popen(pinned(cmd, shape.proxy_cpu), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = p.stdout.readline()
    m = re.search(r"listening on https?://([\d.]+):(\d+)", line)
    if not m:
        raise RuntimeError(f"stackgate did not start: {line!r}")
    return p, int(m.group(2)), time.time() - t0


def seed(d, stacks, per_stack, backend_port, listen):
    subprocess.run([SEED, d, str(stacks), str(per_stack), f"127.0.0.1:{backend_port}", listen], check=True, stdout=subprocess.DEVNULL)


def make_cert(d):
    """One ECDSA P-256 certificate for every TLS peer; the OpenSSL client config."""
    cert, key, pem = (os.path.join(d, f) for f in ("cert.pem", "key.pem", "haproxy.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    open(pem, "w").write(open(cert).read() + open(key).read())
    open(os.path.join(d, "openssl-client.cnf"), "w").write(
        "openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n[ssl_sect]\n"
        "system_default = system_default_sect\n[system_default_sect]\n"
        f"MinProtocol = TLSv1.3\nCiphersuites = {TLS_SUITE}\n")
    return cert, key, pem


def own_store(small, text, name):
    """`text` pointed at a copy of the seeded store: a store serves one gateway at a time.
    Copied with SQLite's backup (consistent while another gateway has the store open), over
    no stale write-ahead log of an earlier copy."""
    db = os.path.join(small, "tokens.db")
    copy = os.path.join(small, f"tokens-{name}.db")
    for stale in (copy, copy + "-wal", copy + "-shm"):
        if os.path.exists(stale):
            os.unlink(stale)
    src, dst = sqlite3.connect(f"file:{db}?mode=ro", uri=True), sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    dst.close()
    assert f'path = "{db}"' in text, "the seeded config names its store"
    return text.replace(f'path = "{db}"', f'path = "{copy}"', 1)


def tls_config(small, cert, key, name):
    text = own_store(small, open(os.path.join(small, "stackgate.toml")).read(), "tls")
    text = text.replace('[server]\n', f'[server]\ntls = {{ cert = "{cert}", key = "{key}" }}\n', 1)
    path = os.path.join(small, name)
    open(path, "w").write(text)
    return path


def negotiated(d, port):
    """What an OpenSSL client offering h2 and http/1.1 negotiates, e.g. 'TLSv1.3 TLS_AES_128_GCM_SHA256 X25519 h2'."""
    try:
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", "h2,http/1.1",
                              "-servername", "localhost"], input="", capture_output=True, text=True, errors="replace", timeout=20,
                             env=client_env(d)).stdout
    except Exception as e:
        return f"s_client failed: {e}"
    proto = re.search(r"New, (TLSv[\d.]+), Cipher is (\S+)", out)
    group = re.search(r"(?:Server Temp Key|Negotiated TLS1.3 group): (\w+)", out)
    alpn = re.search(r"ALPN protocol: (\S+)", out)
    return " ".join(x for x in [proto and proto.group(1), proto and proto.group(2), group and group.group(1),
                                alpn and alpn.group(1) or "no ALPN"] if x)


def measure(pid, fn):
    before = cpu_seconds(pid)
    r = fn()
    r["cpu_per_100k"] = (cpu_seconds(pid) - before) / max(r["requests"], 1) * 100_000
    r["rss"] = status_mib(pid, "VmHWM")
    return r


def median(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def run_shape(shape, d, state):
    """Starts every process of one shape, runs the alternating rounds, stops them all."""
    sd = os.path.join(d, shape.name)
    os.makedirs(sd)
    procs = []
    cert, key, pem = state["cert"], state["key"], state["pem"]
    try:
        bport = free_port()
        with open(os.path.join(sd, "asset-64k.json"), "w") as f:
            head = '{"asset":{"uid":"blt0000000000000a01","data":"'
            f.write(head + "x" * (LARGE_BYTES - len(head) - 4) + '"}}\n')
        backend = start_nginx(shape, sd, "backend", NGINX_BACKEND, shape.load_cpu, port=bport)
        procs.append(backend)
        wait_port(bport, proc=backend)
        if "small" not in state:
            # 1,000 tokens (34 stacks x 30); the token used is one of them. The backend
            # address in the config is rewritten per shape below.
            state["small"] = os.path.join(d, "small")
            seed(state["small"], 34, 30, bport, "127.0.0.1:0")
        small = state["small"]
        base = re.sub(r'url = "http://127\.0\.0\.1:\d+"', f'url = "http://127.0.0.1:{bport}"',
                      open(os.path.join(small, "stackgate.toml")).read())
        open(os.path.join(small, "stackgate.toml"), "w").write(base)

        ports, pids, tls_ports = {}, {}, {}
        # nginx: one instance for plain HTTP/1.1 and h2c, one for TLS (h1 and h2 by ALPN).
        h1, h2c, tls = free_port(), free_port(), free_port()
        p = start_nginx(shape, sd, "proxy", NGINX_PROXY, shape.proxy_cpu, backend=bport,
                        listen=f"listen 127.0.0.1:{h1}; listen 127.0.0.1:{h2c} http2;")
        q = start_nginx(shape, sd, "proxy-tls", NGINX_PROXY, shape.proxy_cpu, backend=bport,
                        listen=f"listen 127.0.0.1:{tls} ssl http2; ssl_protocols TLSv1.2 TLSv1.3; "
                               f"ssl_certificate {cert}; ssl_certificate_key {key};")
        procs += [p, q]
        ports["nginx"] = {"h1": h1, "h2c": h2c, "tls": tls}
        pids["nginx"] = {"h1": p, "h2c": p, "tls": q}
        # HAProxy: the same split.
        h1, h2c, tls = free_port(), free_port(), free_port()
        p = start_haproxy(shape, sd, "plain", [f"bind 127.0.0.1:{h1}", f"bind 127.0.0.1:{h2c} proto h2"], bport)
        q = start_haproxy(shape, sd, "tls", [f"bind 127.0.0.1:{tls} ssl crt {pem} alpn h2,http/1.1"], bport)
        procs += [p, q]
        ports["HAProxy"] = {"h1": h1, "h2c": h2c, "tls": tls}
        pids["HAProxy"] = {"h1": p, "h2c": p, "tls": q}
        # Caddy: one listener serves HTTP/1.1 and h2c (prior knowledge).
        h1, tls = free_port(), free_port()
        p = start_caddy(shape, sd, "plain", "http", h1, "", bport)
        q = start_caddy(shape, sd, "tls", "https", tls, f"tls {cert} {key}", bport)
        procs += [p, q]
        ports["Caddy"] = {"h1": h1, "h2c": h1, "tls": tls}
        pids["Caddy"] = {"h1": p, "h2c": p, "tls": q}
        for peer in PEERS:
            for proto, port in ports[peer].items():
                wait_port(port, proc=pids[peer][proto])
        # stackgate: plain (HTTP/1.1 and h2c on one port), TLS, and Redis buckets.
        sg, sport, _ = start_stackgate(shape, os.path.join(small, "stackgate.toml"))
        sg_tls, tport, _ = start_stackgate(shape, tls_config(small, cert, key, "stackgate-tls.toml"))
        procs += [sg, sg_tls]
        ports["stackgate"] = {"h1": sport, "h2c": sport, "tls": tport}
        pids["stackgate"] = {"h1": sg, "h2c": sg, "tls": sg_tls}
        # The same gateway with its buckets in Redis (a private redis-server beside the
        # backend): one script round trip per request. fail_mode closed, so a Redis
        # failure would show as errors instead of silently admitting.
        rport = free_port()
        redis = start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], shape.load_cpu)
        procs.append(redis)
        wait_port(rport, proc=redis)
        rcfg = os.path.join(small, "stackgate-redis.toml")
        open(rcfg, "w").write(own_store(small, base, "redis")
                              + f'\n[ratelimit]\nbackend = "redis"\nurl = "redis://127.0.0.1:{rport}"\nfail_mode = "closed"\n')
        sg_redis, rsport, _ = start_stackgate(shape, rcfg)
        procs.append(sg_redis)

        # What each TLS listener negotiates with the clients' settings (once per peer).
        tls_notes = {peer: negotiated(d, ports[peer]["tls"]) for peer in PEERS + ["stackgate"]}
        for peer, text in tls_notes.items():
            print(f"[{shape.name}] TLS {peer}: {text}", flush=True)

        i = 777
        headers = [f"api_key: blt{i // 30:016x}", f"authorization: cs{i:032x}", "branch: main"]
        url = lambda scheme, port: f"{scheme}://127.0.0.1:{port}{PATH}"
        wrk = lambda u: (lambda: run_wrk(shape, d, u, headers))
        h2 = lambda u: (lambda: run_h2load(shape, d, u, headers))
        # (name, group, peer, pid, fn); the group is the protocol the "vs" columns compare in.
        scen = [("backend (nginx, direct)", "h1", "backend", backend.pid, wrk(url("http", bport)))]
        for peer in PEERS + ["stackgate"]:
            scen.append((f"{peer}, HTTP/1.1", "h1", peer, pids[peer]["h1"].pid, wrk(url("http", ports[peer]["h1"]))))
        scen.append(("stackgate, HTTP/1.1, Redis buckets", "h1", "stackgate-redis", sg_redis.pid, wrk(url("http", rsport))))
        large = lambda port: wrk(f"http://127.0.0.1:{port}{LARGE_PATH}")
        for peer in PEERS + ["stackgate"]:
            scen.append((f"{peer}, HTTP/1.1, 64 KiB body", "h1-64k", peer, pids[peer]["h1"].pid, large(ports[peer]["h1"])))
        script = write_script(sd)
        write = lambda port: (lambda: run_wrk(shape, d, url("http", port), headers, script))
        for peer in PEERS + ["stackgate"]:
            scen.append((f"{peer}, HTTP/1.1 write, 2 KiB body", "h1-write", peer, pids[peer]["h1"].pid,
                         write(ports[peer]["h1"])))
        for peer in PEERS + ["stackgate"]:
            scen.append((f"{peer}, h2c (h2load)", "h2c", peer, pids[peer]["h2c"].pid, h2(url("http", ports[peer]["h2c"]))))
        for peer in PEERS + ["stackgate"]:
            scen.append((f"{peer}, TLS HTTP/1.1", "tls-h1", peer, pids[peer]["tls"].pid, wrk(url("https", ports[peer]["tls"]))))
        for peer in PEERS + ["stackgate"]:
            scen.append((f"{peer}, TLS h2 (h2load)", "tls-h2", peer, pids[peer]["tls"].pid, h2(url("https", ports[peer]["tls"]))))

        rows = {name: {"group": g, "peer": peer, "runs": []} for name, g, peer, _, _ in scen}
        for rnd in range(ROUNDS):
            order = scen if rnd % 2 == 0 else scen[::-1]
            for name, _, _, pid, fn in order:
                try:
                    r = measure(pid, fn)
                except Exception as e:
                    print(f"[{shape.name}] round {rnd + 1} {name:36} FAILED: {str(e)[:300]}", flush=True)
                    rows[name].setdefault("failed", str(e)[:120])
                    continue
                rows[name]["runs"].append(r)
                print(f"[{shape.name}] round {rnd + 1} {name:36} {r['rps']:>9.0f} req/s  p50 {fmt(r['p50'], 3)} ms  "
                      f"p99 {fmt(r['p99'], 3)} ms  errors {r['errors']}  CPU {r['cpu_per_100k']:.2f} s/100k", flush=True)
        for p in (sg_tls, sg_redis):
            p.terminate()
            p.wait(timeout=60)

        scale = None
        if not state.get("scale_done"):
            state["scale_done"] = True
            scale = run_scale(shape, d, bport, rows, (sg.pid, wrk(url("http", sport))))
        sg.terminate()
        sg.wait(timeout=60)
        return {"rows": rows, "tls": tls_notes, "scale": scale}
    finally:
        stop(procs)


def run_scale(shape, d, bport, rows, small):
    """1,000,000 tokens over 33,334 stacks (30 per stack): start-up, RSS, throughput. The
    throughput rounds alternate with rounds of the 1,000-token gateway (`small`: its pid
    and load function), so the two are compared within one phase of the run."""
    big = os.path.join(d, "big")
    t0 = time.time()
    seed(big, 33_334, 30, bport, "127.0.0.1:0")
    seed_s = time.time() - t0
    # The seeded store's pages are written out first, so no start-up shares the disk
    # and a core with that write-back. Start-up is the median of three starts (the
    # last one then serves); the peak RSS is the highest of them.
    os.sync()
    starts, peaks = [], []
    for _ in range(STARTS - 1):
        sgb, _, startup = start_stackgate(shape, os.path.join(big, "stackgate.toml"))
        starts.append(startup)
        peaks.append(status_mib(sgb.pid, "VmHWM"))
        stop([sgb])
    sgb, port, startup = start_stackgate(shape, os.path.join(big, "stackgate.toml"))
    starts.append(startup)
    try:
        rss_peak, rss_now = max(peaks + [status_mib(sgb.pid, "VmHWM")]), status_mib(sgb.pid, "VmRSS")
        j = 777_777
        headers = [f"api_key: blt{j // 30:016x}", f"authorization: cs{j:032x}", "branch: main"]
        pair = [("stackgate, HTTP/1.1, 1M tokens", "stackgate-1M", sgb.pid,
                 lambda: run_wrk(shape, d, f"http://127.0.0.1:{port}{PATH}", headers)),
                ("stackgate, HTTP/1.1, 1,000 tokens, beside 1M", "stackgate-1k-paired", *small)]
        for name, peer, _, _ in pair:
            rows[name] = {"group": "h1", "peer": peer, "runs": []}
        for rnd in range(ROUNDS):
            for name, _, pid, fn in (pair if rnd % 2 == 0 else pair[::-1]):
                r = measure(pid, fn)
                rows[name]["runs"].append(r)
                print(f"[{shape.name}] round {rnd + 1} {name:36} {r['rps']:>9.0f} req/s  p50 {fmt(r['p50'], 3)} ms  "
                      f"p99 {fmt(r['p99'], 3)} ms  errors {r['errors']}  CPU {r['cpu_per_100k']:.2f} s/100k", flush=True)
        # The allocator returns start-up garbage lazily: resident memory once serving.
        rss_serving = status_mib(sgb.pid, "VmRSS")
    finally:
        stop([sgb])
    return {"seed_s": seed_s, "startup_s": statistics.median(starts), "starts": starts, "rss_peak": rss_peak, "rss_now": rss_now,
            "rss_serving": rss_serving, "shape": shape.name}


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except Exception:
            p.kill()


def fmt(v, digits=2, suffix=""):
    return "–" if v is None else f"{v:,.{digits}f}{suffix}"


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "–"


def cpu_model():
    try:
        return [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")][0]
    except Exception:
        return platform.processor() or "unknown"


def versions():
    def first(cmd, pat):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            m = re.search(pat, r.stdout + r.stderr)
            return m.group(1) if m else "?"
        except Exception:
            return "?"
    return {"nginx": first(["nginx", "-v"], r"nginx/(\S+)"), "HAProxy": first(["haproxy", "-v"], r"version (\S+)"),
            "Caddy": first(["caddy", "version"], r"v?(\d[\w.\-]*)"), "wrk": first(["wrk", "-v"], r"wrk (\S+)"),
            "h2load": first(["h2load", "--version"], r"nghttp2/(\S+)"),
            "OpenSSL": first(["openssl", "version"], r"OpenSSL (\S+)")}


def rps_of(rows, group, peer):
    for row in rows.values():
        if row["group"] == group and row["peer"] == peer:
            return median(row["runs"], "rps")
    return None


def table(result):
    rows = result["rows"]
    out = ["| scenario | req/s | vs faster of nginx/HAProxy | vs nginx | vs HAProxy | vs Caddy | p50 ms | p99 ms | errors | CPU s/100k | RSS MiB |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        runs, g = row["runs"], row["group"]
        if not runs:
            out.append(f"| {name} | failed: {row.get('failed', 'no run')} | | | | | | | | | |")
            continue
        rps = median(runs, "rps")
        n, h, c = (rps_of(rows, g, p) for p in PEERS)
        best = max(x for x in (n, h) if x) if (n or h) else None
        out.append(f"| {name} | {rps:,.0f} | {ratio(rps, best)} | {ratio(rps, n)} | {ratio(rps, h)} | {ratio(rps, c)} | "
                   f"{fmt(median(runs, 'p50'), 3)} | {fmt(median(runs, 'p99'), 3)} | {sum(r['errors'] for r in runs)} | "
                   f"{fmt(median(runs, 'cpu_per_100k'))} | {max(r['rss'] for r in runs):.1f} |")
    return out


def headlines(shape, result):
    """One line per protocol: stackgate against the faster of nginx/HAProxy and against Caddy."""
    rows, lines = result["rows"], []
    for g, label in [("h1", "HTTP/1.1"), ("h1-64k", "HTTP/1.1 64 KiB body"), ("h1-write", "HTTP/1.1 write, 2 KiB body"),
                     ("h2c", "h2c"), ("tls-h1", "TLS HTTP/1.1"), ("tls-h2", "TLS h2")]:
        s = rps_of(rows, g, "stackgate")
        n, h, c = (rps_of(rows, g, p) for p in PEERS)
        best = max(x for x in (n, h) if x) if (n or h) else None
        lines.append(f"{shape} {label}: stackgate {ratio(s, best)}x the faster of nginx/HAProxy "
                     f"(nginx {ratio(s, n)}x, HAProxy {ratio(s, h)}x, Caddy {ratio(s, c)}x)")
    s, r = rps_of(rows, "h1", "stackgate"), rps_of(rows, "h1", "stackgate-redis")
    lines.append(f"{shape} Redis buckets: {ratio(r, s)}x local buckets")
    big, paired = rps_of(rows, "h1", "stackgate-1M"), rps_of(rows, "h1", "stackgate-1k-paired")
    if big:
        lines.append(f"{shape} 1M tokens: {ratio(big, paired)}x the 1,000-token gateway in alternating rounds")
    return lines


def section(shape, result, vers):
    rows, scale = result["rows"], result["scale"]
    sh = Shape(shape)
    if sh.pinned:
        where = (f"Each proxy single-process, single-thread, pinned to CPU {sh.proxy_cpu} (nginx `master_process off; "
                 f"worker_processes 1`, HAProxy `nbthread 1`, Caddy `GOMAXPROCS=1`, stackgate `--threads 1`); wrk/h2load, "
                 f"the backend (one nginx process, `return 200` with a small JSON body; a 64 KiB JSON file for the 64 KiB rows; the write rows POST 2 KiB of JSON) and Redis pinned to CPU {sh.load_cpu}.")
    else:
        where = (f"Nothing pinned: each proxy at its own default for the {NCPU} cores (nginx `worker_processes auto`, "
                 f"HAProxy's default nbthread, Caddy's default GOMAXPROCS, stackgate's default threads), sharing them with "
                 f"wrk/h2load, the backend (nginx `worker_processes auto`, `return 200` with a small JSON body; a 64 KiB JSON file for the 64 KiB rows; the write rows POST 2 KiB of JSON) and Redis.")
    tls = "; ".join(f"{p} {t}" for p, t in result["tls"].items())
    lines = [
        f"## {datetime.date.today()}: {shape} shape",
        "",
        f"Measured on {NCPU} cores ({cpu_model()}), Linux {platform.release()}; `bash benches/load.sh` "
        f"(`SHAPE={shape}`): wrk -t1 -c{sh.conns} -d{DURATION}s for HTTP/1.1 (h2load -c{sh.conns} -m1 -D{DURATION} for h2c "
        f"and h2), {ROUNDS} alternating rounds (odd rounds in reverse order), medians. {where} stackgate ({BUILD}) enforces "
        f"everything (token lookup, scope, branch, rate limits set high) for a token among 1,000; nginx "
        f"{vers['nginx']}, HAProxy {vers['HAProxy']} and Caddy {vers['Caddy']} only proxy, keeping connections to the "
        f"backend alive; access logs are off for all. Every TLS peer serves the same ECDSA P-256 certificate; the "
        f"clients offer only {TLS_SUITE} (wrk {vers['wrk']} and h2load {vers['h2load']} on OpenSSL {vers['OpenSSL']}); "
        f"`openssl s_client` negotiated: {tls}. nginx {vers['nginx']} has no `http2 on` (1.25.1+): its h2c row is "
        f"`listen ... http2` without `ssl` (prior knowledge, as h2load speaks). The \"vs\" columns compare req/s with the "
        f"peer's row of the same protocol (the backend, Redis and 1M-token rows with HTTP/1.1). Errors: socket errors "
        f"and non-2xx responses. CPU: user+system seconds of the proxy's processes per 100k requests; RSS: peak, "
        f"summed over the proxy's processes (nginx's master and workers); h1 and h2c rows share one process per peer, "
        f"TLS rows another.",
        "",
        *table(result),
        "",
    ]
    small = rps_of(rows, "h1", "stackgate")
    redis = rps_of(rows, "h1", "stackgate-redis")
    sp99 = median(rows["stackgate, HTTP/1.1"]["runs"], "p99")
    rp99 = median(rows["stackgate, HTTP/1.1, Redis buckets"]["runs"], "p99")
    note = (f"Redis buckets vs local buckets (same run): throughput {ratio(redis, small)}x, p99 {ratio(rp99, sp99)}x "
            f"(Redis {'on the load generator core' if sh.pinned else 'unpinned'}).")
    if scale:
        big, paired = rps_of(rows, "h1", "stackgate-1M"), rps_of(rows, "h1", "stackgate-1k-paired")
        note += (f" With 1,000,000 tokens over 33,334 stacks: seeding the store took {scale['seed_s']:.1f} s, start-up "
                 f"(store load + snapshot build, to listening) {scale['startup_s']:.1f} s (median of "
                 f"{', '.join(f'{x:.1f}' for x in scale['starts'])} s), RSS {scale['rss_now']:.0f} MiB "
                 f"when it starts listening (peak during start-up {scale['rss_peak']:.0f} MiB) and "
                 f"{scale['rss_serving']:.0f} MiB after the load runs; throughput {fmt(big, 0)} req/s = "
                 f"{ratio(big, paired)}x the 1,000-token gateway in rounds alternating with it ({fmt(paired, 0)} req/s).")
    lines += [note, ""]
    return "\n".join(lines)


def write_doc(sections):
    content = open(DOC).read()
    text = "\n".join(sections)
    if DOC_MARK in content:
        # After the marker line: newest results first.
        head, rest = content.split(DOC_MARK, 1)
        mark_line, after = rest.split("\n", 1)
        content = head + DOC_MARK + mark_line + "\n\n" + text + "\n" + after.lstrip("\n")
    else:
        m = re.search(r"^## ", content, re.M)
        content = content[:m.start()] + text + "\n" + content[m.start():] if m else content + "\n" + text
    open(DOC, "w").write(content)
    print(f"{os.path.relpath(DOC, ROOT)}: {len(sections)} section(s) added")


def main():
    d = tempfile.mkdtemp(prefix="stackgate-bench-")
    # nginx's workers (all-cores shape: a master, workers as `nobody`) read the 64 KiB
    # file under it: mkdtemp makes it 0700.
    os.chmod(d, 0o755)
    cert, key, pem = make_cert(d)
    state = {"cert": cert, "key": key, "pem": pem}
    results = {}
    for name in SHAPES:
        print(f"== {name} shape: {ROUNDS} round(s) of {DURATION}s per row", flush=True)
        results[name] = run_shape(Shape(name), d, state)
    vers = versions()
    sections = [section(name, results[name], vers) for name in SHAPES]
    print()
    for s in sections:
        print(s)
    print("Headline ratios (medians, same run):")
    for name in SHAPES:
        for line in headlines(name, results[name]):
            print("  " + line)
    errors = sum(r["errors"] for res in results.values() for row in res["rows"].values() for r in row["runs"])
    failed = [f"{n}: {name}" for n, res in results.items() for name, row in res["rows"].items() if not row["runs"]]
    print(f"errors over all rows: {errors}" + (f"; rows without a run: {', '.join(failed)}" if failed else ""))
    if not QUICK:
        write_doc(sections)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
