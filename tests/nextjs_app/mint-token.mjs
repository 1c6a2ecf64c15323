#!/usr/bin/env node
// Mints Clerk-style tokens with Node's built-in crypto only (no npm packages needed), for the
// offline tests of tests/nextjs_app. Usable as a CLI or imported as an ES module.
//
//   node mint-token.mjs keygen [--dir DIR]            -> DIR/private.pem, DIR/public.pem (2048-bit RSA)
//   node mint-token.mjs session --key DIR/private.pem [claims options]   -> prints a session JWT
//   node mint-token.mjs handshake --key DIR/private.pem --session JWT [--client-uat N] [--suffix S]
//                                                      -> prints a __clerk_handshake JWT
//   node mint-token.mjs pk [--host clerk.portier.test] [--test]   -> prints pk_live_/pk_test_ key
//   node mint-token.mjs suffix --pk PK                -> prints the __session_<suffix> suffix
//   node mint-token.mjs env [--dir DIR] [--host H]     -> prints shell `export` lines for the app
//   node mint-token.mjs action-id [--name echoUser]    -> Next-Action id of a server action, read
//                                                        from .next/server/server-reference-manifest.json
//
// Session claims options (defaults in brackets; times are seconds relative to now):
//   --sub [user_123] --sid [sess_1] --iss [https://clerk.portier.test] --azp [http://127.0.0.1]
//   --iat-offset [0]  (iat = now + offset)   --ttl [60] (exp = iat + ttl)   --nbf-skew [10]
//   --pla [none]  e.g. u:pro      --fea e.g. u:dashboard     --v [2]  (--v 0 omits v)
//   --kid [ins_portier_test]  --no-cat (omit the cat header)  --no-azp  --claims '{"extra":1}'
//
// Handshake token: what Clerk's Frontend API returns as `__clerk_handshake` (a cookie in
// production, a query parameter in development). @clerk/backend (tokens/handshake.ts,
// verifyHandshakeToken) checks only typ (JWT or absent), alg RS256, that `cat` is absent or the
// session category, and the RS256 signature with the instance key (jwtKey); there is no exp/iat
// check on the handshake JWT itself. Its payload is { handshake: [Set-Cookie directives] }; the
// middleware emits each directive as a Set-Cookie header, picks the `__session*` one and verifies
// it like any session token.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const SESSION_CATEGORY = 'cl_B7d4PD111AAA';
export const DEFAULT_HOST = 'clerk.portier.test';

const b64url = (buf) => Buffer.from(buf).toString('base64url');

export function generateKeyPair() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }),
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }),
  };
}

export function signJwt(header, payload, privatePem) {
  const h = b64url(JSON.stringify({ alg: 'RS256', typ: 'JWT', ...header }));
  const p = b64url(JSON.stringify(payload));
  const sig = crypto.sign('sha256', Buffer.from(`${h}.${p}`), privatePem);
  return `${h}.${p}.${b64url(sig)}`;
}

export function sessionClaims(o = {}) {
  const now = Math.floor(Date.now() / 1000);
  const iat = o.iat ?? now + Number(o.iatOffset ?? 0);
  const ttl = Number(o.ttl ?? 60);
  const claims = {
    azp: o.azp ?? 'http://127.0.0.1',
    exp: iat + ttl,
    iat,
    iss: o.iss ?? `https://${DEFAULT_HOST}`,
    nbf: iat - Number(o.nbfSkew ?? 10),
    sid: o.sid ?? 'sess_1',
    sub: o.sub ?? 'user_123',
  };
  if (o.azp === null) delete claims.azp;
  const v = o.v === undefined ? 2 : Number(o.v);
  if (v) claims.v = v;
  if (o.pla) claims.pla = o.pla;
  if (o.fea) claims.fea = o.fea;
  claims.jti = o.jti ?? crypto.randomBytes(10).toString('hex');
  return { ...claims, ...(o.claims || {}) };
}

export function mintSession(privatePem, o = {}) {
  const header = { kid: o.kid ?? 'ins_portier_test' };
  if (o.cat !== false) header.cat = o.cat ?? SESSION_CATEGORY;
  return signJwt(header, sessionClaims(o), privatePem);
}

// Cookie directives as Clerk's FAPI sends them in a handshake payload. `suffix` (optional) adds
// the suffixed copies (__session_<suffix>, __client_uat_<suffix>) that FAPI sets when
// suffixed_cookies=true.
export function handshakeDirectives({ session, clientUat, suffix, secure = false } = {}) {
  const uat = clientUat ?? Math.floor(Date.now() / 1000) - 5;
  const attrs = `Path=/; SameSite=Lax${secure ? '; Secure' : ''}`;
  const out = [
    `__session=${session}; ${attrs}`,
    `__client_uat=${uat}; ${attrs}; Max-Age=315360000`,
    `__clerk_handshake=; Path=/; Max-Age=0`,
  ];
  if (suffix) {
    out.push(`__session_${suffix}=${session}; ${attrs}`);
    out.push(`__client_uat_${suffix}=${uat}; ${attrs}; Max-Age=315360000`);
  }
  return out;
}

export function mintHandshake(privatePem, o = {}) {
  const header = { kid: o.kid ?? 'ins_portier_test' };
  if (o.cat !== false) header.cat = o.cat ?? SESSION_CATEGORY;
  const directives = o.directives ?? handshakeDirectives(o);
  return signJwt(header, { handshake: directives }, privatePem);
}

