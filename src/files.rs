//! The app's file API, served by Portier on the bucket of `[s3]`: upload (multipart form,
//! streamed), presigned URLs, delete (one key or a batch) and list, as JSON. Which keys a
//! caller may touch is decided by [`crate::admission::s3`] with the object route's own
//! policy; this module does the I/O: it parses the form as it arrives (`multer`), checks the
//! first bytes and the size while streaming, and talks to the store
//! ([`crate::s3::client`]).
//!
//! An object is stored whole or not at all, and only once the whole form has arrived and
//! parsed: a refusal, a malformed or cut-off form (even after the file), a store error or a
//! client that goes away stores nothing. A file that fits one part goes up as one PutObject
//! with its length once the form ends; a larger one as a multipart upload (8 MiB parts in
//! memory, at most one at a time) whose last part and completion wait for the end of the
//! form, and which is aborted whatever path drops it unfinished. When the form names the key
//! after the file, the file is spooled to disk (bounded, mode 0600, removed on every path)
//! and sent as one PutObject once the key is known and allowed.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::admission::s3::{download_extras, literal_kind, KeyPlan, ListPlan};
use crate::error::Reason;
use crate::policy::ContentType;
use crate::s3::client::{chunks, file_body, ClientError};
use crate::s3::front::S3Backend;
use crate::s3::{presign_with, PresignExtras};

/// Where request body bytes come from (the Pingora session in the proxy, a buffer in tests).
#[async_trait]
pub trait BodySource: Send {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>>;
}

/// Part size of multipart uploads; S3 needs at least 5 MiB for every part but the last.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Longest `s3_key` field accepted.
const MAX_KEY_FIELD: usize = 2048;

/// Spool files are named `<prefix><random>` in `[s3] spool_dir`.
const SPOOL_PREFIX: &str = "portier-upload-";

/// A spool file this old was left by a process that died mid-upload.
pub const STALE_SPOOL: Duration = Duration::from_secs(24 * 3600);

/// Why a file API request failed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("refused: {0}")]
    Refused(Reason),
    #[error("store: {0}")]
    Store(#[from] ClientError),
    #[error("spool file: {0}")]
    Spool(io::Error),
    /// Reading the request body failed (the client went away or stopped sending).
    #[error("reading the upload: {0}")]
    Client(String),
}

impl FilesError {
    pub fn reason(&self) -> Reason {
        match self {
            FilesError::Refused(r) => *r,
            FilesError::Store(e) if e.is_auth() => Reason::UpstreamAuthFailed,
            FilesError::Store(e) if e.is_timeout() => Reason::UpstreamTimeout,
            FilesError::Store(_) => Reason::UpstreamUnavailable,
            FilesError::Spool(_) => Reason::Internal,
            FilesError::Client(_) => Reason::BadRequest,
        }
    }
}

impl From<Reason> for FilesError {
    fn from(r: Reason) -> Self {
        FilesError::Refused(r)
    }
}

/// A stored upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub key: String,
    pub kind: Option<String>,
    pub size: u64,
    pub content_type: String,
}

/// The media type a file is stored with: what its first bytes are for kinds that check
/// types, else the form part's declared type when it is a plain media type.
fn store_type(plan: &KeyPlan, head: &[u8], declared: Option<&str>) -> Result<String, Reason> {
    if !plan.types.is_empty() {
        return ContentType::detect(&plan.types, head)
            .map(|t| t.mime().to_string())
            .ok_or(Reason::UnsupportedMediaType);
    }
    Ok(declared
        .filter(|d| d.bytes().all(|b| b.is_ascii_graphic()) && d.contains('/'))
        .unwrap_or("application/octet-stream")
        .to_string())
}

/// A spool file, removed when dropped (on every path: stored, refused, failed).
struct Spool {
    path: PathBuf,
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A file part held until the key is known.
struct Spooled {
    spool: Spool,
    size: u64,
    head: Vec<u8>,
    declared: Option<String>,
}

/// Removes spool files older than `older_than` from `dir` (left by a process that died
/// mid-upload); returns how many. Only regular files named like spool files are touched.
pub fn sweep_spool(dir: &Path, older_than: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        if !e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(SPOOL_PREFIX))
        {
            continue;
        }
        // The entry's own metadata: a symlink is not followed.
        let Ok(meta) = e.metadata() else { continue };
        let stale = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > older_than);
        if meta.is_file() && stale && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        log::info!(
            "removed {removed} stale upload spool file(s) from {}",
            dir.display()
        );
    }
    removed
}

