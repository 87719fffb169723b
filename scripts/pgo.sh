#!/usr/bin/env bash
# Builds stackgate with profile-guided optimisation (PGO): the `dist` profile, compiled
# once instrumented, run under a training load, then compiled again with the measured
# profile (branch weights, inlining and code layout follow what the request path really
# does). The binary lands in target/pgo/stackgate. Used by benches/load.sh; run it alone
# for a release build:
#   bash scripts/pgo.sh
# Training (about a minute, loopback only, bounded by h2load's request counts), against
# an nginx backend and a gateway seeded with 1,000 tokens: HTTP/1.1, h2c, TLS HTTP/1.1
# and TLS h2 reads, writes with bodies over HTTP/1.1 and h2c, 64 KiB responses, refused
# requests (no token, an unknown one, a module no token may touch) and, if redis-server
# is installed, reads charged to Redis buckets. Not trained: the token API, the admin
# listener, HTTP/2 or TLS upstreams, PostgreSQL, access logs (off, as in the benchmark).
# Every training run must be answered as expected (2xx, or 4xx for the refusals), or the
# script stops. Installs what it needs: nginx-light, nghttp2-client (h2load), openssl,
# python3 from Debian, and llvm-profdata from rustup's llvm-tools (it must match
# rustc's LLVM). Any RUSTFLAGS of yours are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
need=()
for cmd in nginx h2load openssl python3; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light nghttp2-client openssl python3 >/dev/null
fi
profdata="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  command -v rustup >/dev/null 2>&1 || { echo "llvm-profdata needs rustup (component llvm-tools)" >&2; exit 1; }
  rustup component add llvm-tools
  [ -x "$profdata" ] || { echo "no llvm-profdata at $profdata after adding llvm-tools" >&2; exit 1; }
fi

target=${CARGO_TARGET_DIR:-$root/target}
work=$root/target/pgo
rm -rf "$work"
mkdir -p "$work/raw" "$work/train"
# The seeding tool is built as usual; only the gateway is instrumented. Each build has
# its own target directory: RUSTFLAGS differ, and sharing one would rebuild everything
# each time. (The profile-use build is rebuilt whole on every run: rustc records the
# profile file, which is new each time.)
cargo build --profile dist --locked --example seed_store
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$work/raw" CARGO_TARGET_DIR=$root/target/pgo-gen \
  cargo build --profile dist --locked --bin stackgate
