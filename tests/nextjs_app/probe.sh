#!/usr/bin/env bash
# Sends the a-h requests of README.md ("Observed behaviour") to a running app and prints, for
# each, the status, Location, x-clerk-auth-status / x-clerk-auth-reason and what the page showed.
#
#   tests/nextjs_app/probe.sh http://127.0.0.1:PORT KEYDIR
#
# Run it in the shell that has the app's environment (CLERK_PUBLISHABLE_KEY is used for the
# cookie suffix). KEYDIR holds private.pem (from `node mint-token.mjs keygen --dir KEYDIR`); the app must run
# with CLERK_JWT_KEY = KEYDIR/public.pem (see README.md). Every curl is bounded (timeout 20).
set -euo pipefail
BASE=${1:?usage: probe.sh BASE_URL KEYDIR}
KEYDIR=${2:?usage: probe.sh BASE_URL KEYDIR}
HERE=$(cd "$(dirname "$0")" && pwd)
MINT="node $HERE/mint-token.mjs"
KEY="$KEYDIR/private.pem"
NOW=$(date +%s)
DOC=(-H 'Sec-Fetch-Dest: document' -H 'Sec-Fetch-Mode: navigate' -H 'Accept: text/html')
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

VALID=$($MINT session --key "$KEY")
PRO=$($MINT session --key "$KEY" --pla u:pro)
EXPIRED=$($MINT session --key "$KEY" --iat-offset -120)
OLD=$($MINT session --key "$KEY" --iat-offset -5)
ACTION=$($MINT action-id --name echoUser 2>/dev/null || echo missing)
# cookie suffix of the app's publishable key (default: the one `mint-token.mjs env` prints)
SUF=$($MINT suffix --pk "${CLERK_PUBLISHABLE_KEY:-$($MINT pk)}")

# probe LABEL PATH [curl args...]
probe() {
  local label=$1 path=$2
  shift 2
  local t0 t1 code
  t0=$(date +%s%N)
  code=$(timeout 20 curl -s -o "$TMP/body" -D "$TMP/headers" -w '%{http_code}' "$@" "$BASE$path" || echo "TIMEOUT/ERR $?")
  t1=$(date +%s%N)
  local h=$TMP/headers
  local loc st rs ct sc
  loc=$(grep -i '^location:' "$h" | head -1 | cut -d' ' -f2- | tr -d '\r' || true)
  st=$(grep -i '^x-clerk-auth-status:' "$h" | head -1 | cut -d' ' -f2- | tr -d '\r' || true)
  rs=$(grep -i '^x-clerk-auth-reason:' "$h" | head -1 | cut -d' ' -f2- | tr -d '\r' || true)
  ct=$(grep -i '^content-type:' "$h" | head -1 | cut -d' ' -f2- | tr -d '\r' || true)
  sc=$(grep -i '^set-cookie:' "$h" | cut -d' ' -f2 | cut -d= -f1 | tr '\n' ',' || true)
  # what the page rendered: ids user / pro / action-result, in HTML or in an RSC payload
  local seen
  seen=$(grep -oE 'id="(user|pro|action-result|signed-in)">[^<]*|"id":"(user|pro|action-result)","children":"[^"]*"|"userId":"?[^",}]*|user_123|pro:(true|false)' "$TMP/body" 2>/dev/null | sort -u | tr '\n' ' ' || true)
  printf '%s\n  %s %s  %sms  ct=%s\n  status=%s reason=%s\n  location=%s\n  set-cookie=%s\n  seen=%s\n' \
    "$label" "$code" "$path" "$(( (t1 - t0) / 1000000 ))" "${ct%%;*}" "${st:--}" "${rs:--}" "${loc:--}" "${sc:--}" "${seen:--}"
}

probe "a. valid __session + __client_uat<=iat (document)" /dashboard "${DOC[@]}" \
  -H "Cookie: __session=$VALID; __client_uat=$((NOW - 5))"
