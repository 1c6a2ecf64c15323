#!/usr/bin/env bash
# The load bench: one command, run from anywhere in the repository.
#
#     benches/load.sh
#
# What it does (everything on 127.0.0.1, everything killed at exit):
#   1. installs what it needs from Debian's packages, only when missing: wrk, cmake (Pingora's
#      build), and the peers nginx (nginx-light) and haproxy (2.6 in bookworm, `jwt_verify`);
#      without nginx or haproxy their rows are skipped;
#   2. builds release binaries: `portier` and the examples passthrough (plain Pingora, no
#      filters), fast_upstream, fixed_rate (open-loop load generator), mint (keys, tokens) and
#      s3_store;
#   3. mints an RSA key (JWKS + PEM), one session token and $TOKENS distinct ones;
#   4. starts a fast upstream (nginx serving a fixed 200 JSON, else fast_upstream) that also
#      serves the JWKS at /jwks.json, then every selected target at once, each on its own
#      port, pinned to CPU $SRV_CPU with the upstream (idle ones cost nothing), while wrk runs
#      pinned to CPU $WRK_CPU: -t1 -c$CONNS for $DURATION s. Rounds are interleaved: round 1
#      of every target, then round 2, ... ($ROUNDS rounds), so machine drift hits every target
#      alike; the median round by req/s is reported, with each round's ratio to the plain
#      Pingora passthrough of the same round (and thread count). Targets: the upstream
#      directly; plain Pingora passthrough (the ceiling) with each thread count of $THREADS;
#      nginx reverse proxy; HAProxy reverse proxy; HAProxy `jwt_verify` RS256 + alg/iss/exp/nbf
#      rules; Portier auth + policy with one token (token cache hit; decision log to a file,
#      the default "all" mode) with each thread count of $THREADS; the same with the decision
#      log off; Portier with $TOKENS distinct tokens and the token cache disabled (RS256 on
#      every request); Portier with the identity assertion on the upstream (cached: one token,
#      one path); Portier on the S3 path (GET of a 1 KiB object, SigV4 signed; the store is
#      examples/s3_store, s3s-fs on disk, or in memory with S3_STORE=mem);
#   5. fixed-rate (open-loop) runs at $RATE req/s for $RATE_SECS s against the upstream, the
#      plain proxy and Portier, in turn, $RATE_ROUNDS rounds; latency is measured from each
#      request's due time; the medians over rounds are reported, and per round the paired
#      p50 and p99 differences Portier minus plain Pingora, with their spread;
#   6. prints the tables and writes them, with the machine description, to $OUT/summary.md.
#
# Knobs (environment): DURATION=8 ROUNDS=5 CONNS=16 TOKENS=10000 THREADS="1 2" RATE=2000
#   RATE_SECS=10 RATE_ROUNDS=5 WRK_CPU=0 SRV_CPU=1 THREAD_CPUS=$SRV_CPU (CPUs of targets with
#   more than one thread: the default keeps them on the server's core, as the peer table in
#   stack-notes does; THREAD_CPUS=0,1 spreads them) PORT_BASE=18100 OUT=target/load-bench
#   SKIP_BUILD=1 (reuse binaries) S3_STORE=fs|mem ONLY="passthrough portier_hit" (a subset of
#   the closed-loop targets: upstream passthrough nginx haproxy haproxy_jwt portier_hit
#   portier_nolog portier_miss portier_assert s3) NO_FIXED_RATE=1.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-16}
TOKENS=${TOKENS:-10000}
RATE=${RATE:-2000}
RATE_SECS=${RATE_SECS:-10}
RATE_ROUNDS=${RATE_ROUNDS:-5}
WRK_CPU=${WRK_CPU:-0}
SRV_CPU=${SRV_CPU:-1}
THREAD_CPUS=${THREAD_CPUS:-$SRV_CPU}
THREADS=${THREADS:-1 2}
S3_STORE=${S3_STORE:-fs}
PORT_BASE=${PORT_BASE:-18100}
OUT=${OUT:-$ROOT/target/load-bench}
ONLY=${ONLY:-}
ISSUER=https://clerk.bench.test
AZP=https://app.bench.test
REQ_PATH=/api/items/42

