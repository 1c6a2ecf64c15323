import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));

/** @type {import('next').NextConfig} */
const nextConfig = {
  // This folder is its own project; don't let Next guess a workspace root from
  // lockfiles further up (/work/main has none, CI machines might).
  turbopack: { root: here },
  outputFileTracingRoot: here,
  poweredByHeader: false,
  // REQUIRED when the server is started with `-H 127.0.0.1` (see README, "The hang"):
  // clerkMiddleware turns every pass-through into a rewrite to request.url. Next's proxy
  // adapter normalises 127.0.0.1 to "localhost" in that URL, its router compares it with
  // http://127.0.0.1:PORT, sees an *external* rewrite and proxies the request to itself over
  // HTTP -> an endless self-request loop, no log line, the client hangs. Without the
  // normalisation the rewrite stays http://127.0.0.1:PORT/... and is handled in-process.
  skipProxyUrlNormalize: true,
  // Tests read the HTML; keep it free of source maps and lint/type steps.
  productionBrowserSourceMaps: false,
};

export default nextConfig;
