#!/usr/bin/env bash
# Instructions per request, counted by callgrind: the noise-free figure beside the load
# bench's wall-clock ratios (callgrind counts the same for the same binary and inputs,
# whatever else the machine does).
#
#   benches/instructions.sh                       # N=2000 requests per target after WARM=200
#   N=500 ONLY="passthrough hit" benches/instructions.sh
#   BIN=/some/dir SKIP_BUILD=1 benches/instructions.sh   # count other binaries (a "before" copy)
#
# How it measures, per target: the server runs under `valgrind --tool=callgrind` (release
# binary, one worker thread, 127.0.0.1 only); a Python client (not counted) sends WARM requests
# on one keep-alive connection (key fetch, first connections, caches, the pool to the
# upstream), then `callgrind_control -z` zeroes the counters, the client sends N more on the
# same connection, and `callgrind_control -d` dumps. The dump's total instructions (Ir, all
# threads of the process) divided by N is instructions per request; the calls it records to
# Rust's allocator entry points (`__rust_alloc`, `__rust_alloc_zeroed`, `__rust_realloc`)
# divided by N are heap allocations per request (C code calling malloc itself, such as
# aws-lc, is not in that figure). Every answer must be a 2xx or the run stops.
#
# Targets (ONLY= selects by the short name in brackets):
#   [passthrough] plain Pingora passthrough (examples/passthrough) in front of fast_upstream;
#   [hit]    Portier, route `items` (signed in, plan pro), one token: verified-token cache hit;
#   [miss]   Portier, a distinct token per request and token_cache_capacity = 0 (RS256 each);
#   [s3get]  Portier's S3 GET path: GET /files/<own key> of a 1 KiB object (policy, SigV4
#            signing, the store's answer streamed back), store = examples/s3_store in memory
#            mode (s3s checks each signature; a separate process, not counted);
#   [upload] the file API upload: POST /api/s3/upload, multipart form (s3_key first, then a
#            1 KiB file), which Portier parses and stores with one PutObject (its S3 client).
# Decision log "all" to a file, as shipped. Knobs: N WARM ONLY BIN SKIP_BUILD OUT.
# Everything started is killed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
WARM=${WARM:-200}
ONLY=${ONLY:-}
OUT=${OUT:-$PWD/target/instructions}
B=${BIN:-$PWD/target/release}
ISSUER=https://clerk.bench.test
AZP=https://app.bench.test
rm -rf "$OUT" && mkdir -p "$OUT"
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  # Waits for the shared target directory when another build holds it.
  flock /tmp/portier-cargo.lock cargo build --release --locked --bin portier \
    --example passthrough --example fast_upstream --example mint --example s3_store >/dev/null 2>&1
fi
for b in portier examples/passthrough examples/fast_upstream examples/mint examples/s3_store; do
  [[ -x $B/$b ]] || { echo "missing $B/$b" >&2; exit 1; }
done
"$B/examples/mint" "$OUT/keys" $((N + WARM)) "$ISSUER" "$AZP" 7200 >/dev/null
SUB=$(python3 -c 'import base64,json,sys; p=open(sys.argv[1]).read().split(".")[1]; print(json.loads(base64.urlsafe_b64decode(p+"="*(-len(p)%4)))["sub"])' "$OUT/keys/token.txt")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
want() { [[ -z $ONLY ]] || [[ " $ONLY " == *" $1 "* ]]; }
UP=$(port)
"$B/examples/fast_upstream" "$UP" "$OUT/keys/jwks.json" >/dev/null 2>&1 &
pids+=($!)
S3_AK=BENCHACCESSKEY0000001
S3_SK=benchsecretkey000000000000000000000000000
if want s3get || want upload; then
  "$B/examples/s3_store" mem "$S3_AK" "$S3_SK" "$OUT/s3.addr" >"$OUT/s3store.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do [[ -s $OUT/s3.addr ]] && break; sleep 0.1; done
fi
export BENCH_S3_AK=$S3_AK BENCH_S3_SK=$S3_SK