/// The request body as multer reads it: one chunk, then `Pending` once (with a wake-up), so
/// the parser hands each chunk on before reading the next. multer reads everything a stream
/// has ready into its own buffer before it returns a field's chunk; from a fast client that is
/// much of the upload, held in memory.
struct OneChunkPerPoll<S> {
    inner: std::pin::Pin<Box<S>>,
    yielded: bool,
}

impl<S: futures_util::Stream> futures_util::Stream for OneChunkPerPoll<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        if self.yielded {
            self.yielded = false;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        let next = self.inner.as_mut().poll_next(cx);
        if matches!(next, std::task::Poll::Ready(Some(_))) {
            self.yielded = true;
        }
        next
    }
}

/// Receives the form and stores its `file` under its `s3_key`, once the whole form parsed.
/// `decide` authorizes a key with the object route's policy; `max_body` bounds the whole form
/// (and a spooled file). `kind` is set to the key's kind folder as soon as the key is known,
/// so a refusal is logged with it too.
pub async fn upload(
    body: &mut dyn BodySource,
    boundary: &str,
    backend: &Arc<S3Backend>,
    max_body: u64,
    decide: &(dyn Fn(&str) -> Result<KeyPlan, Reason> + Sync),
    kind: &mut Option<String>,
) -> Result<Uploaded, FilesError> {
    let stream = futures_util::stream::unfold(body, |b| async move {
        match b.next_chunk().await {
            Ok(Some(c)) => Some((Ok::<Bytes, io::Error>(c), b)),
            Ok(None) => None,
            Err(e) => Some((Err(e), b)),
        }
    });
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(max_body));
    let stream = OneChunkPerPoll {
        inner: Box::pin(stream),
        yielded: false,
    };
    let mut form = multer::Multipart::with_constraints(stream, boundary, constraints);
    let mut key: Option<String> = None;
    let mut spooled: Option<Spooled> = None;
    // A file received under a known key: parts may be in the store already, but nothing is
    // visible under the key until it is committed, after the form's closing boundary.
    let mut received: Option<Received> = None;
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(form_error(e)),
        };
        match field.name() {
            Some("s3_key") if key.is_none() => {
                let text = read_small(field, MAX_KEY_FIELD).await?;
                *kind = literal_kind(&text);
                key = Some(text);
            }
            Some("file") if received.is_none() && spooled.is_none() => match &key {
                Some(k) => {
                    let plan = decide(k)?;
                    received = Some(receive(field, plan, backend).await?);
                }
                None => spooled = Some(spool(field, backend, max_body).await?),
            },
            // An unknown or repeated field: the whole form is refused, the file with it.
            _ => return Err(Reason::BadRequest.into()),
        }
    }
    if let Some(r) = received {
        return r.commit().await;
    }
    let (Some(key), Some(file)) = (key, spooled) else {
        return Err(Reason::BadRequest.into());
    };
    let plan = decide(&key)?;
    if file.size > plan.limit {
        return Err(Reason::BodyTooLarge.into());
    }
    let content_type = store_type(&plan, &file.head, file.declared.as_deref())?;
    let handle = tokio::fs::File::open(&file.spool.path)
        .await
        .map_err(FilesError::Spool)?;
    backend
        .client
        .put_object(
            backend.bucket()?,
            &plan.key,
            &content_type,
            file.size,
            file_body(handle),
        )
        .await?;
    Ok(Uploaded {
        key: plan.key,
        kind: plan.kind,
        size: file.size,
        content_type,
    })
}

fn form_error(e: multer::Error) -> FilesError {
    match e {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            Reason::BodyTooLarge.into()
        }
        multer::Error::StreamReadFailed(e) => FilesError::Client(e.to_string()),
        other => {
            log::info!("malformed upload form: {other}");
            Reason::BadRequest.into()
        }
    }
}

async fn read_small(mut field: multer::Field<'_>, max: usize) -> Result<String, FilesError> {
    let mut buf = Vec::new();
    while let Some(c) = field.chunk().await.map_err(form_error)? {
        if buf.len() + c.len() > max {
            return Err(Reason::BadRequest.into());
        }
        buf.extend_from_slice(&c);
    }
    String::from_utf8(buf).map_err(|_| Reason::BadRequest.into())
}

