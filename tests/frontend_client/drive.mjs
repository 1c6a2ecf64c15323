#!/usr/bin/env node
// Drives Portier's file API the way the Next.js front end does (see s3-service.mjs) and prints
// one line per step on stdout:  `ok <step>`, `FAIL <step>: <why>` or `skip <step>: <why>`.
// Exit 0 when no step failed, 1 when a step failed (or the overall deadline passed),
// 2 when the environment is incomplete. See README.md.

import { randomBytes } from 'node:crypto';
import { createS3Service } from './s3-service.mjs';

const TIMEOUT_MS = 15000;
const DEADLINE_MS = Number(process.env.PORTIER_DRIVE_DEADLINE_MS) || 180000;
const MAX_PAGES = 200;

const env = process.env;
const BASE = env.PORTIER_URL;
const TOKEN = env.PORTIER_TOKEN;
const USER = env.PORTIER_USER_ID;
const OTHER = env.PORTIER_OTHER_USER_ID;
const FREE_TOKEN = env.PORTIER_FREE_TOKEN || '';
const FREE_USER = env.PORTIER_FREE_USER_ID || '';

const missing = ['PORTIER_URL', 'PORTIER_TOKEN', 'PORTIER_USER_ID', 'PORTIER_OTHER_USER_ID'].filter((n) => !env[n]);
if (missing.length) {
  console.error(`drive.mjs: missing environment: ${missing.join(', ')}`);
  process.exit(2);
}
if (FREE_TOKEN && !FREE_USER) {
  console.error('drive.mjs: PORTIER_FREE_TOKEN is set but PORTIER_FREE_USER_ID is not');
  process.exit(2);
}

// Whatever happens, the process ends.
setTimeout(() => {
  console.log(`FAIL deadline: the scenario took longer than ${DEADLINE_MS} ms`);
  process.exit(1);
}, DEADLINE_MS).unref();

const s3 = createS3Service({ baseUrl: BASE, token: TOKEN, timeoutMs: TIMEOUT_MS });
const anon = createS3Service({ baseUrl: BASE, token: undefined, timeoutMs: TIMEOUT_MS });
const free = FREE_TOKEN ? createS3Service({ baseUrl: BASE, token: FREE_TOKEN, timeoutMs: TIMEOUT_MS }) : null;

// ---------------------------------------------------------------------------------------------
// helpers

let failures = 0;
let passes = 0;

function oneLine(s) {
  return String(s).replace(/\s+/g, ' ').trim().slice(0, 500);
}

