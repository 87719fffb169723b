#!/usr/bin/env bash
# Runs every test (README's test command). The scale-out tests need PostgreSQL and Redis
# on loopback: this makes sure both answer (starting them where they are installed),
# points the tests at them, then runs `cargo test --locked` (extra arguments are passed
# on). Where the servers cannot be had, those tests are skipped with a printed reason,
# unless STACKGATE_REQUIRE_SERVICES=1 (CI), which makes that an error.
# The official SDKs that tests/sdk.rs drives are installed here too, under target/ (a
# Python virtualenv and an npm prefix), so a fresh machine runs what CI runs. A missing
# SDK fails its test unless STACKGATE_ALLOW_SKIP=1. Chromium and chromedriver (Debian's
# packages) drive tests/console.rs; missing, that test fails too unless STACKGATE_ALLOW_SKIP=1.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_HOST=127.0.0.1 PG_PORT=5432 REDIS_PORT=6379
require="${STACKGATE_REQUIRE_SERVICES:-0}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

wait_for() { # name, command...
    local name=$1; shift
    for _ in $(seq 1 50); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "test.sh: $name did not come up" >&2; return 1
}

redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }
pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; }

ensure_redis() {
    # The fault, TLS and cluster tests start private redis-server processes (TLS-only,
    # and a six-node cluster joined by redis-cli), so both binaries must exist;
    # Debian's redis-server is built with TLS.
    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        as_root apt-get install -y -qq redis-server redis-tools >/dev/null || return 1
    fi
    redis_up && return 0
    as_root mkdir -p /var/lib/redis /var/log/redis || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null || return 1
    wait_for redis redis_up
}

# tests/scaleout_tls.rs also runs a throwaway cluster with this installation's initdb and
# pg_ctl (as the `postgres` user when run as root), and checks sslmode=require against
# the main one: Debian's cluster has ssl = on with the snakeoil certificate.
ensure_postgres() {
    command -v pg_isready >/dev/null || return 1
    pg_up && return 0
    local version
    version=$(ls /etc/postgresql 2>/dev/null | head -1)
    [ -n "$version" ] || return 1
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || return 1
    wait_for postgresql pg_up
}

# tests/scaleout.rs puts HAProxy (option forwardfor) in front of three replicas.
ensure_haproxy() {
    command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] && return 0
    as_root apt-get install -y -qq haproxy >/dev/null
}

services=1
ensure_haproxy || echo "test.sh: HAProxy is not available" >&2
ensure_redis || { echo "test.sh: Redis is not available" >&2; services=0; }
ensure_postgres || { echo "test.sh: PostgreSQL is not available" >&2; services=0; }
if [ "$services" = 1 ]; then
    export STACKGATE_TEST_POSTGRES_URL="${STACKGATE_TEST_POSTGRES_URL:-postgres://$(id -un)@$PG_HOST:$PG_PORT/test}"
    export STACKGATE_TEST_REDIS_URL="${STACKGATE_TEST_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT}"
    echo "test.sh: scale-out tests use $STACKGATE_TEST_POSTGRES_URL and $STACKGATE_TEST_REDIS_URL"
elif [ "$require" = 1 ]; then
    echo "test.sh: STACKGATE_REQUIRE_SERVICES=1 but PostgreSQL/Redis are missing" >&2
    exit 1
else
    echo "test.sh: scale-out tests will be skipped" >&2
fi

# Official SDKs (tests/sdk.rs): installed once, reused while present.
VENV="$PWD/target/venv" JS_SDK="$PWD/target/js-sdk" CSDX="$PWD/target/csdx"

ensure_python_sdk() {
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV" 2>/dev/null || {
            as_root apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$VENV"
        } || return 1
    fi
    "$VENV/bin/python" -c "import contentstack_management, pyotp" 2>/dev/null && return 0
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check contentstack-management pyotp
}

ensure_js_sdk() {
    command -v npm >/dev/null || return 1
    [ -f "$JS_SDK/node_modules/@contentstack/management/package.json" ] && return 0
    mkdir -p "$JS_SDK"
    npm install --prefix "$JS_SDK" --no-audit --no-fund --silent "@contentstack/management@^1"
}

# The official CLI, for tests/csdx.rs (a full `csdx cm:stacks:export` through the gateway).
ensure_csdx() {
    command -v npm >/dev/null || return 1
    [ -x "$CSDX/node_modules/.bin/csdx" ] && return 0
    mkdir -p "$CSDX"
    npm install --prefix "$CSDX" --no-audit --no-fund --silent "@contentstack/cli@^1"
}

# Chromium and its WebDriver, for tests/console.rs (the token console in a real browser).
ensure_chromium() {
    command -v chromium >/dev/null && command -v chromedriver >/dev/null && return 0
    as_root apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || {
        as_root apt-get update -qq >/dev/null && as_root apt-get install -y -qq chromium chromium-driver >/dev/null
    }
}

mkdir -p target
ensure_chromium || echo "test.sh: could not install chromium and chromium-driver" >&2
ensure_csdx || echo "test.sh: could not install @contentstack/cli into $CSDX" >&2
ensure_python_sdk || echo "test.sh: could not install the Python SDK into $VENV" >&2
ensure_js_sdk || echo "test.sh: could not install @contentstack/management into $JS_SDK" >&2
export STACKGATE_PYTHON="$VENV/bin/python" STACKGATE_JS_SDK_DIR="$JS_SDK" STACKGATE_CSDX_DIR="$CSDX"

cargo test --locked "$@"
