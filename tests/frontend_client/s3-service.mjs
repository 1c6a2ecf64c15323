// A browser-style client for Portier's file API, shaped like the Next.js front end's
// `s3-service.ts` (used by its `useS3Files` hook): fetch + FormData + JSON, the session token
// as `Authorization: Bearer <token>`. Node >= 20 built-ins only (fetch, FormData, Blob).
//
//   import { createS3Service } from './s3-service.mjs';
//   const s3 = createS3Service({ baseUrl: 'http://127.0.0.1:8080', token });
//   const { s3_key, bucket, url } = await s3.uploadFile(file, 'user_123/images/cat.png');
//
// Every method resolves to the parsed JSON body of a 2xx answer and otherwise throws an
// S3ServiceError carrying `status` (the HTTP status, 0 if there was no answer), `code` (the
// JSON `error` field, e.g. "not_owner", or undefined) and `body` (the parsed body or the text).

export const DEFAULT_TIMEOUT_MS = 15000;

export class S3ServiceError extends Error {
  constructor(message, { status, code, body, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'S3ServiceError';
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

/**
 * @param {object} opts
 * @param {string} opts.baseUrl    Portier's origin, e.g. http://127.0.0.1:8080 (no trailing path needed)
 * @param {string} [opts.token]    Clerk session token; when empty no Authorization header is sent
 * @param {number} [opts.timeoutMs] per-request timeout (AbortSignal.timeout), default 15000
 */
export function createS3Service({ baseUrl, token, timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
  if (!baseUrl) throw new TypeError('createS3Service: baseUrl is required');
  const base = String(baseUrl).replace(/\/+$/, '');

  function headersFor(extra) {
    const headers = { Accept: 'application/json', ...(extra || {}) };
    if (token) headers.Authorization = `Bearer ${token}`;
    return headers;
  }

  // The app's fetch wrapper: adds the token, parses JSON, turns non-2xx into an error.
  async function request(path, init = {}) {
    const method = init.method || 'GET';
    let res;
    try {
      res = await fetch(base + path, {
        ...init,
        method,
        headers: headersFor(init.headers),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (e) {
      const why = e && e.name === 'TimeoutError' ? `timed out after ${timeoutMs} ms` : String(e && (e.cause?.message || e.message) || e);
      throw new S3ServiceError(`${method} ${path}: no answer (${why})`, { status: 0, code: undefined, body: undefined, cause: e });
    }
    let text;
    try {
      text = await res.text();
    } catch (e) {
      throw new S3ServiceError(`${method} ${path} -> ${res.status}: body not read (${e && e.message})`, { status: res.status, cause: e });
    }
    let body;
    let parsed = false;
    if (text.length > 0) {
      try {
        body = JSON.parse(text);
        parsed = true;
      } catch {
        body = text;
      }
    }
    if (!res.ok) {
      const code = parsed && body && typeof body.error === 'string' ? body.error : undefined;
      const detail = parsed && body && typeof body.message === 'string' ? body.message : String(text).slice(0, 200);
      throw new S3ServiceError(
        `${method} ${path} -> ${res.status}${code ? ` ${code}` : ''}${detail ? `: ${detail}` : ''}`,
        { status: res.status, code, body },
      );
    }
    if (!parsed) {
      throw new S3ServiceError(
        `${method} ${path} -> ${res.status} but the body is not JSON: ${JSON.stringify(String(text).slice(0, 200))}`,
        { status: res.status, code: undefined, body },
      );
    }
    return body;
  }

  function jsonInit(method, payload) {
    return {
      method,
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(payload),
    };
  }

  /**
   * POST /api/s3/upload, multipart/form-data with `file` then `s3_key` (the app's order).
   * @param {Blob|File} file
   * @param {string} key  e.g. user_123/images/cat.png
   * @param {object} [opts]
   * @param {boolean} [opts.keyFirst]  append `s3_key` before `file`
   * @param {string} [opts.filename]   file name for a plain Blob (a File brings its own)
   * @returns {Promise<{s3_key: string, bucket: string, url: string}>}
   */
  async function uploadFile(file, key, { keyFirst = false, filename } = {}) {
    const formData = new FormData();
    const appendFile = () =>
      filename === undefined ? formData.append('file', file) : formData.append('file', file, filename);
    if (keyFirst) {
      formData.append('s3_key', key);
      appendFile();
    } else {
      appendFile();
      formData.append('s3_key', key);
    }
    // No Content-Type: fetch writes multipart/form-data with its boundary, as a browser does.
    return request('/api/s3/upload', { method: 'POST', body: formData });
  }

  /**
   * POST /api/s3/presigned-url. Without options: a GET URL. With
   * `{ method: 'PUT', contentType, contentLength }`: a direct-upload URL.
   * @returns {Promise<{url: string, expires_in: number}>}
   */
  async function getPresignedUrl(key, expiresIn = 3600, { method, contentType, contentLength } = {}) {
    const payload = { s3_key: key, expires_in: expiresIn };
    if (method !== undefined) payload.method = method;
    if (contentType !== undefined) payload.content_type = contentType;
    if (contentLength !== undefined) payload.content_length = contentLength;
    return request('/api/s3/presigned-url', jsonInit('POST', payload));
  }

  /** A presigned PUT URL for a direct browser upload of exactly `contentLength` bytes. */
  async function getPresignedUploadUrl(key, contentType, contentLength, expiresIn = 3600) {
    return getPresignedUrl(key, expiresIn, { method: 'PUT', contentType, contentLength });
  }

  /** DELETE /api/s3/delete {"s3_key"} -> {"success": true} */
  async function deleteFile(key) {
    return request('/api/s3/delete', jsonInit('DELETE', { s3_key: key }));
  }

  /** DELETE /api/s3/delete {"s3_keys": [...]} (all or nothing) -> {"success": true} */
  async function deleteFiles(keys) {
    return request('/api/s3/delete', jsonInit('DELETE', { s3_keys: keys }));
  }

  /**
   * GET /api/s3/list?user_id=..&content_type=..[&next_token=..][&limit=..]
   * @param {string} userId
   * @param {string} contentType  image | video | book | blog
   * @param {string|null} [nextToken]
   * @param {number} [limit]
   * @returns {Promise<{files: Array<{key, filename, size, last_modified, url}>, next_token: string|null}>}
   */
  async function listFiles(userId, contentType, nextToken, limit) {
    const params = new URLSearchParams({ user_id: userId, content_type: contentType });
    if (nextToken !== undefined && nextToken !== null) params.set('next_token', nextToken);
    if (limit !== undefined && limit !== null) params.set('limit', String(limit));
    return request(`/api/s3/list?${params.toString()}`, { method: 'GET' });
  }

  return {
    uploadFile,
    getPresignedUrl,
    getPresignedUploadUrl,
    deleteFile,
    deleteFiles,
    listFiles,
    // Escape hatch for requests the typed methods cannot make (e.g. a malformed body).
    request,
  };
}
