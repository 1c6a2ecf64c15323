//! The app's file API, served by Portier on the bucket of `[s3]`: upload (multipart form,
//! streamed), presigned URLs, delete (one key or a batch) and list, as JSON. Which keys a
//! caller may touch is decided by [`crate::admission::s3`] with the object route's own
//! policy; this module does the I/O: it parses the form as it arrives (`multer`), checks the
//! first bytes and the size while streaming, and talks to the store
//! ([`crate::s3::client`]).
//!
//! An object is stored whole or not at all. A file that fits one part goes up as one
//! PutObject with its length; a larger one as a multipart upload (8 MiB parts in memory, at
//! most one at a time), completed only after its last byte arrived and aborted on any
//! failure, so nothing is visible under the key before that. When the form names the key
//! after the file, the file is spooled to disk (bounded) and sent as one PutObject once the
//! key is known and allowed.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::admission::s3::{KeyPlan, ListPlan};
use crate::error::Reason;
use crate::policy::ContentType;
use crate::s3::client::{file_body, full, ClientError};
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

/// Why a file API request failed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("refused: {0}")]
    Refused(Reason),
    #[error("store: {0}")]
    Store(#[from] ClientError),
    #[error("spool file: {0}")]
    Spool(io::Error),
    #[error("the client went away mid-upload: {0}")]
    Client(String),
}

impl FilesError {
    pub fn reason(&self) -> Reason {
        match self {
            FilesError::Refused(r) => *r,
            FilesError::Store(e) if e.is_auth() => Reason::UpstreamAuthFailed,
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

/// A spool file removed when dropped.
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

/// Receives the form and stores its `file` under its `s3_key`. `decide` authorizes a key with
/// the object route's policy; `max_body` bounds the whole form (and a spooled file).
pub async fn upload(
    body: &mut dyn BodySource,
    boundary: &str,
    backend: &S3Backend,
    max_body: u64,
    decide: &(dyn Fn(&str) -> Result<KeyPlan, Reason> + Sync),
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
    let mut form = multer::Multipart::with_constraints(stream, boundary, constraints);
    let mut key: Option<String> = None;
    let mut spooled: Option<Spooled> = None;
    let mut stored: Option<Uploaded> = None;
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(form_error(e)),
        };
        match field.name() {
            Some("s3_key") if key.is_none() => {
                let text = read_small(field, MAX_KEY_FIELD).await?;
                key = Some(text);
            }
            Some("file") if stored.is_none() && spooled.is_none() => match &key {
                Some(k) => {
                    let plan = decide(k)?;
                    stored = Some(stream_to_store(field, &plan, backend).await?);
                }
                None => spooled = Some(spool(field, backend, max_body).await?),
            },
            _ => return Err(Reason::BadRequest.into()),
        }
    }
    if let Some(done) = stored {
        return Ok(done);
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
        .join(format!("portier-upload-{:016x}", rand::random::<u64>()));
    let spool = Spool { path };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&spool.path)
        .await
        .map_err(FilesError::Spool)?;
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

/// An open multipart upload, aborted unless completed.
struct Multipart<'a> {
    backend: &'a S3Backend,
    key: &'a str,
    id: String,
    parts: Vec<(u32, String)>,
}

impl Multipart<'_> {
    async fn abort(self) {
        let b = self.backend;
        let Ok(bucket) = b.bucket() else {
            log::warn!(
                "no S3 credentials to abort the multipart upload of {}",
                self.key
            );
            return;
        };
        if let Err(e) = b.client.abort_multipart(bucket, self.key, &self.id).await {
            log::warn!("could not abort multipart upload of {}: {e}", self.key);
        }
    }
}