async fn spool(
    mut field: multer::Field<'_>,
    backend: &S3Backend,
    max: u64,
) -> Result<Spooled, FilesError> {
    let path = backend
        .config
        .spool_dir
        .join(format!("{SPOOL_PREFIX}{:016x}", rand::random::<u64>()));
    // Readable by Portier's user only: it holds a user's upload.
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = tokio::fs::OpenOptions::from(opts)
        .open(&path)
        .await
        .map_err(FilesError::Spool)?;
    // Ours from here on (create_new): removed whatever happens next.
    let spool = Spool { path };
    let declared = field.content_type().map(|m| m.essence_str().to_string());
    let mut size = 0u64;
    let mut head = Vec::new();
    while let Some(c) = field.chunk().await.map_err(form_error)? {
        size += c.len() as u64;
        if size > max {
            return Err(Reason::BodyTooLarge.into());
        }
        if head.len() < ContentType::SNIFF_LEN {
            let need = ContentType::SNIFF_LEN - head.len();
            head.extend_from_slice(&c[..need.min(c.len())]);
        }
        file.write_all(&c).await.map_err(FilesError::Spool)?;
    }
    file.flush().await.map_err(FilesError::Spool)?;
    Ok(Spooled {
        spool,
        size,
        head,
        declared,
    })
}

/// An open multipart upload. Dropped without [`Multipart::completed`] (a refusal, a store
/// error, a client gone, a cut-off form, any early return), it is aborted in the background:
/// the store discards its parts.
struct Multipart {
    backend: Arc<S3Backend>,
    key: String,
    id: String,
    parts: Vec<(u32, String)>,
    completed: bool,
}

impl Drop for Multipart {
    fn drop(&mut self) {
        if self.completed {
            return;
        }
        let backend = self.backend.clone();
        let key = std::mem::take(&mut self.key);
        let id = std::mem::take(&mut self.id);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { abort_multipart(&backend, &key, &id).await });
            }
            Err(_) => log::warn!("no runtime to abort the multipart upload of {key}"),
        }
    }
}

async fn abort_multipart(backend: &S3Backend, key: &str, id: &str) {
    let Ok(bucket) = backend.bucket() else {
        log::warn!("no S3 credentials to abort the multipart upload of {key}");
        return;
    };
    match backend.client.abort_multipart(bucket, key, id).await {
        Ok(()) => log::info!("multipart upload of {key} aborted"),
        Err(e) => log::warn!(
            "could not abort the multipart upload of {key} ({e}); its parts stay until a lifecycle rule removes them"
        ),
    }
}

/// A file received under an allowed key, not yet visible in the store: the bytes after the
/// last part sent, and the multipart upload holding the parts sent, if any.
struct Received {
    backend: Arc<S3Backend>,
    plan: KeyPlan,
    size: u64,
    content_type: String,
    /// The bytes received and not sent yet: at most one part. Copied in from the form's
    /// chunks (which would otherwise pin the parser's larger buffers), and reused from part
    /// to part once the store has taken the previous one: an upload holds one part, whatever
    /// its size.
    tail: BytesMut,
    /// The first bytes of the file, for the type check.
    head: Vec<u8>,
    open: Option<Multipart>,
}

impl Received {
    /// Copies `c` into the part being filled; a full part with bytes after it goes to the store
    /// (the last part, and the completion, wait for the end of the form).
    async fn take_in(&mut self, mut c: &[u8]) -> Result<(), FilesError> {
        while !c.is_empty() {
            if self.tail.len() == PART_SIZE {
                let part = self.tail.split().freeze();
                let keep = part.clone();
                self.send_part(vec![part]).await?;
                // The store has the part: its buffer is ours again (unless still shared).
                self.tail = keep.try_into_mut().unwrap_or_default();
                self.tail.clear();
            }
            let n = (PART_SIZE - self.tail.len()).min(c.len());
            // Grow by doubling, as a Vec does, but never past one part.
            let need = self.tail.len() + n;
            if need > self.tail.capacity() {
                let target = (self.tail.capacity() * 2).clamp(need, PART_SIZE);
                self.tail.reserve(target - self.tail.len());
            }
            self.tail.extend_from_slice(&c[..n]);
            c = &c[n..];
        }
        Ok(())
    }
}