async function step(name, fn) {
  try {
    await fn();
    passes++;
    console.log(`ok ${name}`);
    return true;
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}: ${oneLine(e && e.message ? e.message : e)}`);
    return false;
  }
}

function skip(name, why) {
  console.log(`skip ${name}: ${why}`);
}

function need(cond, msg) {
  if (!cond) throw new Error(msg);
}

function requires(value, what) {
  if (value === undefined || value === null) throw new Error(`skipped check: ${what} failed earlier`);
  return value;
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
const MP4_HEAD = Buffer.from([0x00, 0x00, 0x00, 0x18, 0x66, 0x74, 0x79, 0x70, 0x6d, 0x70, 0x34, 0x32]);

function png(randomLen) {
  return Buffer.concat([PNG_SIGNATURE, randomBytes(randomLen)]);
}

function rand() {
  return randomBytes(6).toString('hex');
}

function basename(key) {
  return key.slice(key.lastIndexOf('/') + 1);
}

function blob(bytes, type) {
  return new Blob([bytes], { type });
}

function isHttpUrl(u) {
  return typeof u === 'string' && /^https?:\/\//i.test(u);
}

function mediaType(ct) {
  return (ct || '').split(';')[0].trim().toLowerCase();
}

// A direct fetch of a presigned store URL: no token, like a browser <img src> or download.
async function fetchStore(url, init = {}) {
  try {
    return await fetch(url, { ...init, signal: AbortSignal.timeout(TIMEOUT_MS) });
  } catch (e) {
    const why = e && e.name === 'TimeoutError' ? `timed out after ${TIMEOUT_MS} ms` : (e && (e.cause?.message || e.message)) || String(e);
    throw new Error(`${init.method || 'GET'} presigned URL: no answer (${why})`);
  }
}

async function fetchBytes(url) {
  const res = await fetchStore(url);
  const bytes = Buffer.from(await res.arrayBuffer());
  need(res.ok, `GET presigned URL -> ${res.status}: ${oneLine(bytes.toString('utf8', 0, 200))}`);
  return { bytes, contentType: res.headers.get('content-type') };
}

function sameBytes(got, want, what) {
  if (got.length !== want.length) throw new Error(`${what}: ${got.length} bytes, expected ${want.length}`);
  const i = got.findIndex((b, j) => b !== want[j]);
  if (i !== -1) throw new Error(`${what}: bytes differ at offset ${i}`);
}

// The promise must be refused with exactly this status and JSON error code.
async function refused(promise, status, code) {
  let result;
  try {
    result = await promise;
  } catch (e) {
    if (e.status === status && e.code === code) return e;
    throw new Error(`expected ${status} ${code}, got ${e.status ?? 'no status'} ${e.code ?? '(no code)'}: ${e.message}`);
  }
  throw new Error(`expected ${status} ${code}, got a success: ${oneLine(JSON.stringify(result))}`);
}

// Every file of a listing, following next_token (bounded).
async function listAll(svc, userId, contentType) {
  const files = [];
  let token = null;
  const seen = new Set();
  for (let page = 0; page < MAX_PAGES; page++) {
    const res = await svc.listFiles(userId, contentType, token);
    need(Array.isArray(res.files), `list: "files" is not an array: ${oneLine(JSON.stringify(res))}`);
    files.push(...res.files);
    token = res.next_token;
    if (token === null || token === undefined) return files;
    need(typeof token === 'string' && token.length > 0, `list: next_token is neither null nor a non-empty string: ${JSON.stringify(token)}`);
    need(!seen.has(token), `list: next_token ${JSON.stringify(token)} repeated`);
    seen.add(token);
  }
  throw new Error(`list: more than ${MAX_PAGES} pages`);
}

// Every download URL Portier hands out is signed as an attachment: a navigation to it
// downloads the file instead of rendering it (img/video tags still show it).
function downloadsAsAttachment(url) {
  try {
    return new URL(url).searchParams.get('response-content-disposition') === 'attachment';
  } catch {
    return false;
  }
}

function checkEntry(entry, key, size) {
  need(entry.filename === basename(key), `${key}: filename ${JSON.stringify(entry.filename)}, expected ${JSON.stringify(basename(key))}`);
  need(entry.size === size, `${key}: size ${JSON.stringify(entry.size)}, expected ${size}`);
  need(
    (typeof entry.last_modified === 'string' || typeof entry.last_modified === 'number') && !Number.isNaN(new Date(entry.last_modified).getTime()),
    `${key}: last_modified ${JSON.stringify(entry.last_modified)} is not a date`,
  );
  need(isHttpUrl(entry.url), `${key}: url ${JSON.stringify(entry.url)} is not an http(s) URL`);
  need(downloadsAsAttachment(entry.url), `${key}: listed url is not signed as an attachment`);
}

function checkUpload(res, key) {
  need(res && res.s3_key === key, `s3_key ${JSON.stringify(res && res.s3_key)}, expected ${JSON.stringify(key)}`);
  need(typeof res.bucket === 'string' && res.bucket.length > 0, `bucket ${JSON.stringify(res.bucket)} is empty`);
  need(isHttpUrl(res.url), `url ${JSON.stringify(res.url)} is not an http(s) URL`);
  need(downloadsAsAttachment(res.url), `upload url is not signed as an attachment`);
}

function checkPresigned(res, maxExpiry) {
  need(res && isHttpUrl(res.url), `url ${JSON.stringify(res && res.url)} is not an http(s) URL`);
  need(
    typeof res.expires_in === 'number' && Number.isFinite(res.expires_in) && res.expires_in > 0 && res.expires_in <= maxExpiry,
    `expires_in ${JSON.stringify(res.expires_in)} is not a number in (0, ${maxExpiry}]`,
  );
}

// ---------------------------------------------------------------------------------------------
// the scenario

const run = rand();
const created = new Set(); // keys this run may have created, for the cleanup after a failure

const k1 = `${USER}/images/drive-${run}.png`;
const d1 = png(50 * 1024);
const k2 = `${USER}/images/drive-${run}-keyfirst.png`;
const d2 = png(50 * 1024);
const pageKeys = [1, 2, 3].map((n) => `${USER}/images/page-${run}-${n}.png`);
const pageData = pageKeys.map(() => png(256));
const k3 = `${USER}/images/put-${run}.png`;
const d3 = png(20 * 1024);
const foreignKey = `${OTHER}/images/x.png`;

let up1 = null;
let up2 = null;
let presigned1 = null;
let putUrl = null;

await step('upload-file-first', async () => {
  created.add(k1);
  const res = await s3.uploadFile(blob(d1, 'image/png'), k1, { filename: basename(k1) });
  checkUpload(res, k1);
  up1 = res;
});

await step('upload-url-returns-bytes', async () => {
  const { url } = requires(up1, 'upload-file-first');
  const { bytes, contentType } = await fetchBytes(url);
  sameBytes(bytes, d1, 'GET upload url');
  need(mediaType(contentType) === 'image/png', `Content-Type ${JSON.stringify(contentType)}, expected image/png`);
});

await step('upload-key-first', async () => {
  created.add(k2);
  const res = await s3.uploadFile(blob(d2, 'image/png'), k2, { filename: basename(k2), keyFirst: true });
  checkUpload(res, k2);
  up2 = res;
  const { bytes } = await fetchBytes(res.url);
  sameBytes(bytes, d2, 'GET upload url');
});

await step('presigned-get', async () => {
  requires(up1, 'upload-file-first');
  const res = await s3.getPresignedUrl(k1, 3600);
  checkPresigned(res, 3600);
  need(downloadsAsAttachment(res.url), 'presigned GET url is not signed as an attachment');
  presigned1 = res;
  const { bytes } = await fetchBytes(res.url);
  sameBytes(bytes, d1, 'GET presigned url');
});

await step('presigned-get-stable', async () => {
  requires(up1, 'upload-file-first');
  const a = await s3.getPresignedUrl(k1, 3600);
  const b = await s3.getPresignedUrl(k1, 3600);
  checkPresigned(a, 3600);
  checkPresigned(b, 3600);
  need(a.url === b.url, `two presigned GET URLs in a row differ:\n${a.url}\n${b.url}`);
});

await step('list-shows-uploads', async () => {
  requires(up1, 'upload-file-first');
  const files = await listAll(s3, USER, 'image');
  for (const f of files) {
    need(typeof f.key === 'string' && f.key.startsWith(`${USER}/images/`), `listed key ${JSON.stringify(f.key)} is outside ${USER}/images/`);
  }
  const e1 = files.find((f) => f.key === k1);
  need(e1, `${k1} is not listed (${files.length} files listed)`);
  checkEntry(e1, k1, d1.length);
  if (up2) {
    const e2 = files.find((f) => f.key === k2);
    need(e2, `${k2} is not listed`);
    checkEntry(e2, k2, d2.length);
  }
  const { bytes } = await fetchBytes(e1.url);
  sameBytes(bytes, d1, 'GET listed url');
});

await step('pagination', async () => {
  for (let i = 0; i < pageKeys.length; i++) {
    created.add(pageKeys[i]);
    const res = await s3.uploadFile(blob(pageData[i], 'image/png'), pageKeys[i], { filename: basename(pageKeys[i]) });
    checkUpload(res, pageKeys[i]);
  }
  const counts = new Map(pageKeys.map((k) => [k, 0]));
  const seen = new Set();
  let token = null;
  let pages = 0;
  let total = 0;
  for (;;) {
    need(pages < MAX_PAGES, `more than ${MAX_PAGES} pages of 2`);
    const res = await s3.listFiles(USER, 'image', token, 2);
    pages++;
    need(Array.isArray(res.files), `page ${pages}: "files" is not an array`);
    need(res.files.length <= 2, `page ${pages}: ${res.files.length} files with limit=2`);
    total += res.files.length;
    for (const f of res.files) {
      if (counts.has(f.key)) counts.set(f.key, counts.get(f.key) + 1);
    }
    token = res.next_token;
    if (token === null || token === undefined) break;
    need(typeof token === 'string' && token.length > 0, `page ${pages}: next_token ${JSON.stringify(token)}`);
    need(!seen.has(token), `page ${pages}: next_token repeated`);
    seen.add(token);
  }
  for (const [k, n] of counts) need(n === 1, `${k} listed ${n} times over ${pages} pages`);
  // At least the 3 page files (plus the earlier uploads) are in images/: limit=2 needs > 1 page.
  need(pages >= 2, `${total} files came in ${pages} page(s) with limit=2`);
});

await step('refuse-other-users-key', async () => {
  await refused(s3.uploadFile(blob(png(512), 'image/png'), foreignKey, { filename: 'x.png' }), 403, 'not_owner');
});

await step('refuse-non-image', async () => {
  const key = `${USER}/images/x.png`;
  created.add(key);
  // A text file renamed x.png: a browser would label it image/png from its extension.
  await refused(s3.uploadFile(blob(Buffer.from('hello'), 'image/png'), key, { filename: 'x.png' }), 415, 'unsupported_media_type');
});

await step('refuse-other-users-list', async () => {
  await refused(s3.listFiles(OTHER, 'image'), 403, 'not_owner');
});

await step('refuse-dot-dot-key', async () => {
  await refused(s3.uploadFile(blob(png(512), 'image/png'), `${USER}/images/../x.png`, { filename: 'x.png' }), 400, 'bad_key');
});

await step('refuse-invalid-json', async () => {
  await refused(
    s3.request('/api/s3/presigned-url', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: `{"s3_key": "${k1}", "expires_in": `,
    }),
    400,
    'bad_request',
  );
});

await step('refuse-no-token-list', async () => {
  await refused(anon.listFiles(USER, 'image'), 401, 'token_missing');
});

await step('refuse-no-token-upload', async () => {
  await refused(anon.uploadFile(blob(png(512), 'image/png'), `${USER}/images/anon-${run}.png`, { filename: 'anon.png' }), 401, 'token_missing');
});

if (free) {
  await step('refuse-video-without-pro', async () => {
    const mp4 = Buffer.concat([MP4_HEAD, Buffer.alloc(4096)]);
    await refused(free.uploadFile(blob(mp4, 'video/mp4'), `${FREE_USER}/videos/v.mp4`, { filename: 'v.mp4' }), 403, 'plan_required');
  });
} else {
  skip('refuse-video-without-pro', 'PORTIER_FREE_TOKEN is not set');
}

await step('presigned-put', async () => {
  const res = await s3.getPresignedUrl(k3, 3600, { method: 'PUT', contentType: 'image/png', contentLength: d3.length });
  checkPresigned(res, 3600);
  putUrl = res.url;
  created.add(k3);
  const put = await fetchStore(putUrl, { method: 'PUT', body: d3, headers: { 'Content-Type': 'image/png' } });
  const text = await put.text();
  need(put.status === 200, `PUT presigned URL -> ${put.status}: ${oneLine(text.slice(0, 200))}`);
});

await step('presigned-put-listed', async () => {
  requires(putUrl, 'presigned-put');
  const files = await listAll(s3, USER, 'image');
  const e = files.find((f) => f.key === k3);
  need(e, `${k3} is not listed after the direct upload`);
  checkEntry(e, k3, d3.length);
  const { bytes } = await fetchBytes(e.url);
  sameBytes(bytes, d3, 'GET listed url of the direct upload');
});

await step('presigned-put-wrong-length-refused', async () => {
  requires(putUrl, 'presigned-put');
  const other = png(d3.length - 8 + 100);
  const put = await fetchStore(putUrl, { method: 'PUT', body: other, headers: { 'Content-Type': 'image/png' } });
  const text = await put.text();
  need(!put.ok, `PUT of ${other.length} bytes to a URL signed for ${d3.length} -> ${put.status} (accepted)`);
  const files = await listAll(s3, USER, 'image');
  const e = files.find((f) => f.key === k3);
  need(e && e.size === d3.length, `after the refused PUT (${put.status} ${oneLine(text.slice(0, 80))}) ${k3} has size ${e && e.size}, expected ${d3.length}`);
});

await step('delete-batch-with-foreign-key-refused', async () => {
  requires(up1, 'upload-file-first');
  await refused(s3.deleteFiles([k1, foreignKey]), 403, 'not_owner');
  const files = await listAll(s3, USER, 'image');
  need(files.some((f) => f.key === k1), `${k1} was deleted although the batch was refused`);
});

await step('delete-single', async () => {
  requires(up1, 'upload-file-first');
  const res = await s3.deleteFile(k1);
  need(res && res.success === true, `answer ${oneLine(JSON.stringify(res))}, expected {"success": true}`);
  created.delete(k1);
  const files = await listAll(s3, USER, 'image');
  need(!files.some((f) => f.key === k1), `${k1} is still listed after its deletion`);
});

await step('delete-batch', async () => {
  const keys = [k2, ...pageKeys, k3];
  const res = await s3.deleteFiles(keys);
  need(res && res.success === true, `answer ${oneLine(JSON.stringify(res))}, expected {"success": true}`);
  keys.forEach((k) => created.delete(k));
  const files = await listAll(s3, USER, 'image');
  const left = keys.filter((k) => files.some((f) => f.key === k));
  need(left.length === 0, `still listed after the batch deletion: ${left.join(', ')}`);
});

// Best-effort cleanup after a failure (not a step; never changes the exit code).
if (failures > 0) {
  const keys = [...created].filter((k) => k.startsWith(`${USER}/`));
  if (keys.length) {
    try {
      await s3.deleteFiles(keys);
      console.error(`drive.mjs: cleanup deleted ${keys.length} key(s)`);
    } catch (e) {
      console.error(`drive.mjs: cleanup failed: ${oneLine(e.message)}`);
    }
  }
}

console.error(`drive.mjs: ${passes} ok, ${failures} failed`);
process.exit(failures > 0 ? 1 : 0);
