#!/usr/bin/env bash
# Memory per idle connection, Portier against a plain Pingora passthrough, same run:
#   benches/idle.sh [N=10000]
# Builds the release binaries, starts an upstream (examples/fast_upstream), a passthrough and
# `portier run` (1 thread each, on 127.0.0.1), and runs benches/idle_conns.py against each:
# RSS at start, with N idle connections, after one request each, after they all closed.
# Portier runs with request_header_timeout_seconds = 600 here so the idle connections are held
# (the default, 10 s, would close them: that is the next step). Then (SLOW seconds, default 40;
# SLOW=0 skips) slow clients (benches/slowloris.py: 50 stalled heads, 50 heads trickled a byte
# every 2 s, an ordinary client meanwhile) against Portier with its defaults, and the
# portier_request_head_timeouts_total it counted.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
OUT=target/idle-bench
mkdir -p "$OUT"
# The hard limit may be below what N connections need on both sides; take what is allowed.
ulimit -n "$(ulimit -Hn)"
cargo build --release --locked --bin portier --example passthrough --example fast_upstream --example mint >/dev/null 2>&1
B=target/release
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); PASS=$(port); PORTIER=$(port)
"$B/examples/fast_upstream" "$UP" >/dev/null 2>&1 & pids+=($!)
"$B/examples/passthrough" "$PASS" "127.0.0.1:$UP" 1 >/dev/null 2>&1 & pids+=($!)
PASS_PID=$!
mkdir -p "$OUT/policies"
cat >"$OUT/config.toml" <<EOC
[server]
listen = ["127.0.0.1:$PORTIER"]
threads = 1
grace_period_seconds = 0
request_header_timeout_seconds = 600
[clerk]
issuer = "https://clerk.bench.test"
missing_azp = "allow"
[clerk.jwks]
url = "http://127.0.0.1:$UP/jwks.json"
[upstreams.app]
peers = ["127.0.0.1:$UP"]
[decision_log]
mode = "off"
EOC
cat >"$OUT/policies/p.toml" <<EOC
[[route]]
name = "public"
path = "/{rest..}"
methods = ["GET"]
upstream = "app"
access = "public"
EOC
RUST_LOG=error "$B/portier" run -c "$OUT/config.toml" >/dev/null 2>&1 & pids+=($!)
PORTIER_PID=$!
sleep 1
echo "## idle connections: $N, $(date -u +%FT%RZ)"
echo "passthrough: $(python3 benches/idle_conns.py "$PASS_PID" "127.0.0.1:$PASS" "$N" /x | tr '\n' ' ')"
echo "portier:     $(python3 benches/idle_conns.py "$PORTIER_PID" "127.0.0.1:$PORTIER" "$N" /x | tr '\n' ' ')"
# mimalloc keeps freed pages for reuse; with no purge delay it returns them at once.
kill "$PORTIER_PID"; wait "$PORTIER_PID" 2>/dev/null || true
MIMALLOC_PURGE_DELAY=0 RUST_LOG=error "$B/portier" run -c "$OUT/config.toml" >/dev/null 2>&1 & pids+=($!)
PORTIER_PID=$!
sleep 1
echo "portier, MIMALLOC_PURGE_DELAY=0: $(python3 benches/idle_conns.py "$PORTIER_PID" "127.0.0.1:$PORTIER" "$N" /x | tr '\n' ' ')"

SLOW=${SLOW:-40}
if [ "$SLOW" -gt 0 ]; then
  kill "$PORTIER_PID"; wait "$PORTIER_PID" 2>/dev/null || true
  ADMIN=$(port)
  sed -e '/request_header_timeout_seconds/d' "$OUT/config.toml" >"$OUT/default.toml"
  printf '[admin]\nlisten = "127.0.0.1:%s"\n' "$ADMIN" >>"$OUT/default.toml"
  RUST_LOG=error "$B/portier" run -c "$OUT/default.toml" >/dev/null 2>&1 & pids+=($!)
  PORTIER_PID=$!
  sleep 1
  echo "slow clients, default settings ($SLOW s): $(python3 benches/slowloris.py "127.0.0.1:$PORTIER" /x "$SLOW" 50)"
  echo "counted: $(curl -s "http://127.0.0.1:$ADMIN/metrics" | grep '^portier_request_head_timeouts_total')"
fi
