// Next.js 16 calls this file "proxy" (formerly "middleware"); it runs on the Node.js runtime.
//
// clerkMiddleware() here does NOT protect any route: Portier does the gating. It only runs
// Clerk's authenticateRequest(), so that the handshake / signed-in / signed-out decisions are
// observable (response headers x-clerk-auth-status / x-clerk-auth-reason, 307 to
// https://<frontend api>/v1/client/handshake) and auth() works in pages and actions.
//
// Everything is read from the environment at server start (`next start`), nothing at build
// time, so one build serves every test key. See README.md.
import { clerkMiddleware } from '@clerk/nextjs/server';

const env = process.env;
const list = (v) =>
  (v || '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);

const options = {
  // NEXT_PUBLIC_* would be inlined at build time, so the runtime name wins.
  publishableKey: env.CLERK_PUBLISHABLE_KEY || env.NEXT_PUBLIC_CLERK_PUBLISHABLE_KEY,
  // Networkless verification. @clerk/nextjs 7 does NOT read CLERK_JWT_KEY by itself: without
  // this option every token verification fetches <apiUrl>/v1/jwks with the secret key
  // (5 attempts with backoff, no timeout per attempt) -- the "hang with no log line" when the
  // network drops packets, ~3 s then signed-out "unexpected-error" when it refuses at once.
  jwtKey: env.CLERK_JWT_KEY || undefined,
  // The secret key is deliberately NOT passed as an option: an explicit `secretKey` option
  // makes clerkMiddleware require CLERK_ENCRYPTION_KEY. It is read from CLERK_SECRET_KEY.

  // Clerk's Backend API. Only three paths call it once jwtKey is set: a __clerk_handshake_nonce
  // query parameter or cookie (clients.getHandshakePayload), an expired session token with a
  // suffixed __refresh_<suffix> cookie on a GET (sessions.refreshSession), and currentUser()/
  // clerkClient() calls, which this app does not make. Those requests have no timeout, so on a
  // machine whose network drops packets they hang the request. The default is port 1 on
  // loopback, which is on the Fetch standard's "bad port" list: fetch() refuses it without
  // opening a socket, so every such call fails at once and the request goes on (signed out, or
  // to the handshake). Set CLERK_API_URL to a local fake (fake-bapi.mjs) to exercise them.
  apiUrl: env.CLERK_API_URL || 'http://127.0.0.1:1',
  signInUrl: env.CLERK_SIGN_IN_URL || '/sign-in',
  signUpUrl: env.CLERK_SIGN_UP_URL || '/sign-in',
  debug: env.CLERK_DEBUG === '1',
};
const parties = list(env.CLERK_AUTHORIZED_PARTIES);
if (parties.length) options.authorizedParties = parties;
if (env.CLERK_ISSUER) options.issuer = env.CLERK_ISSUER;

export default clerkMiddleware(options);

export const config = {
  matcher: [
    // Clerk's recommended matcher: skip Next internals and static files...
    '/((?!_next|[^?]*\\.(?:html?|css|js(?!on)|jpe?g|webp|png|gif|svg|ttf|woff2?|ico|csv|docx?|xlsx?|zip|webmanifest)).*)',
    // ...but always run for API routes.
    '/(api|trpc)(.*)',
  ],
};