probe "b. expired __session + __client_uat (document)" /dashboard "${DOC[@]}" \
  -H "Cookie: __session=$EXPIRED; __client_uat=$((NOW - 120))"
probe "c. iat before __client_uat (document)" /dashboard "${DOC[@]}" \
  -H "Cookie: __session=$OLD; __client_uat=$NOW"
probe "d. __client_uat>0, no __session (document)" /dashboard "${DOC[@]}" \
  -H "Cookie: __client_uat=$NOW"
probe "e. no cookies (document)" /dashboard "${DOC[@]}"
probe "e2. __client_uat=0, no __session (document)" /dashboard "${DOC[@]}" -H 'Cookie: __client_uat=0'
probe "f. Bearer valid, non-document (/api/whoami)" /api/whoami \
  -H 'Accept: application/json' -H "Authorization: Bearer $VALID"
probe "f2. Bearer valid, non-document (/dashboard, Accept */*)" /dashboard -H "Authorization: Bearer $VALID"
probe "f3. Bearer expired, document GET (header path handshakes too)" /dashboard "${DOC[@]}" \
  -H "Authorization: Bearer $EXPIRED"
probe "f4. Bearer valid + expired cookie (header wins)" /dashboard "${DOC[@]}" \
  -H "Authorization: Bearer $VALID" -H "Cookie: __session=$EXPIRED; __client_uat=$((NOW - 120))"
probe "g0. RSC: 1 without _rsc (Next answers, not Clerk)" /images/generate -H 'RSC: 1' \
  -H "Cookie: __session=$PRO; __client_uat=$((NOW - 5))"
# `_rsc` must equal Next's hash of the router headers (Next-Router-State-Tree, Next-Router-Prefetch,
# Next-Router-Segment-Prefetch, Next-Url); with none of them sent it is the empty value.
probe "g1. RSC: 1 + ?_rsc, pro cookie, /images/generate" "/images/generate?_rsc" -H 'RSC: 1' \
  -H 'Sec-Fetch-Dest: empty' -H 'Sec-Fetch-Mode: cors' -H "Cookie: __session=$PRO; __client_uat=$((NOW - 5))"
probe "g2. ?_rsc=abc12 (wrong hash), pro cookie" "/images/generate?_rsc=abc12" -H 'RSC: 1' \
  -H "Cookie: __session=$PRO; __client_uat=$((NOW - 5))"
probe "g2b. ?_rsc without the RSC header, pro cookie" "/images/generate?_rsc" \
  -H "Cookie: __session=$PRO; __client_uat=$((NOW - 5))"
probe "g3. RSC: 1 + ?_rsc, valid non-pro cookie" "/images/generate?_rsc" -H 'RSC: 1' \
  -H "Cookie: __session=$VALID; __client_uat=$((NOW - 5))"
probe "g4. RSC: 1 + ?_rsc, expired cookie (Sec-Fetch-Dest: empty)" "/images/generate?_rsc" -H 'RSC: 1' \
  -H 'Sec-Fetch-Dest: empty' -H "Cookie: __session=$EXPIRED; __client_uat=$((NOW - 120))"
probe "g4b. RSC: 1 + ?_rsc, Bearer pro token" "/images/generate?_rsc" -H 'RSC: 1' \
  -H "Authorization: Bearer $PRO"
probe "g5. document GET /images/generate, pro cookie" /images/generate "${DOC[@]}" \
  -H "Cookie: __session=$PRO; __client_uat=$((NOW - 5))"
probe "g6. server action POST (Next-Action), valid cookie" /dashboard -X POST \
  -H "Next-Action: $ACTION" -H 'Accept: text/x-component' -H 'Content-Type: text/plain;charset=UTF-8' \
  -H "Cookie: __session=$VALID; __client_uat=$((NOW - 5))" --data-raw '[null]'