async fn receive(
    mut field: multer::Field<'_>,
    plan: KeyPlan,
    backend: &Arc<S3Backend>,
) -> Result<Received, FilesError> {
    let declared = field.content_type().map(|m| m.essence_str().to_string());
    let mut r = Received {
        backend: backend.clone(),
        plan,
        size: 0,
        content_type: String::new(),
        tail: BytesMut::new(),
        head: Vec::new(),
        open: None,
    };
    let mut typed = false;
    while let Some(c) = field.chunk().await.map_err(form_error)? {
        r.size += c.len() as u64;
        if r.size > r.plan.limit {
            return Err(Reason::BodyTooLarge.into());
        }
        if r.head.len() < ContentType::SNIFF_LEN {
            let want = ContentType::SNIFF_LEN - r.head.len();
            r.head.extend_from_slice(&c[..want.min(c.len())]);
        }
        if !typed && r.head.len() >= ContentType::SNIFF_LEN {
            r.content_type = store_type(&r.plan, &r.head, declared.as_deref())?;
            typed = true;
        }
        r.take_in(&c).await?;
    }
    if !typed {
        r.content_type = store_type(&r.plan, &r.head, declared.as_deref())?;
    }
    Ok(r)
}

impl Received {
    async fn send_part(&mut self, part: Vec<Bytes>) -> Result<(), FilesError> {
        let b = &self.backend;
        if self.open.is_none() {
            let id = b
                .client
                .create_multipart(b.bucket()?, &self.plan.key, &self.content_type)
                .await?;
            self.open = Some(Multipart {
                backend: b.clone(),
                key: self.plan.key.clone(),
                id,
                parts: Vec::new(),
                completed: false,
            });
        }
        if let Some(m) = self.open.as_mut() {
            let n = m.parts.len() as u32 + 1;
            let etag = b
                .client
                .upload_part(b.bucket()?, &m.key, &m.id, n, part)
                .await?;
            m.parts.push((n, etag));
        }
        Ok(())
    }

    /// Makes the object visible: one PutObject, or the last part and the completion. On a
    /// failure the multipart upload is dropped, hence aborted.
    async fn commit(mut self) -> Result<Uploaded, FilesError> {
        let b = self.backend.clone();
        let tail = std::mem::take(&mut self.tail).freeze();
        let tail_len = tail.len();
        match self.open.take() {
            None => {
                b.client
                    .put_object(
                        b.bucket()?,
                        &self.plan.key,
                        &self.content_type,
                        tail_len as u64,
                        chunks(vec![tail]),
                    )
                    .await?;
            }
            Some(mut m) => {
                if !tail.is_empty() {
                    let n = m.parts.len() as u32 + 1;
                    let etag = b
                        .client
                        .upload_part(b.bucket()?, &m.key, &m.id, n, vec![tail])
                        .await?;
                    m.parts.push((n, etag));
                }
                b.client
                    .complete_multipart(b.bucket()?, &m.key, &m.id, &m.parts)
                    .await?;
                m.completed = true;
            }
        }
        Ok(Uploaded {
            key: self.plan.key,
            kind: self.plan.kind,
            size: self.size,
            content_type: self.content_type,
        })
    }
}

/// The signing time and lifetime of a stable presigned GET: the time rounded down to the
/// window, and a lifetime that still covers what was asked (within the cap). A URL asked for
/// less than two windows is signed now, for exactly what was asked: it is not worth caching
/// and its holder wants it short.
pub fn stable_signing(
    now: SystemTime,
    window: Duration,
    asked: Duration,
    max: Duration,
) -> (SystemTime, Duration) {
    if window.is_zero() || asked < window * 2 {
        return (now, asked.min(max));
    }
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let w = window.as_secs().max(1);
    let start = UNIX_EPOCH + Duration::from_secs(secs - secs % w);
    let lifetime = (asked + window).min(max);
    (start, lifetime)
}

/// A presigned URL and how long it stays valid from now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presigned {
    pub url: String,
    pub expires_in: u64,
    /// The lifetime was cut to what is left of the credentials that signed it.
    pub capped_by_credentials: bool,
}

