//! The S3 front door's request shaping: the bucket backend (credentials, resolved endpoint),
//! which client headers may reach the store, the ListObjectsV2 query forced into the caller's
//! prefix, presign requests, and how store errors become Portier answers. The proxy calls
//! these from its phases; nothing here touches a connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::S3Config;
use super::{query_string, Credentials, SignError};
use crate::error::Reason;

#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    #[error("S3 credentials: {0}")]
    Credentials(SignError),
    #[error("S3 endpoint {0} does not resolve: {1}")]
    Resolve(String, String),
    #[error("bad list parameter {0}")]
    ListParam(&'static str),
    #[error("store client: {0}")]
    Client(super::client::ClientError),
}

/// How long a resolved endpoint address is reused before resolving again (S3 rotates IPs).
const RESOLVE_TTL: Duration = Duration::from_secs(60);

/// The bucket Portier signs for: the only holder of the AWS credentials.
pub struct S3Backend {
    pub config: S3Config,
    /// The AWS credentials, refreshed in the background; shared with the backend a reload
    /// replaces when the credential settings did not change.
    pub creds: Arc<super::CredentialCache>,
    /// For the requests Portier makes itself (the file API).
    pub client: super::client::StoreClient,
    host: String,
    port: u16,
    pub tls: bool,
    resolved: Mutex<(Instant, Vec<SocketAddr>)>,
}

impl S3Backend {
    /// A backend with a credential cache of its own (empty until its first fetch, except
    /// static keys).
    pub fn new(config: &S3Config) -> Result<S3Backend, FrontError> {
        let creds = super::CredentialCache::new(config.credentials.clone(), config.target.region())
            .map_err(FrontError::Credentials)?;
        Self::with_credentials(config, Arc::new(creds))
    }

    /// A backend for `config` that keeps `creds`: a reload that changes `[s3]` but not its
    /// credential source or region keeps serving with the credentials already loaded.
    pub fn with_credentials(
        config: &S3Config,
        creds: Arc<super::CredentialCache>,
    ) -> Result<S3Backend, FrontError> {
        let ep = config.target.endpoint();
        let tls = ep.scheme_str() == Some("https");
        let port = ep.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = config.target.host();
        // Virtual-hosted names resolve like the endpoint; connect to the name signed for.
        let connect_host = host
            .rsplit_once(':')
            .map_or(host.as_str(), |(h, _)| h)
            .to_string();
        let addrs: Vec<SocketAddr> =
            std::net::ToSocketAddrs::to_socket_addrs(&(connect_host.as_str(), port))
                .map_err(|e| FrontError::Resolve(connect_host.clone(), e.to_string()))?
                .collect();
        Ok(S3Backend {
            config: config.clone(),
            creds,
            client: super::client::StoreClient::new(config.connect_timeout, config.read_timeout)
                .map_err(FrontError::Client)?,
            host: connect_host,
            port,
            tls,
            resolved: Mutex::new((Instant::now(), addrs)),
        })
    }

    /// The credentials to sign with now, or 503 `s3_credentials_unavailable`.
    pub fn credentials(&self) -> Result<std::sync::Arc<Credentials>, Reason> {
        self.creds.current().ok_or(Reason::S3CredentialsUnavailable)
    }

    /// The bucket and the credentials that sign for it now, for the store client.
    pub fn bucket(&self) -> Result<super::client::Bucket<'_>, Reason> {
        Ok(super::client::Bucket {
            creds: self.credentials()?,
            target: &self.config.target,
        })
    }

    /// The name TLS verifies and SNI carries.
    pub fn sni(&self) -> &str {
        &self.host
    }

    /// An address of the endpoint, re-resolved once the cached answer is older than a minute.
    pub async fn peer_addr(&self) -> Option<SocketAddr> {
        let (fresh, first) = match self.resolved.lock() {
            Ok(g) => (g.0.elapsed() < RESOLVE_TTL, g.1.first().copied()),
            Err(_) => (false, None),
        };
        if fresh && first.is_some() {
            return first;
        }
        match tokio::net::lookup_host((self.host.as_str(), self.port)).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                if let Ok(mut g) = self.resolved.lock() {
                    if !addrs.is_empty() {
                        *g = (Instant::now(), addrs.clone());
                    }
                }
                addrs.first().copied().or(first)
            }
            // Keep the last answer through a resolver outage.
            Err(e) => {
                log::warn!("S3 endpoint {} does not resolve now: {e}", self.host);
                first
            }
        }
    }
}

/// Client headers that may reach the store. Everything else (Authorization, cookies, every
/// other `x-amz-*` such as `x-amz-security-token`/`x-amz-content-sha256`/`x-amz-copy-source`,
/// identity headers) is dropped before signing.
pub fn keep_client_header(name: &str) -> bool {
    matches!(
        name,
        "content-type"
            | "content-length"
            | "content-md5"
            | "content-disposition"
            | "content-language"
            | "cache-control"
            | "expires"
            | "range"
            | "if-match"
            | "if-none-match"
            | "if-modified-since"
            | "if-unmodified-since"
            // The store answers it (100 Continue) when Portier did not read the body first.
            | "expect"
    ) || name.starts_with("x-amz-meta-")
}

