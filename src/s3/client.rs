//! The store requests Portier makes itself, for the file API: PutObject, the multipart
//! upload family (create, part, complete, abort), DeleteObjects and ListObjectsV2. Each is
//! signed with SigV4 like the proxied requests; XML is read and written with `quick-xml`.
//! Bodies are a part buffer, a spool file streamed from disk, or a small XML document: never
//! a whole upload in memory.
//!
//! Every request is bounded like the proxied ones (`[s3] connect_timeout_ms`,
//! `read_timeout_ms`): connecting, and then any stretch in which no request byte is taken and
//! no answer arrives, may last that long at most.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::{query_string, sign_headers, Credentials, Payload, S3Target, SignError};

/// A request body: boxed so parts, spool files and XML share one client.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Why a store request failed. The store's error code is kept for the log; no variant carries
/// a credential or a signature.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("signing: {0}")]
    Sign(#[from] SignError),
    #[error("store unreachable: {0}")]
    Http(#[from] hyper_util::client::legacy::Error),
    #[error("reading the store's answer: {0}")]
    Body(String),
    #[error("store answered HTTP {status} {code}")]
    Status { status: u16, code: String },
    #[error("store answer is not the XML expected: {0}")]
    Xml(#[from] quick_xml::DeError),
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    #[error("TLS roots: {0}")]
    Tls(io::Error),
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
}

impl ClientError {
    /// A refusal of Portier's own signature or credentials (a configuration problem).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ClientError::Status {
                status: 401 | 403,
                ..
            }
        )
    }

    /// The store did not answer (or accept the connection) in time.
    pub fn is_timeout(&self) -> bool {
        match self {
            ClientError::Timeout(_) => true,
            ClientError::Http(e) => {
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    if s.downcast_ref::<io::Error>()
                        .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
                    {
                        return true;
                    }
                    source = s.source();
                }
                false
            }
            _ => false,
        }
    }
}

/// Largest store answer read (error documents, list pages, multipart results).
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// The bucket a request is for, with the credentials that sign it (taken when the request
/// is made: a long upload signs each part with the set current then).
#[derive(Clone)]
pub struct Bucket<'a> {
    pub creds: std::sync::Arc<Credentials>,
    pub target: &'a S3Target,
}

/// The client, one per bucket backend.
pub struct StoreClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    connect_timeout: Duration,
    read_timeout: Duration,
}

/// Request bodies are handed to the connection in slices of this size, so a slow link still
/// shows progress between them (a part is 8 MiB).
const SLICE: usize = 256 * 1024;

/// When a request last made progress: a body slice taken by the connection.
struct Progress {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
}

impl Progress {
    /// A request that gets `grace` before the idle clock starts (its connect).
    fn new(grace: Duration) -> Arc<Progress> {
        Arc::new(Progress {
            start: Instant::now(),
            last: AtomicU64::new(grace.as_millis() as u64),
        })
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    /// How long nothing has moved.
    fn idle(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}

impl std::fmt::Debug for StoreClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreClient")
    }
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub last_modified: String,
}

/// A page of ListObjectsV2.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListPage {
    pub objects: Vec<Listed>,
    pub next_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    contents: Vec<Listed>,
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_continuation_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InitiateMultipartUploadResult {
    upload_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteResult {
    #[serde(default, rename = "Error")]
    errors: Vec<DeleteError>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteError {
    key: String,
    code: String,
}

/// Escapes text for an XML element.
fn xml_text(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b))
}

pub fn full(b: impl Into<Bytes>) -> Body {
    let b: Bytes = b.into();
    if b.len() <= SLICE {
        return Full::new(b).map_err(|never| match never {}).boxed_unsync();
    }
    // A part in slices (no copy): each one taken by the connection is progress.
    let slices: Vec<Bytes> = (0..b.len())
        .step_by(SLICE)
        .map(|i| b.slice(i..(i + SLICE).min(b.len())))
        .collect();
    let stream = futures_util::stream::iter(
        slices
            .into_iter()
            .map(|s| Ok::<_, io::Error>(hyper::body::Frame::data(s))),
    );
    BodyExt::boxed_unsync(http_body_util::StreamBody::new(stream))
}