async fn stream_to_store(
    mut field: multer::Field<'_>,
    plan: &KeyPlan,
    backend: &S3Backend,
) -> Result<Uploaded, FilesError> {
    let declared = field.content_type().map(|m| m.essence_str().to_string());
    let mut buf = BytesMut::new();
    let mut size = 0u64;
    let mut content_type: Option<String> = None;
    let mut open: Option<Multipart<'_>> = None;
    let result: Result<(), FilesError> = async {
        loop {
            let chunk = field.chunk().await.map_err(form_error)?;
            let Some(c) = chunk else { break };
            size += c.len() as u64;
            if size > plan.limit {
                return Err(Reason::BodyTooLarge.into());
            }
            buf.extend_from_slice(&c);
            if content_type.is_none() && buf.len() >= ContentType::SNIFF_LEN {
                content_type = Some(store_type(plan, &buf, declared.as_deref())?);
            }
            while buf.len() >= PART_SIZE {
                let part = buf.split_to(PART_SIZE).freeze();
                let ct = content_type
                    .as_deref()
                    .unwrap_or("application/octet-stream");
                if open.is_none() {
                    let id = backend
                        .client
                        .create_multipart(backend.bucket()?, &plan.key, ct)
                        .await?;
                    open = Some(Multipart {
                        backend,
                        key: &plan.key,
                        id,
                        parts: Vec::new(),
                    });
                }
                if let Some(m) = open.as_mut() {
                    let n = m.parts.len() as u32 + 1;
                    let etag = backend
                        .client
                        .upload_part(backend.bucket()?, &plan.key, &m.id, n, part)
                        .await?;
                    m.parts.push((n, etag));
                }
            }
        }
        if content_type.is_none() {
            content_type = Some(store_type(plan, &buf, declared.as_deref())?);
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        if let Some(m) = open {
            m.abort().await;
        }
        return Err(e);
    }
    let content_type = content_type.unwrap_or_else(|| "application/octet-stream".into());
    match open {
        None => {
            backend
                .client
                .put_object(
                    backend.bucket()?,
                    &plan.key,
                    &content_type,
                    buf.len() as u64,
                    full(buf.freeze()),
                )
                .await?;
        }
        Some(mut m) => {
            let last: Result<(), FilesError> = async {
                if !buf.is_empty() {
                    let n = m.parts.len() as u32 + 1;
                    let etag = backend
                        .client
                        .upload_part(backend.bucket()?, &plan.key, &m.id, n, buf.freeze())
                        .await?;
                    m.parts.push((n, etag));
                }
                backend
                    .client
                    .complete_multipart(backend.bucket()?, &plan.key, &m.id, &m.parts)
                    .await?;
                Ok(())
            }
            .await;
            if let Err(e) = last {
                m.abort().await;
                return Err(e);
            }
        }
    }
    Ok(Uploaded {
        key: plan.key.clone(),
        kind: plan.kind.clone(),
        size,
        content_type,
    })
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
    let creds = backend.credentials()?;
    let now = SystemTime::now();
    let left = backend.creds.usable_for();
    let (at, lifetime, capped) = match left {
        Some(left) if left < asked => (now, Duration::from_secs(left.as_secs().max(1)), true),
        _ if method == "GET" => {
            let (at, lifetime) = stable_signing(now, cfg.presign_stable, asked, cfg.presign_max);
            match left {
                // Rounded down and stretched, it must still end before the credentials do.
                Some(left) if at + lifetime > now + left => (now, asked, false),
                _ => (at, lifetime, false),
            }
        }
        _ => (now, asked, false),
    };
    let url =
        presign_with(&creds, &cfg.target, method, key, lifetime, at, extras).map_err(|e| {
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

/// The download disposition a presigned GET binds for a key of a kind with `types`.
pub fn download_extras(types: &[ContentType]) -> PresignExtras {
    let mut extras = PresignExtras::default();
    if types.is_empty() {
        extras
            .query
            .push(("response-content-disposition".into(), "attachment".into()));
    }
    extras
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
pub async fn list(
    backend: &S3Backend,
    plan: &ListPlan,
    types: &[ContentType],
) -> Result<Value, FilesError> {
    let page = backend
        .client
        .list(
            backend.bucket()?,
            &plan.prefix,
            plan.limit,
            plan.token.as_deref(),
        )
        .await?;
    let extras = download_extras(types);
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