/// A presigned URL for `key`. GETs are stable within `[s3] presign_stable_seconds`; no URL
/// outlives the credentials that sign it (temporary credentials expire, and so would it).
pub fn presigned_url(
    backend: &S3Backend,
    method: &str,
    key: &str,
    asked: Option<u64>,
    extras: &PresignExtras,
) -> Result<Presigned, Reason> {
    let cfg = &backend.config;
    let asked = asked
        .map(Duration::from_secs)
        .unwrap_or(cfg.presign_default)
        .min(cfg.presign_max);
    let set = backend
        .creds
        .signing_set()
        .ok_or(Reason::S3CredentialsUnavailable)?;
    let now = SystemTime::now();
    let (at, lifetime, capped) = signing_window(
        now,
        method == "GET",
        asked,
        cfg.presign_stable,
        cfg.presign_max,
        set.until.map(|u| (set.fetched, u)),
    );
    let url =
        presign_with(&set.creds, &cfg.target, method, key, lifetime, at, extras).map_err(|e| {
            log::error!("presigning failed: {e}");
            Reason::Internal
        })?;
    let expires_in = (at + lifetime)
        .duration_since(now)
        .unwrap_or_default()
        .as_secs()
        .min(asked.as_secs());
    Ok(Presigned {
        url,
        expires_in,
        capped_by_credentials: capped,
    })
}

/// When a URL asked for `asked` is signed and how long it lives, and whether temporary
/// credentials (`fetched`, usable `until`) cut it short. A stable GET is signed at the
/// window's start (never before its credentials were fetched) and, under credentials that
/// end first, lives until they do: the same URL all through the window either way, where
/// signing "now" would give a new one every second.
fn signing_window(
    now: SystemTime,
    stable: bool,
    asked: Duration,
    window: Duration,
    max: Duration,
    temporary: Option<(SystemTime, SystemTime)>,
) -> (SystemTime, Duration, bool) {
    let (mut at, mut lifetime) = if stable {
        stable_signing(now, window, asked, max)
    } else {
        (now, asked)
    };
    let Some((fetched, until)) = temporary else {
        return (at, lifetime, false);
    };
    if at < fetched {
        let secs = fetched
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        at = (UNIX_EPOCH + Duration::from_secs(secs)).min(now);
    }
    if at + lifetime > until {
        let left = until.duration_since(at).unwrap_or_default().as_secs();
        lifetime = Duration::from_secs(left.max(1));
    }
    (at, lifetime, now + asked > until)
}

/// Deletes keys already authorized; any key the store keeps is an error.
pub async fn delete(backend: &S3Backend, keys: &[String]) -> Result<Value, FilesError> {
    let failed = backend
        .client
        .delete_objects(backend.bucket()?, keys)
        .await?;
    if let Some((key, code)) = failed.first() {
        log::error!(
            "the store kept {} of {} keys (first {key}: {code})",
            failed.len(),
            keys.len()
        );
        return Err(FilesError::Refused(Reason::UpstreamUnavailable));
    }
    Ok(json!({"success": true, "deleted": keys.len()}))
}