probe "g7. server action POST (Next-Action), expired cookie" /dashboard -X POST \
  -H "Next-Action: $ACTION" -H 'Accept: text/x-component' -H 'Content-Type: text/plain;charset=UTF-8' \
  -H 'Sec-Fetch-Dest: empty' \
  -H "Cookie: __session=$EXPIRED; __client_uat=$((NOW - 120))" --data-raw '[null]'
# the fields React renders into <form action={useActionState(...)[1]}> (see the /dashboard HTML)
MPA=(--form-string '$ACTION_REF_1=' --form-string "\$ACTION_1:0={\"id\":\"$ACTION\",\"bound\":\"\$@1\"}"
  --form-string '$ACTION_1:1=[null]' --form-string '$ACTION_KEY=p/dashboard' --form-string 'note=echo')
probe "g8. no-JS form POST (multipart, progressive enhancement), valid cookie, document" /dashboard -X POST "${DOC[@]}" \
  -H "Cookie: __session=$VALID; __client_uat=$((NOW - 5))" "${MPA[@]}"
probe "g9. no-JS form POST, expired cookie, document (POST is never handshaken)" /dashboard -X POST "${DOC[@]}" \
  -H "Cookie: __session=$EXPIRED; __client_uat=$((NOW - 120))" "${MPA[@]}"

HS=$($MINT handshake --key "$KEY" --session "$VALID" --client-uat $((NOW - 5)))
probe "h1. ?__clerk_handshake=<valid JWT> (document)" "/dashboard?__clerk_handshake=$HS" "${DOC[@]}"
probe "h2. __clerk_handshake cookie (document)" /dashboard "${DOC[@]}" -H "Cookie: __clerk_handshake=$HS"
probe "h3. __clerk_handshake cookie + expired __session (document)" /dashboard "${DOC[@]}" \
  -H "Cookie: __clerk_handshake=$HS; __session=$EXPIRED; __client_uat=$((NOW - 120))"
BADHS=$($MINT handshake --key "$KEY" --session "$VALID")
BADHS="${BADHS%.*}.AAAA"
probe "h4. __clerk_handshake with a bad signature + expired cookie" /dashboard "${DOC[@]}" \
  -H "Cookie: __clerk_handshake=$BADHS; __session=$EXPIRED; __client_uat=$((NOW - 120))"
HSEXP=$($MINT handshake --key "$KEY" --session "$EXPIRED")
probe "h5. __clerk_handshake carrying an expired session token" /dashboard "${DOC[@]}" \
  -H "Cookie: __clerk_handshake=$HSEXP"
probe "h6. ?__clerk_handshake_nonce=x (asks the Backend API)" "/dashboard?__clerk_handshake_nonce=n1" "${DOC[@]}"
probe "h7. expired __session + __refresh cookie (asks the Backend API)" /dashboard "${DOC[@]}" \
  -H "Cookie: __session=$EXPIRED; __client_uat=$((NOW - 120)); __refresh_$SUF=r1"
probe "x1. iat before __client_uat behind a proxy (X-Forwarded-Host/Proto)" /dashboard "${DOC[@]}" \
  -H 'X-Forwarded-Host: app.portier.test' -H 'X-Forwarded-Proto: https' \
  -H "Cookie: __session=$OLD; __client_uat=$NOW"
probe "x2. expired cookie, no Sec-Fetch-Dest, Accept: text/html" /dashboard -H 'Accept: text/html' \
  -H "Cookie: __session=$EXPIRED; __client_uat=$((NOW - 120))"
probe "x3. expired cookie, Sec-Fetch-Dest: empty, Accept: text/html" /dashboard -H 'Accept: text/html' \
  -H 'Sec-Fetch-Dest: empty' -H "Cookie: __session=$EXPIRED; __client_uat=$((NOW - 120))"
