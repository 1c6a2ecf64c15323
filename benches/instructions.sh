#!/usr/bin/env bash
# Instructions per request, counted by callgrind: the noise-free figure beside the load
# bench's wall-clock ratios (callgrind counts the same for the same binary and inputs,
# whatever else the machine does).
#
#   benches/instructions.sh            # N=2000 requests per target after WARM=200
#
# Targets, each a release binary under `valgrind --tool=callgrind` on 127.0.0.1, one worker
# thread, one keep-alive connection from a Python client (not counted): a plain Pingora
# passthrough (examples/passthrough), Portier with one token (verified-token cache hit) and
# Portier with a distinct token per request and the token cache off (RS256 each). The route
# is load.sh's `items` (signed in, plan pro), decision log "all". Counting is zeroed after the
# warm-up (key fetch, first connections) and dumped after the N requests, so the figure is
# the steady state: total instructions / N, all threads included.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
WARM=${WARM:-200}
OUT=$PWD/target/instructions
ISSUER=https://clerk.bench.test
AZP=https://app.bench.test
rm -rf "$OUT" && mkdir -p "$OUT/policies"
cargo build --release --locked --bin portier --example passthrough --example fast_upstream \
  --example mint >/dev/null 2>&1
B=target/release
"$B/examples/mint" "$OUT/keys" $((N + WARM)) "$ISSUER" "$AZP" 7200 >/dev/null
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port)
"$B/examples/fast_upstream" "$UP" "$OUT/keys/jwks.json" >/dev/null 2>&1 &
pids+=($!)

portier_config() { # NAME EXTRA_CLERK PORT
  cat >"$OUT/$1.toml" <<EOF
[server]
listen = ["127.0.0.1:$3"]
threads = 1
grace_period_seconds = 0
[clerk]
issuer = "$ISSUER"
authorized_parties = ["$AZP"]
missing_azp = "reject"
$2
[clerk.jwks]
url = "http://127.0.0.1:$UP/jwks.json"
[upstreams.app]
peers = ["127.0.0.1:$UP"]
credentials = "strip"
[policies]
dir = "$OUT/policies"
[decision_log]
mode = "all"
path = "$OUT/$1.decisions.jsonl"
EOF
}
cat >"$OUT/policies/bench.toml" <<'EOF'
[[route]]
name = "items"
path = "/api/items/{id}"
methods = ["GET"]
upstream = "app"
plan = ["pro"]
EOF

# client PORT COUNT SKIP TOKENS: COUNT requests on one keep-alive connection, each with the
# token on line SKIP+i of TOKENS (or always the first line when TOKENS is the one-token file).
client() {
  python3 - "$@" <<'PY'
import socket, sys
port, count, skip, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
tokens = open(path).read().split()
s = socket.create_connection(("127.0.0.1", port))
f = s.makefile("rb")
for i in range(count):
    t = tokens[(skip + i) % len(tokens)]
    s.sendall(f"GET /api/items/42 HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {t}\r\n\r\n".encode())
    status = f.readline()
    if b" 200 " not in status:
        sys.exit(f"request {i}: {status!r}")
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    f.read(length)
PY
}

# count NAME PORT TOKENS CMD...: instructions per request of CMD under callgrind.
count() {
  local name=$1 p=$2 tokens=$3
  shift 3
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.callgrind" "$@" \
    >"$OUT/$name.log" 2>&1 &
  local pid=$!
  pids+=($pid)
  for _ in $(seq 600); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$p),timeout=1)" 2>/dev/null && break
    sleep 0.1
  done
  client "$p" "$WARM" 0 "$tokens"
  callgrind_control -z "$pid" >/dev/null
  client "$p" "$N" "$WARM" "$tokens"
  callgrind_control -d "$pid" >/dev/null
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  local total
  total=$(cat "$OUT/$name.callgrind".* 2>/dev/null | awk '/^(summary|totals):/ {print $2; exit}')
  printf '%-44s %12s instructions/request\n' "$name" "$((total / N))"
}

echo "## instructions per request (callgrind), N=$N after $WARM, $(date -u +%FT%RZ), $(git rev-parse --short HEAD)"
P=$(port)
count "plain Pingora passthrough" "$P" "$OUT/keys/token.txt" "$B/examples/passthrough" "$P" "127.0.0.1:$UP" 1
P=$(port)
portier_config hit "" "$P"
count "Portier, one token (cache hit)" "$P" "$OUT/keys/token.txt" "$B/portier" run -c "$OUT/hit.toml"
P=$(port)
portier_config miss "token_cache_capacity = 0" "$P"
count "Portier, distinct tokens (RS256 each)" "$P" "$OUT/keys/tokens.txt" "$B/portier" run -c "$OUT/miss.toml"