/// One page of the caller's files of one kind, each with a stable presigned GET URL.
pub async fn list(backend: &S3Backend, plan: &ListPlan) -> Result<Value, FilesError> {
    let page = backend
        .client
        .list(
            backend.bucket()?,
            &plan.prefix,
            plan.limit,
            plan.token.as_deref(),
        )
        .await?;
    let extras = download_extras();
    let mut files = Vec::with_capacity(page.objects.len());
    for o in page.objects {
        // The store was asked for this prefix only; anything else is not shown.
        if !o.key.starts_with(&plan.prefix) {
            continue;
        }
        let url = presigned_url(backend, "GET", &o.key, None, &extras)?.url;
        files.push(json!({
            "key": o.key,
            "filename": o.key.rsplit('/').next().unwrap_or(""),
            "size": o.size,
            "last_modified": o.last_modified,
            "url": url,
        }));
    }
    Ok(json!({"files": files, "next_token": page.next_token}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_signing_rounds_down_and_still_covers_what_was_asked() {
        let w = Duration::from_secs(300);
        let max = Duration::from_secs(7200);
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let (a, la) = stable_signing(t(1_000_010), w, Duration::from_secs(3600), max);
        let (b, lb) = stable_signing(t(1_000_199), w, Duration::from_secs(3600), max);
        assert_eq!((a, la), (b, lb), "same window, same URL inputs");
        assert_eq!(a, t(999_900));
        assert_eq!(la, Duration::from_secs(3900));
        // The next window signs anew.
        let (c, _) = stable_signing(t(1_000_200), w, Duration::from_secs(3600), max);
        assert_eq!(c, t(1_000_200));
        // Capped at the maximum.
        let (_, l) = stable_signing(t(1_000_010), w, Duration::from_secs(7200), max);
        assert_eq!(l, max);
        // No window, or a short URL: now, as asked.
        assert_eq!(
            stable_signing(t(5), Duration::ZERO, Duration::from_secs(60), max),
            (t(5), Duration::from_secs(60))
        );
        assert_eq!(
            stable_signing(t(1_000_010), w, Duration::from_secs(1), max),
            (t(1_000_010), Duration::from_secs(1))
        );
    }

    #[test]
    fn urls_under_temporary_credentials_stay_stable_and_end_with_them() {
        let w = Duration::from_secs(300);
        let max = Duration::from_secs(3600);
        let asked = Duration::from_secs(3600);
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        // Credentials fetched at 1_000_050.4, usable until 1_000_062: less than asked.
        let fetched = t(1_000_050) + Duration::from_millis(400);
        let until = t(1_000_062);
        let a = signing_window(t(1_000_051), true, asked, w, max, Some((fetched, until)));
        let b = signing_window(t(1_000_058), true, asked, w, max, Some((fetched, until)));
        assert_eq!(a, b, "the same URL inputs all through the window");
        let (at, lifetime, capped) = a;
        assert!(capped);
        assert_eq!(
            at,
            t(1_000_050),
            "never signed before the credentials were fetched"
        );
        assert!(at + lifetime <= until, "never outlives the credentials");
        assert_eq!(lifetime, Duration::from_secs(12));
        // Long-lived credentials: the plain stable window, not capped.
        let (at, lifetime, capped) = signing_window(
            t(1_000_051),
            true,
            asked,
            w,
            Duration::from_secs(7200),
            Some((t(990_000), t(1_100_000))),
        );
        assert_eq!((at, lifetime, capped), (t(999_900), asked + w, false));
        // Static keys: as stable_signing says.
        assert_eq!(
            signing_window(t(1_000_051), true, asked, w, max, None),
            (t(999_900), max, false)
        );
        // A PUT is signed now, capped all the same.
        let (at, lifetime, capped) =
            signing_window(t(1_000_051), false, asked, w, max, Some((fetched, until)));
        assert_eq!(
            (at, lifetime, capped),
            (t(1_000_051), Duration::from_secs(11), true)
        );
    }

    #[test]
    fn json_keys_are_literal() {
        use crate::admission::s3::{literal_key, literal_kind};
        // `%41` is not decoded: refused as ambiguous, as `%2541` in a path is.
        assert!(literal_key("user_x/images/a%41.png").is_err());
        // A `%` that escapes nothing is kept, as `%25` in a path gives it.
        assert_eq!(
            literal_key("user_x/docs/100%.txt").as_deref(),
            Ok("user_x/docs/100%.txt")
        );
        assert_eq!(
            literal_key("user_x/images/my photo.png").as_deref(),
            Ok("user_x/images/my photo.png")
        );
        assert!(literal_key("user_x/images/../a.png").is_err());
        assert!(literal_key("user_x//a.png").is_err());
        assert_eq!(
            literal_kind("user_x/images/a.png").as_deref(),
            Some("images")
        );
        assert_eq!(literal_kind("user_x/images/%41"), None);
    }

    #[test]
    fn stale_spool_files_are_swept() {
        let dir = std::env::temp_dir().join(format!("portier-sweep-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = dir.join(format!("{SPOOL_PREFIX}old"));
        let fresh = dir.join(format!("{SPOOL_PREFIX}fresh"));
        let other = dir.join("unrelated-old");
        for p in [&old, &fresh, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        let two_days = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
        for p in [&old, &other] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(two_days)
                .unwrap();
        }
        assert_eq!(sweep_spool(&dir, STALE_SPOOL), 1);
        assert!(!old.exists());
        assert!(fresh.exists() && other.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stored_types_come_from_the_bytes_for_checked_kinds() {
        let plan = KeyPlan {
            key: "u/images/a.png".into(),
            kind: Some("images".into()),
            limit: 10,
            types: vec![ContentType::Png],
        };
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert_eq!(
            store_type(&plan, png, Some("text/html")).as_deref(),
            Ok("image/png")
        );
        assert_eq!(
            store_type(&plan, b"<html>", Some("image/png")),
            Err(Reason::UnsupportedMediaType)
        );
        let any = KeyPlan {
            types: Vec::new(),
            ..plan
        };
        assert_eq!(
            store_type(&any, b"x", Some("application/pdf")).as_deref(),
            Ok("application/pdf")
        );
        assert_eq!(
            store_type(&any, b"x", Some("bad type")).as_deref(),
            Ok("application/octet-stream")
        );
    }
}