probe "x4. expired cookie, 4th handshake in a row (__clerk_redirect_count=3)" /dashboard "${DOC[@]}" \
  -H "Cookie: __session=$EXPIRED; __client_uat=$((NOW - 120)); __clerk_redirect_count=3"
probe "x5. suffixed cookies __session_$SUF/__client_uat_$SUF, valid" /dashboard "${DOC[@]}" \
  -H "Cookie: __session_$SUF=$VALID; __client_uat_$SUF=$((NOW - 5))"
probe "x6. token signed by another key (document)" /dashboard "${DOC[@]}" \
  -H "Cookie: __session=$VALID; __client_uat=$((NOW - 5))" -H "Authorization: Bearer ${VALID%.*}.AAAA"
probe "x7. valid cookie, document, Referer: https://www.google.com/" /dashboard "${DOC[@]}" \
  -H 'Referer: https://www.google.com/' -H "Cookie: __session=$VALID; __client_uat=$((NOW - 5))"
probe "x8. valid cookie, document, Referer: https://app.portier.test/, no X-Forwarded-*" /dashboard "${DOC[@]}" \
  -H 'Referer: https://app.portier.test/' -H "Cookie: __session=$VALID; __client_uat=$((NOW - 5))"
probe "x9. x8 + X-Forwarded-Host: app.portier.test, X-Forwarded-Proto: https" /dashboard "${DOC[@]}" \
  -H 'Referer: https://app.portier.test/' -H 'X-Forwarded-Host: app.portier.test' -H 'X-Forwarded-Proto: https' \
  -H "Cookie: __session=$VALID; __client_uat=$((NOW - 5))"
probe "y1. valid __session, no __client_uat (document)" /dashboard "${DOC[@]}" -H "Cookie: __session=$VALID"
NBF=$($MINT session --key "$KEY" --iat-offset 30 --nbf-skew -20)
probe "y2. nbf 50 s in the future (document)" /dashboard "${DOC[@]}" -H "Cookie: __session=$NBF; __client_uat=$((NOW - 5))"
FUT=$($MINT session --key "$KEY" --iat-offset 30 --nbf-skew 40)
probe "y3. iat 30 s in the future (document)" /dashboard "${DOC[@]}" -H "Cookie: __session=$FUT; __client_uat=$((NOW - 5))"
SKEW=$($MINT session --key "$KEY" --iat-offset 3)
probe "y4. iat 3 s in the future (within the 5 s skew)" /dashboard "${DOC[@]}" -H "Cookie: __session=$SKEW; __client_uat=$((NOW - 5))"
OTHERISS=$($MINT session --key "$KEY" --iss https://clerk.other.test)
probe "y5. iss of another instance, same key (no issuer option set)" /dashboard "${DOC[@]}" \
  -H "Cookie: __session=$OTHERISS; __client_uat=$((NOW - 5))"
NOAZP=$($MINT session --key "$KEY" --no-azp)
probe "y6. no azp claim" /dashboard "${DOC[@]}" -H "Cookie: __session=$NOAZP; __client_uat=$((NOW - 5))"
M2M=$($MINT session --key "$KEY" --cat cl_B7d4PD333AAA)
probe "y7. cat = M2M category, in the cookie" /dashboard "${DOC[@]}" -H "Cookie: __session=$M2M; __client_uat=$((NOW - 5))"
TPL=$($MINT session --key "$KEY" --cat cl_B7d4PD222AAA)
probe "y8. cat = JWT-template category, as Bearer" /api/whoami -H "Authorization: Bearer $TPL"
V1=$($MINT session --key "$KEY" --v 0 --pla u:pro)
probe "y9. v1 token (no v claim) with pla u:pro: has({plan}) " "/images/generate" "${DOC[@]}" \
  -H "Cookie: __session=$V1; __client_uat=$((NOW - 5))"
probe "y10. opaque machine token as Bearer (mt_...)" /api/whoami -H "Authorization: Bearer mt_0123456789abcdef"