P_UP=$((PORT_BASE + 1))
P_NGINX=$((PORT_BASE + 3))
P_HAPROXY=$((PORT_BASE + 4))
P_HAJWT=$((PORT_BASE + 5))
# Passthroughs and Portier instances take ports from here on (next_port).
NEXT_PORT=$((PORT_BASE + 10))

BIN=$ROOT/target/release
mkdir -p "$OUT"
rm -f "$OUT"/*.wrk "$OUT"/*.rate "$OUT"/rows.tsv "$OUT"/rate_rows.tsv
: >"$OUT/rows.tsv"
: >"$OUT/rate_rows.tsv"

log() { printf '[load] %s\n' "$*" >&2; }

# === processes: every one started is recorded and killed at exit ===
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD pinned to the server CPU (or $CPUS when set), output in
# $OUT/NAME.log; sets LAST_PID.
start() {
  local name=$1
  shift
  taskset -c "${CPUS:-$SRV_CPU}" "$@" >"$OUT/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# next_port: a fresh port for the next server (checked free).
next_port() {
  NEXT_PORT=$((NEXT_PORT + 1))
  port_free "$NEXT_PORT" || { log "port $NEXT_PORT is in use: set PORT_BASE"; exit 1; }
  PORT=$NEXT_PORT
}

stop() {
  local pid=$1
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# wait_http URL [HEADER]: up to 15 s for a 200.
wait_http() {
  local url=$1 header=${2:-X-Bench: 1} code
  for _ in $(seq 150); do
    code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' -H "$header" "$url" || true)
    [[ $code == 200 ]] && return 0
    sleep 0.1
  done
  log "no 200 from $url (last: $code)"
  return 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# === 1. packages ===
need_pkg() { # need_pkg COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  log "installing $2 (apt-get)"
  apt-get install -y -q "$2" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$2" >/dev/null 2>&1; } ||
    log "could not install $2"
}
need_pkg wrk wrk
need_pkg cmake cmake
need_pkg curl curl
need_pkg nginx nginx-light
need_pkg haproxy haproxy
command -v wrk >/dev/null || { log "wrk is required"; exit 1; }
NGINX=$(command -v nginx || true)
HAPROXY=$(command -v haproxy || true)

for p in $P_UP $P_NGINX $P_HAPROXY $P_HAJWT; do
  port_free "$p" || { log "port $p is in use: set PORT_BASE"; exit 1; }
done

# === 2. build ===
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  log "building release binaries (waits for the shared target dir lock)"
  cargo build --release --bin portier --example passthrough --example fast_upstream \
    --example fixed_rate --example mint --example s3_store
fi
for b in portier examples/passthrough examples/fast_upstream examples/fixed_rate examples/mint examples/s3_store; do
  [[ -x $BIN/$b ]] || { log "missing $BIN/$b"; exit 1; }
done

# === 3. keys and tokens ===
log "minting a key, one token and $TOKENS distinct tokens"
"$BIN/examples/mint" "$OUT/keys" "$TOKENS" "$ISSUER" "$AZP" 7200
TOKEN=$(cat "$OUT/keys/token.txt")
AUTH="Authorization: Bearer $TOKEN"

# === wrk scripts ===
cat >"$OUT/report.lua" <<'LUA'
-- Prints one machine-readable line; latency percentiles are in microseconds.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKRESULT requests=%d duration_us=%d rps=%.1f p50=%d p99=%d p999=%d max=%d errors=%d non2xx=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect + e.read + e.write + e.timeout, e.status))
end
LUA
cat >"$OUT/many.lua" <<'LUA'
-- Cycles through the minted tokens: every request carries a different token than the last
-- 9,999, so with Portier's token cache off each one costs a full RS256 verification.
-- Requests are built in init(), after wrk has set the Host header.
local reqs, n, i = {}, 0, 0
init = function(args)
  for line in io.lines(os.getenv("TOKENS_FILE")) do
    n = n + 1
    reqs[n] = wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. line })
  end
end
request = function()
  i = i % n + 1
  return reqs[i]
end
LUA
cat "$OUT/report.lua" >>"$OUT/many.lua"

busy_note() {
  local n
  n=$(ps -eo comm= | grep -cE '^(rustc|cargo|cc1|ld|cc|c\+\+)$' || true)
  [[ $n -gt 0 ]] && echo "busy:$n-build-procs" || echo "quiet"
}

# === closed-loop targets: registered once running, then measured in interleaved rounds ===
T_NAMES=()  # file-safe id
T_LABELS=()
T_URLS=()
T_MODES=()  # "" or --many
T_BASE=()   # the id of the plain Pingora row this one is compared with, round by round
T_CACHE=()  # admin metrics URL whose token-cache counters are recorded, or ""

# add_target LABEL URL MODE BASE_ID [METRICS_URL]
add_target() {
  local id
  id=$(echo "$1" | tr -c 'A-Za-z0-9' '_')
  T_NAMES+=("$id")
  T_LABELS+=("$1")
  T_URLS+=("$2")
  T_MODES+=("$3")
  T_BASE+=("$4")
  T_CACHE+=("${5:-}")
  rm -f "$OUT/$id.rounds"
}

# round_of I R: one wrk round of target I (a short unmeasured warm-up before round 1).
round_of() {
  local i=$1 r=$2 out
  local -a hdr=(-H "$AUTH")
  local script=$OUT/report.lua
  if [[ ${T_MODES[$i]} == --many ]]; then hdr=(); script=$OUT/many.lua; fi
  if [[ $r == 1 ]]; then
    TOKENS_FILE=$OUT/keys/tokens.txt taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d1s "${hdr[@]}" \
      -s "$script" "${T_URLS[$i]}" >/dev/null 2>&1 || true
  fi
  out=$OUT/${T_NAMES[$i]}.r$r.wrk
  TOKENS_FILE=$OUT/keys/tokens.txt taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" \
    "${hdr[@]}" -s "$script" "${T_URLS[$i]}" >"$out" 2>&1 || true
  local line
  line=$(grep WRKRESULT "$out" || echo "WRKRESULT failed")
  echo "round=$r $line busy=$(busy_note)" >>"$OUT/${T_NAMES[$i]}.rounds"
  log "round $r ${T_LABELS[$i]}: $(grep -o 'rps=[0-9.]*' "$out" || tail -2 "$out")"
}

# fixed LABEL URL: one open-loop run (round $r); appends its RESULT line to rate_rows.tsv.
fixed() {
  local label=$1 url=$2 out
  out=$OUT/$(echo "$label" | tr -c 'A-Za-z0-9' '_').r${r:-1}.rate
  taskset -c "$WRK_CPU" "$BIN/examples/fixed_rate" "$url" "$RATE" "$RATE_SECS" --warmup 1 \
    --connections 64 --token-file "$OUT/keys/token.txt" --label "$label" >"$out" 2>&1 || true
  local line
  line=$(grep '^RESULT' "$out" || echo "RESULT failed")
  printf '%s\t%s\t%s\t%s\n' "$label" "$line" "$(busy_note)" "${r:-1}" >>"$OUT/rate_rows.tsv"
  log "$label: $(grep 'from due' "$out" || tail -2 "$out")"
}

want() { [[ -z $ONLY ]] || [[ " $ONLY " == *" $1 "* ]]; }

# === 4. the upstream (runs throughout) ===
if [[ -n $NGINX ]]; then
  mkdir -p "$OUT/nginx-up"
  cat >"$OUT/nginx-up/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $OUT/nginx-up/nginx.pid;
error_log $OUT/nginx-up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $OUT/nginx-up/body;
  proxy_temp_path $OUT/nginx-up/proxy;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$P_UP;
    location = /jwks.json { default_type application/json; alias $OUT/keys/jwks.json; }
    location / { default_type application/json; return 200 '{"ok":true,"upstream":"nginx"}'; }
  }
}
EOF
  start upstream "$NGINX" -e "$OUT/nginx-up/error.log" -p "$OUT/nginx-up" -c "$OUT/nginx-up/nginx.conf"
  UPSTREAM_KIND="nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///') (fixed 200)"
else
  start upstream "$BIN/examples/fast_upstream" "$P_UP" "$OUT/keys/jwks.json"
  UPSTREAM_KIND="fast_upstream (hyper, 1 thread)"
fi
wait_http "http://127.0.0.1:$P_UP/"

# === Portier configuration ===
# portier_config NAME EXTRA_CLERK DECISION_LOG_MODE THREADS: writes $OUT/NAME/config.toml with
# fresh listen and admin ports (P_LISTEN, P_ADMIN_OF).
portier_config() {
  local dir=$OUT/$1
  mkdir -p "$dir/policies"
  next_port
  P_LISTEN=$PORT
  next_port
  P_ADMIN_OF=$PORT
  cat >"$dir/config.toml" <<EOF
[server]
listen = ["127.0.0.1:$P_LISTEN"]
threads = ${4:-1}
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1

[clerk]
issuer = "$ISSUER"
authorized_parties = ["$AZP"]
missing_azp = "reject"
$2

[clerk.jwks]
url = "http://127.0.0.1:$P_UP/jwks.json"

[upstreams.app]
peers = ["127.0.0.1:$P_UP"]
credentials = "strip"

[admin]
listen = "127.0.0.1:$P_ADMIN_OF"

[decision_log]
mode = "$3"
path = "$dir/decisions.jsonl"
EOF
  cat >"$dir/policies/bench.toml" <<'EOF'
[[route]]
name = "items"
path = "/api/items/{id}"
methods = ["GET"]
upstream = "app"
plan = ["pro"]

[[route]]
name = "jobs"
path = "/api/jobs/{user_id}/{rest..}"
methods = ["GET", "POST"]
upstream = "app"
owner = "user_id"

[[route]]
name = "public"
path = "/public/{rest..}"
methods = ["GET"]
upstream = "app"
access = "public"
EOF
  rm -f "$dir/decisions.jsonl"
}

# run_portier NAME LABEL MODE BASE_ID [THREADS]: starts a configured Portier and registers it.
run_portier() {
  local name=$1 label=$2 mode=$3 base=$4 threads=${5:-1}
  local cpus=$SRV_CPU
  [[ $threads -gt 1 ]] && cpus=$THREAD_CPUS
  CPUS=$cpus start "$name" "$BIN/portier" run -c "$OUT/$name/config.toml"
  if wait_http "http://127.0.0.1:$P_ADMIN_OF/readyz" &&
    wait_http "http://127.0.0.1:$P_LISTEN$REQ_PATH" "$AUTH"; then
    add_target "$label" "http://127.0.0.1:$P_LISTEN$REQ_PATH" "$mode" "$base" \
      "http://127.0.0.1:$P_ADMIN_OF/metrics"
  else
    log "$label did not start: $(tail -5 "$OUT/$name.log")"
  fi
}

# === S3 target ===
# The store (examples/s3_store: s3s-fs on disk, or in memory with S3_STORE=mem; both check
# every signature) and a Portier with the S3 upstream and an owner route; a 1 KiB object is
# put through Portier first, then GET of it is the target.
s3_target() {
  local dir=$OUT/portier-s3 ak=BENCHACCESSKEY0000001 sk=benchsecretkey000000000000000000000000000
  local sub root=$OUT/s3root kind="s3s-fs store"
  sub=$(python3 -c 'import base64,json,sys; p=sys.argv[1].split(".")[1]; print(json.loads(base64.urlsafe_b64decode(p+"="*(-len(p)%4)))["sub"])' "$TOKEN")
  if [[ $S3_STORE == mem ]]; then
    root=mem
    kind="in-memory s3s store"
  fi
  rm -rf "$OUT/s3root" "$OUT/s3.addr"
  start s3store "$BIN/examples/s3_store" "$root" "$ak" "$sk" "$OUT/s3.addr"
  for _ in $(seq 50); do [[ -s $OUT/s3.addr ]] && break; sleep 0.1; done
  portier_config portier-s3 "" all 1
  cat >>"$dir/config.toml" <<EOF2

[s3]
endpoint = "http://$(cat "$OUT/s3.addr")"
region = "us-east-1"
bucket = "bench"
addressing = "path"
access_key_id_env = "BENCH_S3_AK"
secret_access_key_env = "BENCH_S3_SK"
session_token_env = "BENCH_S3_NO_TOKEN"
EOF2
  cat >>"$dir/policies/bench.toml" <<'EOF2'

[[route]]
name = "files"
path = "/files/{key..}"
methods = ["GET", "PUT"]
upstream = "s3"
s3 = "object"
owner = "key"
EOF2
  export BENCH_S3_AK=$ak BENCH_S3_SK=$sk
  start portier-s3 "$BIN/portier" run -c "$dir/config.toml"
  local url="http://127.0.0.1:$P_LISTEN/files/$sub/docs/small.json"
  if wait_http "http://127.0.0.1:$P_ADMIN_OF/readyz"; then
    head -c 1024 /dev/urandom | base64 -w0 | head -c 1024 >"$OUT/small.json"
    code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary @"$OUT/small.json" -H "$AUTH" "$url")
    log "S3 target: PUT of a 1 KiB object through Portier answered $code"
    [[ $code == 200 ]] &&
      add_target "Portier S3 GET 1 KiB object (policy + SigV4, $kind)" "$url" "" "$BASE1"
  else
    log "S3 target did not start: $(tail -5 "$OUT/portier-s3.log")"
  fi
}

# === 5. closed-loop targets: all started, then measured in interleaved rounds ===
log "closed loop: wrk -t1 -c$CONNS -d${DURATION}s x $ROUNDS interleaved rounds, wrk on CPU $WRK_CPU, servers on CPU $SRV_CPU (multi-thread targets: $THREAD_CPUS), threads: $THREADS"
UPTIME_BEFORE=$(uptime)
pass_id() { echo "plain Pingora passthrough, $1 thread(s)" | tr -c 'A-Za-z0-9' '_'; }
# Rows without a thread count of their own are compared with the 1-thread passthrough (or
# the first thread count asked for).
BASE1=$(pass_id "${THREADS%% *}")
for n in $THREADS; do
  if [[ $n == 1 ]]; then BASE1=$(pass_id 1); fi
done

want upstream && add_target "upstream direct ($UPSTREAM_KIND)" "http://127.0.0.1:$P_UP$REQ_PATH" "" "$BASE1"

if want passthrough; then
  for n in $THREADS; do
    next_port
    cpus=$SRV_CPU
    [[ $n -gt 1 ]] && cpus=$THREAD_CPUS
    CPUS=$cpus start "passthrough-$n" "$BIN/examples/passthrough" "$PORT" "127.0.0.1:$P_UP" "$n"
    wait_http "http://127.0.0.1:$PORT$REQ_PATH" &&
      add_target "plain Pingora passthrough, $n thread(s)" "http://127.0.0.1:$PORT$REQ_PATH" "" "$(pass_id "$n")"
  done
fi

if want nginx && [[ -n $NGINX ]]; then
  mkdir -p "$OUT/nginx-proxy"
  cat >"$OUT/nginx-proxy/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $OUT/nginx-proxy/nginx.pid;
error_log $OUT/nginx-proxy/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $OUT/nginx-proxy/body;
  proxy_temp_path $OUT/nginx-proxy/proxy;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$P_UP; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$P_NGINX;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  start nginx-proxy "$NGINX" -e "$OUT/nginx-proxy/error.log" -p "$OUT/nginx-proxy" -c "$OUT/nginx-proxy/nginx.conf"
  wait_http "http://127.0.0.1:$P_NGINX$REQ_PATH" &&
    add_target "nginx reverse proxy, keepalive pool" "http://127.0.0.1:$P_NGINX$REQ_PATH" "" "$BASE1"
fi

haproxy_config() { # haproxy_config PORT WITH_JWT
  cat <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$1
  default_backend app
EOF
  if [[ $2 == 1 ]]; then
    cat <<EOF
  http-request set-var(txn.bearer) http_auth_bearer
  http-request deny deny_status 401 unless { var(txn.bearer) -m found }
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request deny deny_status 401 unless { var(txn.alg) -m str RS256 }
  http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('\$.iss')
  http-request deny deny_status 401 unless { var(txn.iss) -m str $ISSUER }
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request set-var(txn.nbf) var(txn.bearer),jwt_payload_query('\$.nbf','int')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
  http-request deny deny_status 401 if { var(txn.now),sub(txn.nbf) -m int lt 0 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$OUT/keys/public.pem") -m int 1 }
EOF
  fi
  cat <<EOF
backend app
  http-reuse always
  server up 127.0.0.1:$P_UP maxconn 1000
EOF
}

if [[ -n $HAPROXY ]]; then
  HAPROXY_V=$("$HAPROXY" -v 2>/dev/null | head -1 | awk '{print $3}')
  if want haproxy; then
    haproxy_config "$P_HAPROXY" 0 >"$OUT/haproxy.cfg"
    start haproxy "$HAPROXY" -db -f "$OUT/haproxy.cfg"
    wait_http "http://127.0.0.1:$P_HAPROXY$REQ_PATH" &&
      add_target "HAProxy $HAPROXY_V reverse proxy, 1 thread" "http://127.0.0.1:$P_HAPROXY$REQ_PATH" "" "$BASE1"
  fi
  if want haproxy_jwt; then
    haproxy_config "$P_HAJWT" 1 >"$OUT/haproxy-jwt.cfg"
    start haproxy-jwt "$HAPROXY" -db -f "$OUT/haproxy-jwt.cfg"
    if wait_http "http://127.0.0.1:$P_HAJWT$REQ_PATH" "$AUTH"; then
      code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${TOKEN%?????????????????????}AAAAAAAAAAAAAAAAAAAAA" "http://127.0.0.1:$P_HAJWT$REQ_PATH")
      log "HAProxy jwt_verify refuses a tampered token with $code"
      add_target "HAProxy $HAPROXY_V jwt_verify RS256 + alg/iss/exp/nbf" "http://127.0.0.1:$P_HAJWT$REQ_PATH" "" "$BASE1"
    fi
  fi
fi

if want portier_hit; then
  for n in $THREADS; do
    portier_config "portier-hit-$n" "" all "$n"
    run_portier "portier-hit-$n" "Portier auth+policy, 1 token (cache hit), decision log all, $n thread(s)" "" "$(pass_id "$n")" "$n"
  done
fi
if want portier_nolog; then
  portier_config portier-nolog "" off 1
  run_portier portier-nolog "Portier auth+policy, 1 token (cache hit), decision log off" "" "$BASE1"
fi
if want portier_miss; then
  portier_config portier-miss "token_cache_capacity = 0" all 1
  run_portier portier-miss "Portier, $TOKENS tokens, token cache off (RS256 each)" --many "$BASE1"
fi
if want portier_assert; then
  # The identity assertion on the upstream: one token and one path, so after the first
  # request every one reuses its cached assertion (criterion has the cost of a signature).
  portier_config portier-assert "" all 1
  "$BIN/portier" assertion-key >"$OUT/portier-assert/assertion.pem"
  cat >>"$OUT/portier-assert/config.toml" <<EOF2

[assertion]
upstreams = ["app"]
[[assertion.keys]]
kid = "bench"
pem_file = "assertion.pem"
EOF2
  run_portier portier-assert "Portier auth+policy + identity assertion (cached), decision log all" "" "$BASE1"
fi
if want s3; then s3_target; fi

for r in $(seq "$ROUNDS"); do
  for i in "${!T_NAMES[@]}"; do
    round_of "$i" "$r"
  done
done

# Per target: the median round by req/s, every round's req/s, whether a build ran, and the
# token-cache counters of each Portier.
for i in "${!T_NAMES[@]}"; do
  f=$OUT/${T_NAMES[$i]}.rounds
  line=$(awk '{for(i=1;i<=NF;i++){split($i,kv,"="); if(kv[1]=="rps") print kv[2], $0}}' "$f" |
    sort -n | awk -v n="$ROUNDS" 'NR==int((n+1)/2)' | cut -d' ' -f2-)
  rps_all=$(awk '{for(i=1;i<=NF;i++){split($i,kv,"="); if(kv[1]=="rps") printf "%.0f ", kv[2]}}' "$f")
  busy=$(grep -o 'busy=busy[^ ]*' "$f" | head -1 | sed 's/busy=//' || true)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "${T_LABELS[$i]}" "$line" "$rps_all" "${busy:-quiet}" \
    "${T_NAMES[$i]}" "${T_BASE[$i]}" >>"$OUT/rows.tsv"
  if [[ -n ${T_CACHE[$i]} ]]; then
    curl -s "${T_CACHE[$i]}" | grep -E '^portier_(token_cache_(hits|misses)_total|assertions_total)' \
      >"$OUT/${T_NAMES[$i]}.cache" || true
  fi
done

# === 6. fixed rate ===
# The three targets run side by side (idle ones cost nothing) and are measured in turn,
# $RATE_ROUNDS rounds, so machine drift hits all of them alike; the table shows medians and
# the paired per-round differences.
if [[ ${NO_FIXED_RATE:-0} != 1 ]]; then
  log "fixed rate: $RATE req/s for $RATE_SECS s (+1 s warm-up) x $RATE_ROUNDS rounds, latency from due time"
  next_port
  P_PASS_RATE=$PORT
  start passthrough-rate "$BIN/examples/passthrough" "$P_PASS_RATE" "127.0.0.1:$P_UP" 1
  portier_config portier-rate "" all 1
  start portier-rate "$BIN/portier" run -c "$OUT/portier-rate/config.toml"
  if wait_http "http://127.0.0.1:$P_PASS_RATE$REQ_PATH" && wait_http "http://127.0.0.1:$P_LISTEN$REQ_PATH" "$AUTH"; then
    for r in $(seq "$RATE_ROUNDS"); do
      fixed "upstream direct" "http://127.0.0.1:$P_UP$REQ_PATH"
      fixed "plain Pingora passthrough" "http://127.0.0.1:$P_PASS_RATE$REQ_PATH"
      fixed "Portier auth+policy (cache hit)" "http://127.0.0.1:$P_LISTEN$REQ_PATH"
    done
  fi
fi
UPTIME_AFTER=$(uptime)

# === 7. tables ===
{
  echo "## Load bench $(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo '+dirty')"
  echo
  echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') x $(nproc); kernel $(uname -r)"
  echo "- wrk -t1 -c$CONNS -d${DURATION}s x $ROUNDS interleaved rounds (median round shown), wrk on CPU $WRK_CPU, servers + upstream on CPU $SRV_CPU (targets with more threads: CPU $THREAD_CPUS)"
  echo "- upstream: $UPSTREAM_KIND; request: GET $REQ_PATH with a $(printf %s "$TOKEN" | wc -c)-byte Bearer token"
  echo "- load before: ${UPTIME_BEFORE##*load average: }; after: ${UPTIME_AFTER##*load average: }"
  echo "- vs plain Pingora: median round / median round of the plain passthrough with the same thread count; per round: each round's ratio to that passthrough's same round (min-max, median)"
  echo
  echo "| target | req/s | p50 us | p99 us | p99.9 us | vs plain Pingora | per-round ratio median (min-max) | errors / non-2xx | rounds req/s | machine |"
  echo "|---|---:|---:|---:|---:|---:|---|---:|---|---|"
  awk -F'\t' '
    function get(s, k,   n, a, i, kv) { n = split(s, a, " "); for (i = 1; i <= n; i++) { split(a[i], kv, "="); if (kv[1] == k) return kv[2] } return "" }
    function sort(v, n,   i, j, t) { for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t } }
    { label[NR] = $1; line[NR] = $2; rounds[NR] = $3; busy[NR] = $4; id[NR] = $5; base[NR] = $6
      med[$5] = get($2, "rps"); per[$5] = $3 }
    END { for (i = 1; i <= NR; i++) {
      rps = get(line[i], "rps"); b = med[base[i]]
      ratio = (b > 0 && rps != "") ? sprintf("%.2f", rps / b) : "-"
      pr = "-"
      if (base[i] in per && base[i] != id[i]) {
        n = split(rounds[i], mine, " "); split(per[base[i]], theirs, " "); k = 0
        for (j = 1; j <= n; j++) if (theirs[j] > 0) rr[++k] = mine[j] / theirs[j]
        if (k > 0) { sort(rr, k); pr = sprintf("%.2f (%.2f-%.2f)", rr[int((k + 1) / 2)], rr[1], rr[k]) }
        delete rr
      }
      printf "| %s | %s | %s | %s | %s | %s | %s | %s / %s | %s | %s |\n", label[i], (rps == "" ? "failed" : sprintf("%.0f", rps)),
        get(line[i], "p50"), get(line[i], "p99"), get(line[i], "p999"), ratio, pr,
        get(line[i], "errors"), get(line[i], "non2xx"), rounds[i], busy[i] } }' "$OUT/rows.tsv"
  # Scaling from 1 to N threads, per kind, from the median rounds.
  awk -F'\t' '
    function get(s, k,   n, a, i, kv) { n = split(s, a, " "); for (i = 1; i <= n; i++) { split(a[i], kv, "="); if (kv[1] == k) return kv[2] } return "" }
    { if (match($1, /, [0-9]+ thread\(s\)$/)) { kind = substr($1, 1, RSTART - 1); t = substr($1, RSTART + 2) + 0
        r[kind, t] = get($2, "rps"); if (!(kind in seen)) { seen[kind] = 1; order[++m] = kind } ts[t] = 1 } }
    END { for (o = 1; o <= m; o++) { k = order[o]; if (!((k, 1) in r) || r[k, 1] <= 0) continue
        s = ""; for (t in ts) if (t != 1 && (k, t) in r) s = s sprintf(" 1->%d threads: %.2fx", t, r[k, t] / r[k, 1])
        if (s != "") printf "- scaling, %s:%s\n", k, s } }' "$OUT/rows.tsv"
  for f in "$OUT"/*.cache; do
    [[ -s $f ]] && echo "- token cache after $(basename "$f" .cache): $(tr '\n' ' ' <"$f")"
  done
  if [[ -s $OUT/rate_rows.tsv ]]; then
    echo
    echo "Fixed rate (open loop): $RATE req/s for $RATE_SECS s, 64 connections, latency from each request's due time; median of $RATE_ROUNDS interleaved rounds"
    echo
    echo "| target | p50 us | p90 us | p99 us | p99.9 us | max us | p99 added vs plain Pingora | p99 per round | measured / errors | machine |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|---:|---|"
    awk -F'\t' '
      function get(s, k,   n, a, i, kv) { n = split(s, a, " "); for (i = 1; i <= n; i++) { split(a[i], kv, "="); if (kv[1] == k) return kv[2] } return "" }
      function median(lbl, k,   n, i, j, v, t) {
        n = 0; for (i = 1; i <= NR; i++) if (lab[i] == lbl) { v[++n] = get(line[i], k) + 0 }
        for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
        return n ? v[int((n + 1) / 2)] : "" }
      { lab[NR] = $1; line[NR] = $2; if (!($1 in seen)) { seen[$1] = 1; order[++m] = $1 }
        per[$1] = per[$1] sprintf("%.0f ", get($2, "p99_us")); meas[$1] += get($2, "measured"); err[$1] += get($2, "errors") + get($2, "non2xx")
        if ($3 != "quiet") busy[$1] = $3 }
      END { base = median("plain Pingora passthrough", "p99_us")
        for (o = 1; o <= m; o++) { l = order[o]; p99 = median(l, "p99_us")
          added = (base != "" && l !~ /^(plain|upstream)/) ? sprintf("%+.1f", p99 - base) : "-"
          printf "| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %s | %s| %d / %d | %s |\n", l, median(l, "p50_us"), median(l, "p90_us"),
            p99, median(l, "p999_us"), median(l, "max_us"), added, per[l], meas[l], err[l], (l in busy) ? busy[l] : "quiet" } }' "$OUT/rate_rows.tsv"
    echo
    echo "Paired per round, Portier minus plain Pingora (same round):"
    echo
    echo "| round | p50 delta us | p90 delta us | p99 delta us |"
    echo "|---:|---:|---:|---:|"
    awk -F'\t' '
      function get(s, k,   n, a, i, kv) { n = split(s, a, " "); for (i = 1; i <= n; i++) { split(a[i], kv, "="); if (kv[1] == k) return kv[2] } return "" }
      function sort(v, n,   i, j, t) { for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t } }
      $1 == "plain Pingora passthrough" { p50[$4] = get($2, "p50_us"); p90[$4] = get($2, "p90_us"); p99[$4] = get($2, "p99_us") }
      $1 ~ /^Portier/ { q50[$4] = get($2, "p50_us"); q90[$4] = get($2, "p90_us"); q99[$4] = get($2, "p99_us"); if (!($4 in seen)) { seen[$4] = 1; rs[++n] = $4 } }
      END { for (i = 1; i <= n; i++) { r = rs[i]; if (!(r in p50)) continue
          d50[++k] = q50[r] - p50[r]; d90[k] = q90[r] - p90[r]; d99[k] = q99[r] - p99[r]
          printf "| %d | %+.1f | %+.1f | %+.1f |\n", r, d50[k], d90[k], d99[k] }
        if (k > 0) { sort(d50, k); sort(d90, k); sort(d99, k)
          printf "| median (min..max) | %+.1f (%+.1f..%+.1f) | %+.1f (%+.1f..%+.1f) | %+.1f (%+.1f..%+.1f) |\n",
            d50[int((k + 1) / 2)], d50[1], d50[k], d90[int((k + 1) / 2)], d90[1], d90[k], d99[int((k + 1) / 2)], d99[1], d99[k] } }' "$OUT/rate_rows.tsv"
  fi
} | tee "$OUT/summary.md"
log "raw outputs and summary.md in $OUT"