/// Decodes one query value (percent-escapes; `+` is a space).
pub fn decode_query_value(s: &str) -> Option<String> {
    form_decode(s)
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The ListObjectsV2 query for a caller: `prefix` is forced inside `<user_id>/`, `start-after`
/// too; `continuation-token` passes (S3 still filters by the forced prefix); `max-keys` is
/// capped at 1000; `delimiter` may only be `/`. Unknown parameters are refused.
pub fn list_query(user_id: &str, client_query: Option<&str>) -> Result<String, FrontError> {
    let scope = format!("{user_id}/");
    let mut prefix = scope.clone();
    let mut start_after = None;
    let mut token = None;
    let mut max_keys = None;
    let mut delimiter = None;
    for pair in client_query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = form_decode(v).ok_or(FrontError::ListParam("encoding"))?;
        if v.chars().any(char::is_control) {
            return Err(FrontError::ListParam("control character"));
        }
        match k {
            // A client prefix is relative to its own folder; an absolute one must be inside it.
            "prefix" => {
                prefix = if v.starts_with(&scope) {
                    v
                } else {
                    format!("{scope}{v}")
                }
            }
            "start-after" => {
                start_after = Some(if v.starts_with(&scope) {
                    v
                } else {
                    format!("{scope}{v}")
                })
            }
            "continuation-token" => token = Some(v),
            "max-keys" => {
                let n: u32 = v.parse().map_err(|_| FrontError::ListParam("max-keys"))?;
                max_keys = Some(n.clamp(1, 1000).to_string());
            }
            "delimiter" if v == "/" => delimiter = Some(v),
            "delimiter" => return Err(FrontError::ListParam("delimiter")),
            "list-type" if v == "2" => {}
            _ => return Err(FrontError::ListParam("unknown")),
        }
    }
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if let Some(t) = &token {
        pairs.push(("continuation-token", t));
    }
    if let Some(d) = &delimiter {
        pairs.push(("delimiter", d));
    }
    pairs.push(("list-type", "2"));
    if let Some(m) = &max_keys {
        pairs.push(("max-keys", m));
    }
    pairs.push(("prefix", &prefix));
    if let Some(s) = &start_after {
        pairs.push(("start-after", s));
    }
    Ok(query_string(&pairs))
}

/// What a store error status becomes for the client. `None` passes the answer through
/// (successes, 304, 412, 416, whose meaning the client needs).
pub fn map_store_status(status: u16) -> Option<Reason> {
    match status {
        100..=399 | 412 | 416 => None,
        404 => Some(Reason::NotFound),
        401 | 403 => Some(Reason::UpstreamAuthFailed),
        411 => Some(Reason::LengthRequired),
        413 => Some(Reason::BodyTooLarge),
        _ => Some(Reason::UpstreamUnavailable),
    }
}

/// The `<Code>` of an S3 XML error document, for the log (never sent to the client).
pub fn error_code(xml: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(xml).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let end = text[start..].find("</Code>")? + start;
    let code = &text[start..end];
    (code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'))
        .then(|| code.to_string())
}

/// Body of `POST .../presigned-url`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresignRequest {
    /// The object key (`s3_key` in the file API's shape).
    #[serde(alias = "s3_key")]
    pub key: String,
    #[serde(default = "default_presign_method")]
    pub method: PresignMethod,
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// For `PUT`: the media type the upload will have (signed into the URL).
    #[serde(default)]
    pub content_type: Option<String>,
    /// For `PUT`: the exact length of the upload (signed into the URL).
    #[serde(default)]
    pub content_length: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PresignMethod {
    Get,
    Put,
}

impl PresignMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            PresignMethod::Get => "GET",
            PresignMethod::Put => "PUT",
        }
    }
}

fn default_presign_method() -> PresignMethod {
    PresignMethod::Get
}

/// The path of `key` under an object route whose pattern is `<static prefix>/{key..}`.
pub fn object_path(pattern: &str, key: &str) -> Option<String> {
    let (prefix, _) = pattern.rsplit_once("/{")?;
    Some(format!("{prefix}/{}", super::encode_key_for_path(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_stay_in_the_callers_prefix() {
        let q = list_query("user_a", None).unwrap();
        assert_eq!(q, "list-type=2&prefix=user_a%2F");
        let q = list_query(
            "user_a",
            Some("prefix=images%2F&max-keys=5000&start-after=images%2Fa.png"),
        )
        .unwrap();
        assert_eq!(q, "list-type=2&max-keys=1000&prefix=user_a%2Fimages%2F&start-after=user_a%2Fimages%2Fa.png");
        // Another user's prefix is nested inside the caller's, never used as is.
        let q = list_query("user_a", Some("prefix=user_b%2F")).unwrap();
        assert!(q.contains("prefix=user_a%2Fuser_b%2F"), "{q}");
        assert!(list_query("user_a", Some("delimiter=x")).is_err());
        assert!(list_query("user_a", Some("acl")).is_err());
        assert!(list_query("user_a", Some("prefix=%0a")).is_err());
    }

    #[test]
    fn client_headers_allow_list() {
        for h in [
            "content-type",
            "content-length",
            "range",
            "x-amz-meta-title",
            "if-none-match",
        ] {
            assert!(keep_client_header(h), "{h}");
        }
        for h in [
            "authorization",
            "cookie",
            "x-amz-security-token",
            "x-amz-content-sha256",
            "x-amz-copy-source",
            "x-amz-date",
            "x-portier-user-id",
            "transfer-encoding",
            "host",
        ] {
            assert!(!keep_client_header(h), "{h}");
        }
    }

    #[test]
    fn store_errors() {
        assert_eq!(map_store_status(200), None);
        assert_eq!(map_store_status(206), None);
        assert_eq!(map_store_status(404), Some(Reason::NotFound));
        assert_eq!(map_store_status(403), Some(Reason::UpstreamAuthFailed));
        assert_eq!(map_store_status(500), Some(Reason::UpstreamUnavailable));
        let xml = b"<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>x</Message></Error>";
        assert_eq!(error_code(xml).as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(error_code(b"<Code>a b</Code>"), None);
    }

    #[test]
    fn object_paths() {
        assert_eq!(
            object_path("/api/files/{key..}", "user_a/images/a b.png").as_deref(),
            Some("/api/files/user_a/images/a%20b.png")
        );
    }
}