/// A body of received chunks, sent as they are (no copy): each one taken by the connection
/// is progress.
pub fn chunks(chunks: Vec<Bytes>) -> Body {
    let stream = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, io::Error>(hyper::body::Frame::data(c))),
    );
    BodyExt::boxed_unsync(http_body_util::StreamBody::new(stream))
}

/// A body streamed from an open file, in 256 KiB reads.
pub fn file_body(file: tokio::fs::File) -> Body {
    use futures_util::StreamExt;
    use tokio::io::AsyncReadExt;
    let stream = futures_util::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(hyper::body::Frame::data(Bytes::from(buf))), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    BodyExt::boxed_unsync(http_body_util::StreamBody::new(stream.boxed()))
}

impl StoreClient {
    /// A client whose connects take at most `connect_timeout` and whose requests fail after
    /// `read_timeout` without progress.
    pub fn new(
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Result<StoreClient, ClientError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(ClientError::Tls)?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // No idle pool: requests come from several Pingora runtimes, and a connection belongs
        // to the runtime that opened it.
        Ok(StoreClient {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(https),
            connect_timeout,
            read_timeout,
        })
    }

    /// Sends a request and reads its (bounded) answer, failing with
    /// [`ClientError::Timeout`] when nothing moves for `read_timeout`: no body slice taken
    /// by the connection, no answer. The connect has its own `connect_timeout` on top.
    async fn exchange(
        &self,
        req: http::request::Builder,
        body: Body,
    ) -> Result<(u16, HeaderMap, Bytes), ClientError> {
        let progress = Progress::new(self.connect_timeout);
        let body = {
            let p = progress.clone();
            body.map_frame(move |f| {
                p.touch();
                f
            })
            .boxed_unsync()
        };
        let limit = self.read_timeout;
        let sent = self.client.request(req.body(body)?);
        tokio::pin!(sent);
        let resp = loop {
            let left = limit.saturating_sub(progress.idle());
            tokio::select! {
                r = &mut sent => break r?,
                _ = tokio::time::sleep(left) => {
                    if progress.idle() >= limit {
                        return Err(ClientError::Timeout(limit));
                    }
                }
            }
        };
        let status = resp.status().as_u16();
        let head = resp.headers().clone();
        let answer =
            tokio::time::timeout(limit, Limited::new(resp.into_body(), MAX_ANSWER).collect())
                .await
                .map_err(|_| ClientError::Timeout(limit))?
                .map_err(|e| ClientError::Body(e.to_string()))?
                .to_bytes();
        Ok((status, head, answer))
    }

