#!/usr/bin/env bash
# Load benchmark: stackgate against nginx, HAProxy and the bare backend, on loopback.
#   bash benches/load.sh            # full run (about 12 minutes), rewrites the README results
#   QUICK=1 bash benches/load.sh    # one short round, no README change
# Installs its peers from Debian (nginx-light, haproxy, wrk, nghttp2-client, openssl, redis-server),
# builds release binaries, then runs benches/load.py.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for cmd in nginx haproxy wrk h2load openssl taskset python3 redis-server; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light haproxy wrk nghttp2-client openssl util-linux python3 redis-server >/dev/null
fi
cargo build --profile dist --locked --bin stackgate --example seed_store
exec python3 benches/load.py "$@"
