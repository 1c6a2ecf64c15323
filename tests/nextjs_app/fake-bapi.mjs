#!/usr/bin/env node
// A stand-in for the two Clerk Backend API endpoints the middleware can call, so that the
// production handshake flow (format=nonce) can be exercised offline. Node built-ins only.
//
//   node fake-bapi.mjs --port 0 --key KEYDIR/private.pem [--kid ins_portier_test] [--ttl 600]
//   -> prints "fake-bapi listening on http://127.0.0.1:PORT", then serves until killed
//      (or for --ttl seconds at most).
//
// Start the app with CLERK_API_URL=http://127.0.0.1:PORT. Then:
//   GET  /v1/clients/handshake_payload?nonce=N  (what the middleware asks when a request carries
//        __clerk_handshake_nonce=N as query parameter or cookie)
//        -> {"directives": [...]} registered for N, or, when N looks like "user_<id>", the
//           directives of a fresh session for that user (pla "u:pro" when N ends in "_pro").
//   GET  /v1/jwks -> the JWKS of --key (lets the app verify without CLERK_JWT_KEY)
//   POST /__test/handshake_payload {"nonce": N, "directives": [...]} registers directives.
//   GET  /__test/log -> every request seen so far (method, url), to assert what was asked.
// Anything else answers 404 with a Clerk-style error body.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { handshakeDirectives, mintSession } from './mint-token.mjs';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1] && !all[i + 1].startsWith('--') ? all[i + 1] : true]);
    return acc;
  }, []),
);
const privatePem = fs.readFileSync(args.key || 'private.pem', 'utf8');
const kid = typeof args.kid === 'string' ? args.kid : 'ins_portier_test';
const jwk = { ...crypto.createPublicKey(privatePem).export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
const payloads = new Map();
const log = [];

const send = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  log.push({ method: req.method, url: req.url, at: Date.now() });
  if (req.method === 'GET' && url.pathname === '/v1/jwks') return send(res, 200, { keys: [jwk] });
  if (req.method === 'GET' && url.pathname === '/v1/clients/handshake_payload') {
    const nonce = url.searchParams.get('nonce') || '';
    let directives = payloads.get(nonce);
    if (!directives && /^user_[A-Za-z0-9]+(_pro)?$/.test(nonce)) {
      const sub = nonce.replace(/_pro$/, '');
      const session = mintSession(privatePem, { sub, kid, pla: nonce.endsWith('_pro') ? 'u:pro' : undefined });
      directives = handshakeDirectives({ session });
    }
    if (!directives) return send(res, 404, { errors: [{ code: 'resource_not_found', message: 'not found' }] });
    return send(res, 200, { directives });
  }
  if (req.method === 'POST' && url.pathname === '/__test/handshake_payload') {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      try {
        const { nonce, directives } = JSON.parse(body);
        payloads.set(String(nonce), directives);
        send(res, 200, { ok: true });
      } catch (e) {
        send(res, 400, { error: String(e) });
      }
    });
    return undefined;
  }
  if (req.method === 'GET' && url.pathname === '/__test/log') return send(res, 200, log);
  return send(res, 404, { errors: [{ code: 'resource_not_found', message: `fake-bapi: ${req.method} ${url.pathname}` }] });
});

server.listen(Number(args.port || 0), '127.0.0.1', () => {
  console.log(`fake-bapi listening on http://127.0.0.1:${server.address().port}`);
});
const ttl = Number(args.ttl || 600);
setTimeout(() => process.exit(0), ttl * 1000).unref();
