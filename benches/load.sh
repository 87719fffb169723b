#!/usr/bin/env bash
# Load benchmark: stackgate against nginx, HAProxy, Caddy and the bare backend, on loopback,
# over HTTP/1.1, h2c, TLS HTTP/1.1 and TLS h2, in two shapes (pinned: one core for the proxy;
# all: nothing pinned, every peer at its defaults), plus Redis buckets and 1,000,000 tokens.
#   bash benches/load.sh                  # full run (about an hour with the builds): one dated section per
#                                         # shape at the top of the results in docs/benchmarks.md
#   SHAPE=pinned bash benches/load.sh     # one shape (pinned | all | both, the default)
#   QUICK=1 bash benches/load.sh          # one short round, docs left alone
#   ROUNDS=7 DURATION=15 bash benches/load.sh
#   PGO=0 bash benches/load.sh            # the plain `dist` build instead of the profile-guided one
#   bash benches/load.sh shapes           # benches/shapes.py instead: client shapes the rows leave out
#                                         # (h2c with many streams, HTTP/1.0 keep-alive, 1,000 connections,
#                                         # a connection per request), one section per shape
# Installs its peers from Debian (nginx-light, haproxy, caddy, wrk, nghttp2-client, openssl,
# redis-server, apache2-utils), builds release binaries, then runs benches/load.py.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for cmd in nginx haproxy caddy wrk h2load openssl taskset python3 redis-server ab; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light haproxy caddy wrk nghttp2-client openssl util-linux python3 redis-server apache2-utils >/dev/null
fi
# The gateway measured is the profile-guided build (scripts/pgo.sh: two `dist` builds
# with about a minute of training between them); PGO=0 measures the plain `dist` build.
unset STACKGATE_BIN STACKGATE_BUILD
if [ "${PGO:-1}" = 0 ]; then
  cargo build --profile dist --locked --bin stackgate --example seed_store
else
  bash scripts/pgo.sh
  export STACKGATE_BIN=$PWD/target/pgo/stackgate STACKGATE_BUILD="the profile-guided \`dist\` build of scripts/pgo.sh"
fi
if [ "${1:-}" = shapes ]; then
  shift
  exec python3 benches/shapes.py "$@"
fi
exec python3 benches/load.py "$@"