    /// Signs and sends one request; a non-2xx answer is an error with the store's code.
    async fn send(
        &self,
        b: Bucket<'_>,
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        body: Body,
        payload: Payload,
    ) -> Result<(HeaderMap, Bytes), ClientError> {
        let signed = sign_headers(
            &b.creds,
            b.target.region(),
            method.as_str(),
            &uri,
            &headers,
            payload,
            SystemTime::now(),
        )?;
        for (k, v) in signed {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                headers.insert(k, v);
            }
        }
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(h) = req.headers_mut() {
            *h = headers;
        }
        let (status, head, answer) = self.exchange(req, body).await?;
        if !(200..300).contains(&status) {
            let code = super::front::error_code(&answer).unwrap_or_else(|| "-".into());
            return Err(ClientError::Status { status, code });
        }
        Ok((head, answer))
    }

    fn object_uri(
        target: &S3Target,
        key: &str,
        query: &[(&str, &str)],
    ) -> Result<Uri, ClientError> {
        let base = target.object_uri(key)?;
        if query.is_empty() {
            return Ok(base);
        }
        format!("{base}?{}", query_string(query))
            .parse()
            .map_err(|_| ClientError::Sign(SignError::InvalidUri))
    }

    fn with_type(content_type: &str, length: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(content_type) {
            h.insert(http::header::CONTENT_TYPE, v);
        }
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
        h
    }

    /// A bucket request (`POST ?delete` for egress's DeleteObjects) with a body whose SHA-256
    /// is `sha256`, answered whatever the status: the caller relays it.
    pub async fn send_raw(
        &self,
        b: Bucket<'_>,
        method: Method,
        bucket_query: &str,
        mut headers: HeaderMap,
        body: Bytes,
        sha256: &str,
    ) -> Result<(u16, Option<String>, Bytes), ClientError> {
        let uri = b.target.bucket_uri(bucket_query)?;
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let signed = sign_headers(
            &b.creds,
            b.target.region(),
            method.as_str(),
            &uri,
            &headers,
            Payload::Sha256(sha256.to_string()),
            SystemTime::now(),
        )?;
        for (k, v) in signed {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                headers.insert(k, v);
            }
        }
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(h) = req.headers_mut() {
            *h = headers;
        }
        let (status, head, answer) = self.exchange(req, full(body)).await?;
        let ct = head
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok((status, ct, answer))
    }

    /// PutObject of exactly `length` bytes (atomic in the store: all or nothing).
    pub async fn put_object(
        &self,
        b: Bucket<'_>,
        key: &str,
        content_type: &str,
        length: u64,
        body: Body,
    ) -> Result<(), ClientError> {
        let uri = Self::object_uri(b.target, key, &[])?;
        let headers = Self::with_type(content_type, length);
        self.send(b, Method::PUT, uri, headers, body, Payload::Unsigned)
            .await
            .map(|_| ())
    }

    /// CreateMultipartUpload: the upload id. Nothing is visible under the key until complete.
    pub async fn create_multipart(
        &self,
        b: Bucket<'_>,
        key: &str,
        content_type: &str,
    ) -> Result<String, ClientError> {
        let uri = Self::object_uri(b.target, key, &[("uploads", "")])?;
        let mut headers = Self::with_type(content_type, 0);
        headers.remove(http::header::CONTENT_LENGTH);
        let (_, xml) = self
            .send(
                b,
                Method::POST,
                uri,
                headers,
                full(Bytes::new()),
                Payload::Empty,
            )
            .await?;
        let doc: InitiateMultipartUploadResult =
            quick_xml::de::from_str(&String::from_utf8_lossy(&xml))?;
        Ok(doc.upload_id)
    }

    /// UploadPart: the part's ETag.
    pub async fn upload_part(
        &self,
        b: Bucket<'_>,
        key: &str,
        upload_id: &str,
        number: u32,
        part: Vec<Bytes>,
    ) -> Result<String, ClientError> {
        let n = number.to_string();
        let uri = Self::object_uri(
            b.target,
            key,
            &[("partNumber", &n), ("uploadId", upload_id)],
        )?;
        let len: usize = part.iter().map(Bytes::len).sum();
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        let (head, _) = self
            .send(
                b,
                Method::PUT,
                uri,
                headers,
                chunks(part),
                Payload::Unsigned,
            )
            .await?;
        head.get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or(ClientError::Status {
                status: 200,
                code: "NoETag".into(),
            })
    }

    /// CompleteMultipartUpload: the object appears whole, at once.
    pub async fn complete_multipart(
        &self,
        b: Bucket<'_>,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<(), ClientError> {
        let uri = Self::object_uri(b.target, key, &[("uploadId", upload_id)])?;
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag) in parts {
            xml.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                xml_text(etag)
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let hash = sha256_hex(xml.as_bytes());
        let headers = Self::with_type("application/xml", xml.len() as u64);
        self.send(
            b,
            Method::POST,
            uri,
            headers,
            full(xml),
            Payload::Sha256(hash),
        )
        .await
        .map(|_| ())
    }

    /// AbortMultipartUpload: the parts are discarded.
    pub async fn abort_multipart(
        &self,
        b: Bucket<'_>,
        key: &str,
        upload_id: &str,
    ) -> Result<(), ClientError> {
        let uri = Self::object_uri(b.target, key, &[("uploadId", upload_id)])?;
        self.send(
            b,
            Method::DELETE,
            uri,
            HeaderMap::new(),
            full(Bytes::new()),
            Payload::Empty,
        )
        .await
        .map(|_| ())
    }

    /// DeleteObjects of up to 1,000 keys; returns the keys the store could not delete.
    pub async fn delete_objects(
        &self,
        b: Bucket<'_>,
        keys: &[String],
    ) -> Result<Vec<(String, String)>, ClientError> {
        let uri = b.target.bucket_uri("delete=")?;
        let mut xml = String::from("<Delete><Quiet>true</Quiet>");
        for k in keys {
            xml.push_str(&format!("<Object><Key>{}</Key></Object>", xml_text(k)));
        }
        xml.push_str("</Delete>");
        let hash = sha256_hex(xml.as_bytes());
        let md5 = {
            use base64::Engine;
            use s3s::crypto::Checksum;
            let mut h = s3s::crypto::Md5::new();
            h.update(xml.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(h.finalize())
        };
        let mut headers = Self::with_type("application/xml", xml.len() as u64);
        if let Ok(v) = HeaderValue::from_str(&md5) {
            headers.insert("content-md5", v);
        }
        let (_, answer) = self
            .send(
                b,
                Method::POST,
                uri,
                headers,
                full(xml),
                Payload::Sha256(hash),
            )
            .await?;
        if answer.is_empty() {
            return Ok(Vec::new());
        }
        let doc: DeleteResult = quick_xml::de::from_str(&String::from_utf8_lossy(&answer))?;
        Ok(doc.errors.into_iter().map(|e| (e.key, e.code)).collect())
    }

    /// One page of ListObjectsV2 under `prefix`.
    pub async fn list(
        &self,
        b: Bucket<'_>,
        prefix: &str,
        max_keys: u32,
        token: Option<&str>,
    ) -> Result<ListPage, ClientError> {
        let max = max_keys.to_string();
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if let Some(t) = token {
            pairs.push(("continuation-token", t));
        }
        pairs.push(("list-type", "2"));
        pairs.push(("max-keys", &max));
        pairs.push(("prefix", prefix));
        let uri = b.target.bucket_uri(&query_string(&pairs))?;
        let (_, xml) = self
            .send(
                b,
                Method::GET,
                uri,
                HeaderMap::new(),
                full(Bytes::new()),
                Payload::Empty,
            )
            .await?;
        let doc: ListBucketResult = quick_xml::de::from_str(&String::from_utf8_lossy(&xml))?;
        Ok(ListPage {
            objects: doc.contents,
            next_token: doc
                .next_continuation_token
                .filter(|t| doc.is_truncated && !t.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_results_parse() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>user_a/images/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated><Contents><Key>user_a/images/a.png</Key><LastModified>2026-12-01T10:00:00.000Z</LastModified><ETag>"x"</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass></Contents><Contents><Key>user_a/images/b&amp;c.png</Key><LastModified>2026-12-01T10:00:01.000Z</LastModified><Size>3</Size></Contents><NextContinuationToken>tok</NextContinuationToken></ListBucketResult>"#;
        let doc: ListBucketResult = quick_xml::de::from_str(xml).unwrap();
        assert_eq!(doc.contents.len(), 2);
        assert_eq!(doc.contents[1].key, "user_a/images/b&c.png");
        assert_eq!(doc.contents[0].size, 12);
        assert!(doc.is_truncated);
        assert_eq!(doc.next_continuation_token.as_deref(), Some("tok"));
        let empty: ListBucketResult = quick_xml::de::from_str(
            "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>",
        )
        .unwrap();
        assert!(empty.contents.is_empty());
    }

    #[test]
    fn multipart_and_delete_results_parse() {
        let x: InitiateMultipartUploadResult = quick_xml::de::from_str(
            "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><UploadId>up-1</UploadId></InitiateMultipartUploadResult>",
        )
        .unwrap();
        assert_eq!(x.upload_id, "up-1");
        let d: DeleteResult = quick_xml::de::from_str(
            "<DeleteResult><Error><Key>a</Key><Code>AccessDenied</Code><Message>m</Message></Error></DeleteResult>",
        )
        .unwrap();
        assert_eq!(d.errors[0].code, "AccessDenied");
        assert_eq!(xml_text("a<b&c"), "a&lt;b&amp;c");
    }
}