portier_config() { # NAME EXTRA_CLERK PORT [S3]
  mkdir -p "$OUT/$1/policies"
  cat >"$OUT/$1/config.toml" <<EOF
[server]
listen = ["127.0.0.1:$3"]
threads = 1
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
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
dir = "$OUT/$1/policies"
[decision_log]
mode = "all"
path = "$OUT/$1/decisions.jsonl"
EOF
  cat >"$OUT/$1/policies/bench.toml" <<'EOF'
[[route]]
name = "items"
path = "/api/items/{id}"
methods = ["GET"]
upstream = "app"
plan = ["pro"]
EOF
  if [[ ${4:-} == s3 ]]; then
    cat >>"$OUT/$1/config.toml" <<EOF
[s3]
endpoint = "http://$(cat "$OUT/s3.addr")"
region = "us-east-1"
bucket = "bench"
addressing = "path"
access_key_id_env = "BENCH_S3_AK"
secret_access_key_env = "BENCH_S3_SK"
session_token_env = "BENCH_S3_NO_TOKEN"
EOF
    cat >>"$OUT/$1/policies/bench.toml" <<'EOF'

[[route]]
name = "files"
path = "/files/{key..}"
methods = ["GET", "PUT"]
upstream = "s3"
s3 = "object"
owner = "key"

[[route]]
name = "s3-upload"
path = "/api/s3/upload"
methods = ["POST"]
upstream = "s3"
s3 = "upload"
objects = "files"
EOF
  fi
}

# client PORT COUNT SKIP TOKENS MODE [PATH]: COUNT requests on one keep-alive connection, each
# with the token on line SKIP+i of TOKENS (the one-token file gives the same token each time).
# MODE get: GET PATH; put: PUT PATH with a 1 KiB body; upload: the multipart form to PATH.
client() {
  python3 - "$@" <<'PY'
import socket, sys
port, count, skip, path, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
target = sys.argv[6] if len(sys.argv) > 6 else "/api/items/42"
tokens = open(path).read().split()
s = socket.create_connection(("127.0.0.1", port), timeout=60)
f = s.makefile("rb")
data = bytes((i * 7) % 251 for i in range(1024))
B = "portierbenchboundary"
for i in range(count):
    t = tokens[(skip + i) % len(tokens)]
    head = f"Host: bench\r\nAuthorization: Bearer {t}\r\n"
    if mode == "get":
        req = f"GET {target} HTTP/1.1\r\n{head}\r\n".encode()
    elif mode == "put":
        req = f"PUT {target} HTTP/1.1\r\n{head}Content-Length: {len(data)}\r\n\r\n".encode() + data
    else:
        form = (f"--{B}\r\nContent-Disposition: form-data; name=\"s3_key\"\r\n\r\n{sys.argv[7]}\r\n"
                f"--{B}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n"
                f"Content-Type: text/plain\r\n\r\n").encode() + data + f"\r\n--{B}--\r\n".encode()
        req = (f"POST {target} HTTP/1.1\r\n{head}Content-Type: multipart/form-data; boundary={B}\r\n"
               f"Content-Length: {len(form)}\r\n\r\n").encode() + form
    s.sendall(req)
    status = f.readline()
    if not status.startswith(b"HTTP/1.1 2"):
        sys.exit(f"request {i}: {status!r}")
    length, chunked = 0, False
    while (line := f.readline()) not in (b"\r\n", b""):
        low = line.lower()
        if low.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        elif low.startswith(b"transfer-encoding:") and b"chunked" in low:
            chunked = True
    if chunked:
        while (size := int(f.readline().split(b";")[0], 16)) > 0:
            f.read(size + 2)
        f.readline()
    else:
        f.read(length)
PY
}