export function publishableKey(host = DEFAULT_HOST, { test = false } = {}) {
  return `${test ? 'pk_test_' : 'pk_live_'}${Buffer.from(`${host}$`).toString('base64')}`;
}

// shared/src/keys.ts getCookieSuffix: first 8 chars of URL-safe base64 of SHA-1(publishable key).
export function cookieSuffix(pk) {
  return crypto.createHash('sha1').update(pk).digest('base64url').slice(0, 8);
}

// Server-action ids change with every `next build`; read them from the build output.
export function actionId(exportedName = 'echoUser', appDir = path.dirname(fileURLToPath(import.meta.url))) {
  const manifest = JSON.parse(
    fs.readFileSync(path.join(appDir, '.next/server/server-reference-manifest.json'), 'utf8'),
  );
  for (const [id, v] of Object.entries(manifest.node || {})) {
    if (v.exportedName === exportedName && !String(v.filename).includes('node_modules')) return id;
  }
  throw new Error(`no server action named ${exportedName} in the build (run scripts/setup-nextjs)`);
}

// ---------------------------------------------------------------------------------------- CLI
function parseArgs(argv) {
  const args = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) {
      args._.push(a);
      continue;
    }
    const k = a.slice(2);
    if (k.startsWith('no-')) {
      args[k.slice(3)] = false;
    } else if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) {
      args[k] = argv[++i];
    } else {
      args[k] = true;
    }
  }
  return args;
}

const camel = (s) => s.replace(/-([a-z])/g, (_, c) => c.toUpperCase());

function readKey(a) {
  if (!a.key) throw new Error('--key PATH_TO_PRIVATE_PEM is required');
  return fs.readFileSync(a.key, 'utf8');
}

function claimOptions(a) {
  const o = {};
  for (const k of ['sub', 'sid', 'iss', 'azp', 'iat', 'iat-offset', 'ttl', 'nbf-skew', 'pla', 'fea', 'v', 'kid', 'jti']) {
    if (a[k] !== undefined && a[k] !== true) o[camel(k)] = k === 'iat' ? Number(a[k]) : a[k];
  }
  if (a.azp === false) o.azp = null;
  if (a.cat === false) o.cat = false;
  else if (typeof a.cat === 'string') o.cat = a.cat;
  if (a.claims) o.claims = JSON.parse(a.claims);
  return o;
}

function main() {
  const a = parseArgs(process.argv.slice(2));
  const cmd = a._[0];
  switch (cmd) {
    case 'keygen': {
      const dir = a.dir || '.';
      fs.mkdirSync(dir, { recursive: true });
      const { privatePem, publicPem } = generateKeyPair();
      fs.writeFileSync(path.join(dir, 'private.pem'), privatePem, { mode: 0o600 });
      fs.writeFileSync(path.join(dir, 'public.pem'), publicPem);
      console.log(path.join(dir, 'public.pem'));
      break;
    }
    case 'session':
      console.log(mintSession(readKey(a), claimOptions(a)));
      break;
    case 'handshake': {
      if (!a.session) throw new Error('--session JWT is required (the session token to hand over)');
      const o = claimOptions(a);
      console.log(
        mintHandshake(readKey(a), {
          ...o,
          session: a.session,
          clientUat: a['client-uat'] !== undefined ? Number(a['client-uat']) : undefined,
          suffix: typeof a.suffix === 'string' ? a.suffix : undefined,
          secure: a.secure === true,
        }),
      );
      break;
    }
    case 'pk':
      console.log(publishableKey(typeof a.host === 'string' ? a.host : DEFAULT_HOST, { test: a.test === true }));
      break;
    case 'suffix':
      console.log(cookieSuffix(a.pk || publishableKey(typeof a.host === 'string' ? a.host : DEFAULT_HOST)));
      break;
    case 'env': {
      const dir = a.dir || '.';
      const host = typeof a.host === 'string' ? a.host : DEFAULT_HOST;
      const pub = fs.readFileSync(path.join(dir, 'public.pem'), 'utf8');
      const pk = publishableKey(host);
      const q = (s) => `'${s.replace(/'/g, "'\\''")}'`;
      console.log(`export CLERK_PUBLISHABLE_KEY=${q(pk)}`);
      console.log(`export NEXT_PUBLIC_CLERK_PUBLISHABLE_KEY=${q(pk)}`);
      console.log(`export CLERK_SECRET_KEY=${q('sk_live_portier_test_dummy')}`);
      console.log(`export CLERK_JWT_KEY=${q(pub.trim())}`);
      console.log('export CLERK_TELEMETRY_DISABLED=1 NEXT_PUBLIC_CLERK_TELEMETRY_DISABLED=1 NEXT_TELEMETRY_DISABLED=1');
      console.log('export NEXT_PUBLIC_CLERK_KEYLESS_DISABLED=1 CLERK_DISABLE_AUTO_PROXY=1');
      break;
    }
    case 'action-id': {
      const name = typeof a.name === 'string' ? a.name : 'echoUser';
      const here = path.dirname(fileURLToPath(import.meta.url));
      console.log(actionId(name, typeof a.app === 'string' ? a.app : here));
      break;
    }
    default:
      console.error(
        'usage: mint-token.mjs keygen|session|handshake|pk|suffix|env|action-id [options] (see the comment at the top)',
      );
      process.exit(2);
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    main();
  } catch (e) {
    console.error(`mint-token: ${e.message}`);
    process.exit(1);
  }
}