# Build scripts ran instrumented too: only the training's profiles are kept.
rm -f "$work"/raw/*

t=$work/train
# Background processes: the instrumented gateways, and the backend and Redis.
gateways=()
others=()
cleanup() {
  for p in "${gateways[@]}" "${others[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Waits until PID listens on PORT (or has exited: then fails).
wait_port() {
  for _ in $(seq 200); do
    kill -0 "$1" 2>/dev/null || { echo "process $1 exited before port $2 opened" >&2; return 1; }
    (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $2 never opened" >&2
  return 1
}

bport=$(free_port)
prefix='{"asset":{"uid":"blt0000000000000a01","data":"'
{ printf '%s' "$prefix"; head -c $((64 * 1024 - ${#prefix} - 4)) /dev/zero | tr '\0' x; printf '"}}\n'; } >"$t/asset-64k.json"
cat >"$t/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $t/nginx.pid; error_log $t/nginx.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000; client_body_temp_path $t; proxy_temp_path $t;
  fastcgi_temp_path $t; uwsgi_temp_path $t; scgi_temp_path $t;
  server { listen 127.0.0.1:$bport;
    location /v3/assets/ { default_type application/json; root $t; try_files /asset-64k.json =404; }
    location / { default_type application/json;
      return 200 '{"entries":[{"uid":"blt0000000000000e01","title":"Hello"}],"count":1}'; } } }
EOF
nginx -p "$t" -c "$t/nginx.conf" 2>"$t/nginx.stderr" &
others+=($!)
wait_port "$!" "$bport"

"$target/dist/examples/seed_store" "$t" 34 30 "127.0.0.1:$bport" 127.0.0.1:0 >/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$t/key.pem" \
  -out "$t/cert.pem" -days 2 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 2>/dev/null
sed -i "s|^\[server\]$|[server]\ntls = { cert = \"$t/cert.pem\", key = \"$t/key.pem\" }|" "$t/stackgate.toml"
cp "$t/stackgate.toml" "$t/tls-base.toml"
sed -i '/^tls = /d' "$t/stackgate.toml"

# Starts an instrumented gateway on CONFIG (its own copy of the store); sets `port`.
gateway() {
  local name=$1 config=$2 pid
  cp "$t/tokens.db" "$t/tokens-$name.db"
  sed "s|$t/tokens.db|$t/tokens-$name.db|" "$config" >"$t/$name.toml"
  : >"$t/$name.out"
  RUST_LOG=warn target/pgo-gen/dist/stackgate run --config "$t/$name.toml" --threads 1 \
    >"$t/$name.out" 2>"$t/$name.err" &
  pid=$!
  gateways+=("$pid")
  for _ in $(seq 200); do
    port=$(sed -n 's|^stackgate listening on https\?://127.0.0.1:\([0-9]*\)$|\1|p' "$t/$name.out" | head -n 1)
    [ -n "$port" ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "gateway $name did not start; see $t/$name.err" >&2
  return 1
}

gateway plain "$t/stackgate.toml"
plain=$port
gateway tls "$t/tls-base.toml"
tls=$port
redis=""
if command -v redis-server >/dev/null 2>&1; then
  rport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
  others+=($!)
  wait_port "$!" "$rport"
  # Closed: a Redis that does not answer shows as 503s (and fails the run), rather than
  # as requests admitted by local buckets.
  { cat "$t/stackgate.toml"; printf '\n[ratelimit]\nbackend = "redis"\nurl = "redis://127.0.0.1:%s"\nfail_mode = "closed"\n' "$rport"; } >"$t/redis-base.toml"
  gateway redis "$t/redis-base.toml"
  redis=$port
else
  echo "redis-server not installed: no training with Redis buckets" >&2
fi

# Token 777 of the seeded store: stack 777 / 30 = 25.
key="api_key: blt$(printf %016x 25)"
auth="authorization: cs$(printf %032x 777)"
entries=/v3/content_types/blog_post/entries?locale=en-us
printf '{"entry":{"title":"Hello","url":"/hello"}}' >"$t/entry.json"
# `load CLASS h2load-args...`: one training run, each of whose requests must have been
# answered with a status of CLASS (2xx or 4xx).
load() {
  local class=$1 out n codes total finished c2 c3 c4 c5 want
  shift
  out=$(h2load "$@" 2>&1) || true
  printf '%s\n' "$out" >>"$t/h2load.log"
  n=$(sed -n 's/^requests: \([0-9]*\) total, [0-9]* started, \([0-9]*\) done.*/\1 \2/p' <<<"$out")
  codes=$(sed -n 's/^status codes: \([0-9]*\) 2xx, \([0-9]*\) 3xx, \([0-9]*\) 4xx, \([0-9]*\) 5xx$/\1 \2 \3 \4/p' <<<"$out")
  read -r total finished <<<"${n:-x y}"
  read -r c2 c3 c4 c5 <<<"${codes:-0 0 0 0}"
  case $class in 2xx) want=$c2 ;; 4xx) want=$c4 ;; esac
  if [ "$total" != "$finished" ] || [ "$want" != "$total" ]; then
    echo "training run not answered as expected ($class): h2load $*" >&2
    printf '%s\n' "$out" | tail -n 8 >&2
    exit 1
  fi
}
for port in "$plain" $redis; do
  load 2xx --h1 -n 150000 -c 50 -H "$key" -H "$auth" -H "branch: main" "http://127.0.0.1:$port$entries"
  load 2xx -n 100000 -c 50 -m 1 -H "$key" -H "$auth" "http://127.0.0.1:$port$entries"
done
load 2xx --h1 -n 20000 -c 20 -H "$key" -H "$auth" "http://127.0.0.1:$plain/v3/assets/blt0000000000000a01"
load 2xx --h1 -n 20000 -c 20 -d "$t/entry.json" -H "$key" -H "$auth" -H "content-type: application/json" \
  "http://127.0.0.1:$plain/v3/content_types/blog_post/entries"
load 2xx -n 10000 -c 20 -m 4 -d "$t/entry.json" -H "$key" -H "$auth" -H "content-type: application/json" \
  "http://127.0.0.1:$plain/v3/content_types/blog_post/entries"
load 4xx --h1 -n 5000 -c 10 -H "$key" "http://127.0.0.1:$plain$entries"
load 4xx --h1 -n 5000 -c 10 -H "$key" -H "authorization: cs$(printf %032x 99999)" "http://127.0.0.1:$plain$entries"
load 4xx --h1 -n 5000 -c 10 -H "$key" -H "$auth" "http://127.0.0.1:$plain/v3/stacks/settings"
load 2xx --h1 -n 50000 -c 50 -H "$key" -H "$auth" "https://127.0.0.1:$tls$entries"
load 2xx -n 50000 -c 50 -m 1 -H "$key" -H "$auth" "https://127.0.0.1:$tls$entries"

# Each gateway writes its profile as it exits (SIGTERM: a normal exit after the drain,
# given 30 s); then the backend and Redis stop.
for p in "${gateways[@]}"; do kill -TERM "$p"; done
for p in "${gateways[@]}"; do
  for _ in $(seq 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2>/dev/null; then
    echo "a training gateway did not exit within 30 s of SIGTERM" >&2
    exit 1
  fi
  wait "$p" || { echo "a training gateway exited with an error" >&2; exit 1; }
done
gateways=()
cleanup
others=()
"$profdata" merge -o "$work/merged.profdata" "$work"/raw/*.profraw
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$work/merged.profdata" CARGO_TARGET_DIR=$root/target/pgo-use \
  cargo build --profile dist --locked --bin stackgate
cp target/pgo-use/dist/stackgate "$work/stackgate"
echo "built $work/stackgate (profile-guided)"