# Calls to the Rust allocator entry points, from a callgrind dump (names are compressed:
# `(id) name` the first time, `(id)` after).
allocs() {
  python3 - "$1" <<'PY'
import re, sys
names, cur, total = {}, None, 0
alloc = re.compile(r"__rust_(alloc|alloc_zeroed|realloc)$")
for line in open(sys.argv[1], errors="replace"):
    if line.startswith(("cfn=", "cfnc=")) or line.startswith("fn="):
        m = re.match(r"c?fnc?=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2)
            if line.startswith("c"):
                cur = names.get(m.group(1), "")
    elif line.startswith("calls=") and cur is not None:
        if alloc.search(cur):
            total += int(line[6:].split()[0])
        cur = None
print(total)
PY
}

# count LABEL PORT TOKENS MODE PATH [FORM_KEY] -- CMD...: per-request figures of CMD.
count() {
  local name=$1 p=$2 tokens=$3 mode=$4 path=$5 key=${6:-}
  shift 6
  [[ ${1:-} == -- ]] && shift
  local file=$OUT/$(echo "$name" | tr -c 'A-Za-z0-9' '_').callgrind
  valgrind --tool=callgrind --callgrind-out-file="$file" "$@" >"$file.log" 2>&1 &
  local pid=$!
  pids+=($pid)
  for _ in $(seq 600); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$p),timeout=1)" 2>/dev/null && break
    sleep 0.1
  done
  client "$p" "$WARM" 0 "$tokens" "$mode" "$path" "$key"
  callgrind_control -z "$pid" >/dev/null 2>&1
  client "$p" "$N" "$WARM" "$tokens" "$mode" "$path" "$key"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  local dump total a
  dump=$(ls -v "$file".* 2>/dev/null | grep -v '\.log$' | head -1)
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
  a=$(allocs "$dump")
  printf '| %s | %s | %s |\n' "$name" "$((total / N))" "$(awk -v a="$a" -v n="$N" 'BEGIN { printf "%.1f", a / n }')"
}

echo "## Instructions per request (callgrind), N=$N after $WARM, $(date -u +%FT%RZ), $(git rev-parse --short HEAD)$(git diff --quiet 2>/dev/null || echo '+dirty'), binaries in $B"
echo
echo "| target | instructions / request | Rust allocations / request |"
echo "|---|---:|---:|"
ONE=$OUT/keys/token.txt
if want passthrough; then
  P=$(port)
  count "plain Pingora passthrough" "$P" "$ONE" get /api/items/42 "" -- \
    "$B/examples/passthrough" "$P" "127.0.0.1:$UP" 1
fi
if want hit; then
  P=$(port)
  portier_config hit "" "$P"
  count "Portier, one token (cache hit)" "$P" "$ONE" get /api/items/42 "" -- \
    "$B/portier" run -c "$OUT/hit/config.toml"
fi
if want miss; then
  P=$(port)
  portier_config miss "token_cache_capacity = 0" "$P"
  count "Portier, distinct tokens, token cache off (RS256 each)" "$P" "$OUT/keys/tokens.txt" get \
    /api/items/42 "" -- "$B/portier" run -c "$OUT/miss/config.toml"
fi
if want s3get; then
  P=$(port)
  portier_config s3get "" "$P" s3
  # The object, put once through Portier before the counted server starts.
  "$B/portier" run -c "$OUT/s3get/config.toml" >"$OUT/s3get-put.log" 2>&1 &
  put_pid=$!
  pids+=($put_pid)
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$P),timeout=1)" 2>/dev/null && break
    sleep 0.1
  done
  client "$P" 1 0 "$ONE" put "/files/$SUB/books/small.bin"
  kill "$put_pid"
  wait "$put_pid" 2>/dev/null || true
  count "Portier S3 GET 1 KiB (policy, SigV4, in-memory s3s store)" "$P" "$ONE" get \
    "/files/$SUB/books/small.bin" "" -- "$B/portier" run -c "$OUT/s3get/config.toml"
fi
if want upload; then
  P=$(port)
  portier_config upload "" "$P" s3
  count "Portier file API upload, 1 KiB multipart form" "$P" "$ONE" upload /api/s3/upload \
    "$SUB/books/up.txt" -- "$B/portier" run -c "$OUT/upload/config.toml"
fi
