//! SigV4 for the S3 upstream: where the bucket is ([`S3Target`]), the one set of AWS
//! credentials Portier holds ([`Credentials`]), header signing for proxied requests
//! ([`sign_headers`]) and presigned URLs ([`presign`]). Signing uses `aws-sigv4` with the
//! settings S3 needs (single percent-encoding, no path normalisation, `x-amz-content-sha256`):
//! the path signed is exactly the encoded key that is sent.
//!
//! Secrets never leave this module in text form except inside the `Authorization` header or
//! the presigned URL: `Debug` redacts them and no error message carries one.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
    SignatureLocation, SigningSettings, UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use http::header::{HeaderName, HOST};
use http::{HeaderMap, Uri};
use thiserror::Error;

use super::key::{encode_key_for_path, encode_query_component};

/// The longest validity SigV4 allows for a presigned URL (7 days).
pub const MAX_PRESIGN_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a request could not be signed or a target not built. No variant carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignError {
    #[error("S3 endpoint is invalid: {0}")]
    InvalidEndpoint(&'static str),
    #[error("S3 bucket name is invalid: {0}")]
    InvalidBucket(&'static str),
    #[error("S3 region is invalid")]
    InvalidRegion,
    #[error("environment variable {0} is not set or empty")]
    MissingEnv(String),
    #[error("credential from {0} has characters that cannot be sent in a header")]
    InvalidCredential(String),
    #[error("HTTP method is invalid")]
    InvalidMethod,
    #[error("header {0} has a value that is not visible ASCII")]
    InvalidHeaderValue(String),
    #[error("request has neither an absolute URI nor a Host header")]
    NoHost,
    #[error("payload hash must be 64 lower-case hex digits")]
    InvalidPayloadHash,
    #[error("presign expiry must be between 1 s and 7 days")]
    InvalidExpiry,
    #[error("object key is empty")]
    EmptyKey,
    #[error("built S3 URI is invalid")]
    InvalidUri,
    #[error("signing failed: {0}")]
    Signing(String),
}

/// How the bucket appears in S3 URLs. Virtual-hosted is what AWS recommends; path-style is
/// what most S3-compatible stores (and the embedded one) expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// `https://endpoint/bucket/key`
    Path,
    /// `https://bucket.endpoint/key`
    VirtualHosted,
}

/// The S3 bucket Portier talks to. Built with [`S3Target::new`], which validates every part so
/// that URIs built from it are always well formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Target {
    endpoint: Uri,
    region: String,
    bucket: String,
    addressing: Addressing,
}

fn is_default_port(scheme: Option<&str>, port: Option<u16>) -> bool {
    matches!(
        (scheme, port),
        (Some("http"), Some(80)) | (Some("https"), Some(443))
    )
}

/// The Host header value for a URI's authority, as aws-sigv4 and hyper both compute it: the
/// port is dropped when it is the scheme's default.
fn host_of(uri: &Uri) -> Option<String> {
    let host = uri.host()?;
    match uri.port_u16() {
        Some(port) if !is_default_port(uri.scheme_str(), Some(port)) => {
            Some(format!("{host}:{port}"))
        }
        _ => Some(host.to_owned()),
    }
}

/// S3 bucket naming rules (3-63 characters of `a-z0-9.-`, starting and ending alphanumeric,
/// no `..`). Also used by the embedded store, where the name becomes a directory.
pub(crate) fn check_bucket_name(bucket: &str) -> Result<(), SignError> {
    if !(3..=63).contains(&bucket.len()) {
        return Err(SignError::InvalidBucket("must be 3 to 63 characters"));
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err(SignError::InvalidBucket("only a-z, 0-9, '.', '-' allowed"));
    }
    let bytes = bucket.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) || bucket.contains("..") {
        return Err(SignError::InvalidBucket(
            "must start and end alphanumeric, no '..'",
        ));
    }
    Ok(())
}

impl S3Target {
    /// `endpoint` is `scheme://host[:port]` (for AWS `https://s3.<region>.amazonaws.com`),
    /// with no path, query or user info.
    pub fn new(
        endpoint: &str,
        region: &str,
        bucket: &str,
        addressing: Addressing,
    ) -> Result<Self, SignError> {
        let endpoint: Uri = endpoint
            .parse()
            .map_err(|_| SignError::InvalidEndpoint("not a URI"))?;
        if !matches!(endpoint.scheme_str(), Some("http") | Some("https")) {
            return Err(SignError::InvalidEndpoint("scheme must be http or https"));
        }
        let authority = endpoint
            .authority()
            .ok_or(SignError::InvalidEndpoint("no host"))?;
        if authority.as_str().contains('@') {
            return Err(SignError::InvalidEndpoint("user info is not allowed"));
        }
        if !matches!(endpoint.path(), "" | "/") || endpoint.query().is_some() {
            return Err(SignError::InvalidEndpoint("path or query is not allowed"));
        }
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(SignError::InvalidRegion);
        }
        check_bucket_name(bucket)?;
        if addressing == Addressing::VirtualHosted {
            let host = authority.host();
            if host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
                return Err(SignError::InvalidEndpoint(
                    "virtual-hosted addressing needs a DNS name, not an IP address",
                ));
            }
            // A dotted bucket name does not match the `*.endpoint` TLS certificate.
            if bucket.contains('.') && endpoint.scheme_str() == Some("https") {
                return Err(SignError::InvalidBucket(
                    "a bucket with '.' cannot be virtual-hosted over https",
                ));
            }
        }
        Ok(Self {
            endpoint,
            region: region.to_owned(),
            bucket: bucket.to_owned(),
            addressing,
        })
    }

    pub fn endpoint(&self) -> &Uri {
        &self.endpoint
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn addressing(&self) -> Addressing {
        self.addressing
    }

    /// The Host header to send and sign (`bucket.host` when virtual-hosted; the port only
    /// when it is not the scheme's default).
    pub fn host(&self) -> String {
        let base = host_of(&self.endpoint).unwrap_or_default();
        match self.addressing {
            Addressing::Path => base,
            Addressing::VirtualHosted => format!("{}.{base}", self.bucket),
        }
    }

    fn base_url(&self) -> String {
        let scheme = self.endpoint.scheme_str().unwrap_or("https");
        match self.addressing {
            Addressing::Path => format!("{scheme}://{}/{}", self.host(), self.bucket),
            Addressing::VirtualHosted => format!("{scheme}://{}", self.host()),
        }
    }

    /// The absolute URI of an object; `key` is the decoded key (from `canonical_key`), encoded
    /// here with [`encode_key_for_path`].
    pub fn object_uri(&self, key: &str) -> Result<Uri, SignError> {
        format!("{}/{}", self.base_url(), encode_key_for_path(key))
            .parse()
            .map_err(|_| SignError::InvalidUri)
    }

    /// The absolute URI of the bucket with a query string (for ListObjectsV2, e.g.
    /// `list-type=2&prefix=user_a%2F`). `query` must already be encoded, each name and value
    /// with [`encode_query_component`] (or use [`query_string`]); empty means none.
    pub fn bucket_uri(&self, query: &str) -> Result<Uri, SignError> {
        let base = match self.addressing {
            Addressing::Path => self.base_url(),
            Addressing::VirtualHosted => format!("{}/", self.base_url()),
        };
        let uri = if query.is_empty() {
            base
        } else {
            format!("{base}?{query}")
        };
        uri.parse().map_err(|_| SignError::InvalidUri)
    }
}

/// Builds a query string with every name and value SigV4-encoded, in the given order.
pub fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (name, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&encode_query_component(name));
        out.push('=');
        out.push_str(&encode_query_component(value));
    }
    out
}

/// Which environment variables hold the credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvNames {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

impl Default for EnvNames {
    fn default() -> Self {
        Self {
            access_key_id: "AWS_ACCESS_KEY_ID".to_owned(),
            secret_access_key: "AWS_SECRET_ACCESS_KEY".to_owned(),
            session_token: "AWS_SESSION_TOKEN".to_owned(),
        }
    }
}

/// The AWS credentials Portier signs with. Held in aws-credential-types' zeroizing storage;
/// `Debug` shows the access key id only.
#[derive(Clone)]
pub struct Credentials {
    inner: aws_credential_types::Credentials,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.inner.access_key_id())
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.inner.session_token().map(|_| "<redacted>"),
            )
            .finish()
    }
}

fn visible_ascii(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

impl Credentials {
    /// Errors name the source (`names`), never the value.
    fn checked(
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
        names: &EnvNames,
    ) -> Result<Self, SignError> {
        // `/` would break the credential scope `AK/date/region/s3/aws4_request`.
        if !visible_ascii(&access_key_id) || access_key_id.contains('/') {
            return Err(SignError::InvalidCredential(names.access_key_id.clone()));
        }
        if !visible_ascii(&secret_access_key) {
            return Err(SignError::InvalidCredential(
                names.secret_access_key.clone(),
            ));
        }
        if session_token.as_deref().is_some_and(|t| !visible_ascii(t)) {
            return Err(SignError::InvalidCredential(names.session_token.clone()));
        }
        Ok(Self {
            inner: aws_credential_types::Credentials::new(
                access_key_id,
                secret_access_key,
                session_token,
                None,
                "portier",
            ),
        })
    }

    /// Credentials given directly (tests, the embedded store's generated keys).
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Result<Self, SignError> {
        let names = EnvNames {
            access_key_id: "access_key_id".to_owned(),
            secret_access_key: "secret_access_key".to_owned(),
            session_token: "session_token".to_owned(),
        };
        Self::checked(
            access_key_id.into(),
            secret_access_key.into(),
            session_token,
            &names,
        )
    }

    /// Reads the credentials from the named environment variables. The access key and secret
    /// are required; the session token is used when its variable is set and non-empty.
    pub fn from_env(names: &EnvNames) -> Result<Self, SignError> {
        let required = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| SignError::MissingEnv(name.to_owned()))
        };
        let access_key_id = required(&names.access_key_id)?;
        let secret_access_key = required(&names.secret_access_key)?;
        let session_token = std::env::var(&names.session_token)
            .ok()
            .filter(|v| !v.is_empty());
        Self::checked(access_key_id, secret_access_key, session_token, names)
    }

    pub fn access_key_id(&self) -> &str {
        self.inner.access_key_id()
    }

    pub fn has_session_token(&self) -> bool {
        self.inner.session_token().is_some()
    }

    /// When these credentials stop working (temporary credentials); `None` for static keys.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.inner.expiry()
    }

    /// Credentials a provider of the AWS credential chain returned, checked like any other.
    pub fn from_provided(c: aws_credential_types::Credentials) -> Result<Self, SignError> {
        let names = EnvNames {
            access_key_id: "the provider's access key id".to_owned(),
            secret_access_key: "the provider's secret".to_owned(),
            session_token: "the provider's session token".to_owned(),
        };
        let ok = |s: &str| visible_ascii(s);
        if !ok(c.access_key_id()) || c.access_key_id().contains('/') {
            return Err(SignError::InvalidCredential(names.access_key_id));
        }
        if !ok(c.secret_access_key()) {
            return Err(SignError::InvalidCredential(names.secret_access_key));
        }
        if c.session_token().is_some_and(|t| !ok(t)) {
            return Err(SignError::InvalidCredential(names.session_token));
        }
        Ok(Self { inner: c })
    }
}

/// What the signature says about the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// `UNSIGNED-PAYLOAD`: the body is streamed and not hashed. Integrity then rests on TLS to
    /// the store (and `Content-Length`, which is signed when given).
    Unsigned,
    /// No body (GET, HEAD, DELETE, list): the SHA-256 of the empty string.
    Empty,
    /// The hex SHA-256 of a body that was hashed before sending.
    Sha256(String),
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`: an aws-chunked body with a trailing checksum,
    /// forwarded as it came (no chunk depends on the request's signature).
    StreamingUnsignedTrailer,
}

/// Whether an inbound header is included in the signature when passed to [`sign_headers`]:
/// `host`, `content-type`, `content-length`, `content-md5`, `range`, the conditional headers
/// (`if-match`, `if-none-match`, `if-modified-since`, `if-unmodified-since`) and `x-amz-*`
/// except the three the signer sets itself (`x-amz-date`, `x-amz-content-sha256`,
/// `x-amz-security-token`), whose inbound copies are ignored. Other headers are not signed;
/// the caller decides whether they are forwarded at all.
pub fn is_signed_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    match name {
        "host"
        | "content-type"
        | "content-length"
        | "content-md5"
        | "range"
        | "if-match"
        | "if-none-match"
        | "if-modified-since"
        | "if-unmodified-since" => true,
        "x-amz-date" | "x-amz-content-sha256" | "x-amz-security-token" => false,
        _ => name.starts_with("x-amz-"),
    }
}

fn s3_settings() -> SigningSettings {
    let mut settings = SigningSettings::default();
    // The path is sent already encoded once (`encode_key_for_path`); S3 signs it as sent.
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    // S3 keys may contain what looks like `.`/`..`/`//`; never rewrite the signed path.
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings
}

fn check_method(method: &str) -> Result<(), SignError> {
    http::Method::from_bytes(method.as_bytes())
        .map(|_| ())
        .map_err(|_| SignError::InvalidMethod)
}

fn signing_error(e: impl fmt::Display) -> SignError {
    SignError::Signing(e.to_string())
}

/// Signs a request to the store with an `Authorization` header and returns the headers to set
/// on it, replacing any of the same name: `host`, `x-amz-date`, `x-amz-content-sha256`,
/// `x-amz-security-token` (with a session token) and `authorization`.
///
/// `uri` is absolute (from [`S3Target::object_uri`] / [`S3Target::bucket_uri`]) or a path
/// with a `host` in `headers`; its path must be the encoded form that is sent. Only the
/// headers of `headers` accepted by [`is_signed_header`] are signed, so each of those must be
/// sent with exactly the value given here.
pub fn sign_headers(
    creds: &Credentials,
    region: &str,
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    payload: Payload,
    now: SystemTime,
) -> Result<Vec<(String, String)>, SignError> {
    check_method(method)?;
    // Take the host from the URI when it has one, so the signature is for where the request
    // goes, not for whatever Host header came in.
    let host = match host_of(uri) {
        Some(host) => host,
        None => headers
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(SignError::NoHost)?,
    };
    let mut signed: Vec<(&str, &str)> = vec![("host", host.as_str())];
    for (name, value) in headers {
        if name == HOST || !is_signed_header(name) {
            continue;
        }
        let value = value
            .to_str()
            .map_err(|_| SignError::InvalidHeaderValue(name.as_str().to_owned()))?;
        signed.push((name.as_str(), value));
    }
    let body = match payload {
        Payload::Unsigned => SignableBody::UnsignedPayload,
        Payload::StreamingUnsignedTrailer => SignableBody::StreamingUnsignedPayloadTrailer,
        Payload::Empty => SignableBody::empty(),
        Payload::Sha256(hex) => {
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(SignError::InvalidPayloadHash);
            }
            SignableBody::Precomputed(hex)
        }
    };
    let mut settings = s3_settings();
    // Stores require `x-amz-content-sha256` on header-signed requests.
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let identity = creds.inner.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("s3")
        .time(now)
        .settings(settings)
        .build()
        .map_err(signing_error)?
        .into();
    let request = SignableRequest::new(
        method,
        Cow::Owned(uri.to_string()),
        signed.into_iter(),
        body,
    )
    .map_err(signing_error)?;
    let (instructions, _signature) = sign(request, &params).map_err(signing_error)?.into_parts();
    let mut out = vec![("host".to_owned(), host.clone())];
    out.extend(
        instructions
            .headers()
            .map(|(name, value)| (name.to_owned(), value.to_owned())),
    );
    Ok(out)
}

/// A presigned URL for `method` on the object `key` (decoded), valid for `expires` from `now`.
/// Only `host` is signed and the payload is `UNSIGNED-PAYLOAD`, as S3 presigned URLs are; the
/// holder of the URL can use it until it expires, so the caller must have decided ownership.
pub fn presign(
    creds: &Credentials,
    target: &S3Target,
    method: &str,
    key: &str,
    expires: Duration,
    now: SystemTime,
) -> Result<String, SignError> {
    presign_with(
        creds,
        target,
        method,
        key,
        expires,
        now,
        &PresignExtras::default(),
    )
}

/// What a presigned URL binds besides method, key and expiry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresignExtras {
    /// Request headers signed into the URL: the store refuses a request without exactly
    /// these values (`content-type`, `content-length` of a direct upload).
    pub headers: Vec<(String, String)>,
    /// Query parameters signed into the URL (`response-content-disposition` of a download).
    pub query: Vec<(String, String)>,
}

/// [`presign`] with signed headers and query parameters.
pub fn presign_with(
    creds: &Credentials,
    target: &S3Target,
    method: &str,
    key: &str,
    expires: Duration,
    now: SystemTime,
    extras: &PresignExtras,
) -> Result<String, SignError> {
    check_method(method)?;
    if key.is_empty() {
        return Err(SignError::EmptyKey);
    }
    if expires < Duration::from_secs(1) || expires > MAX_PRESIGN_EXPIRY {
        return Err(SignError::InvalidExpiry);
    }
    let uri = target.object_uri(key)?;
    let host = target.host();
    let mut settings = s3_settings();
    settings.signature_location = SignatureLocation::QueryParams;
    // X-Amz-Expires is whole seconds.
    settings.expires_in = Some(Duration::from_secs(expires.as_secs()));
    let identity = creds.inner.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(target.region())
        .name("s3")
        .time(now)
        .settings(settings)
        .build()
        .map_err(signing_error)?
        .into();
    let base = uri.to_string();
    let extra_query: Vec<(&str, &str)> = extras
        .query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let url = if extra_query.is_empty() {
        base.clone()
    } else {
        format!("{base}?{}", query_string(&extra_query))
    };
    let headers = std::iter::once(("host", host.as_str()))
        .chain(extras.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let request = SignableRequest::new(
        method,
        Cow::Borrowed(url.as_str()),
        headers,
        SignableBody::UnsignedPayload,
    )
    .map_err(signing_error)?;
    let (instructions, _signature) = sign(request, &params).map_err(signing_error)?.into_parts();
    let mut query = extra_query;
    query.extend(
        instructions
            .params()
            .iter()
            .map(|(name, value)| (*name, value.as_ref())),
    );
    Ok(format!("{base}?{}", query_string(&query)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(token: Option<&str>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            token.map(str::to_owned),
        )
        .unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn header<'a>(out: &'a [(String, String)], name: &str) -> Option<&'a str> {
        out.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn target_builds_path_and_virtual_hosted_uris() {
        let path = S3Target::new(
            "http://127.0.0.1:9000",
            "us-east-1",
            "media",
            Addressing::Path,
        )
        .unwrap();
        assert_eq!(path.host(), "127.0.0.1:9000");
        assert_eq!(
            path.object_uri("user_a/my photo.png").unwrap().to_string(),
            "http://127.0.0.1:9000/media/user_a/my%20photo.png"
        );
        assert_eq!(
            path.bucket_uri(&query_string(&[("list-type", "2"), ("prefix", "user_a/")]))
                .unwrap()
                .to_string(),
            "http://127.0.0.1:9000/media?list-type=2&prefix=user_a%2F"
        );
        let vh = S3Target::new(
            "https://s3.eu-west-1.amazonaws.com:443",
            "eu-west-1",
            "media",
            Addressing::VirtualHosted,
        )
        .unwrap();
        assert_eq!(vh.host(), "media.s3.eu-west-1.amazonaws.com");
        assert_eq!(
            vh.object_uri("user_a/x").unwrap().to_string(),
            "https://media.s3.eu-west-1.amazonaws.com/user_a/x"
        );
        assert_eq!(
            vh.bucket_uri("").unwrap().to_string(),
            "https://media.s3.eu-west-1.amazonaws.com/"
        );
    }

    #[test]
    fn bad_targets_are_refused() {
        let bad = [
            ("ftp://h", "us-east-1", "media", Addressing::Path),
            ("http://h/prefix", "us-east-1", "media", Addressing::Path),
            ("http://u:p@h", "us-east-1", "media", Addressing::Path),
            ("http://h?x=1", "us-east-1", "media", Addressing::Path),
            ("/just/a/path", "us-east-1", "media", Addressing::Path),
            ("http://h", "US EAST", "media", Addressing::Path),
            ("http://h", "us-east-1", "Media", Addressing::Path),
            ("http://h", "us-east-1", "me", Addressing::Path),
            ("http://h", "us-east-1", "../etc", Addressing::Path),
            ("http://h", "us-east-1", "a..b", Addressing::Path),
            (
                "http://127.0.0.1",
                "us-east-1",
                "media",
                Addressing::VirtualHosted,
            ),
            (
                "https://h",
                "us-east-1",
                "my.media",
                Addressing::VirtualHosted,
            ),
        ];
        for (endpoint, region, bucket, addressing) in bad {
            assert!(
                S3Target::new(endpoint, region, bucket, addressing).is_err(),
                "{endpoint} {region} {bucket}"
            );
        }
    }

    #[test]
    fn debug_redacts_secret_and_token() {
        let shown = format!("{:?}", creds(Some("SESSIONTOKENVALUE")));
        assert!(shown.contains("AKIDEXAMPLE"));
        assert!(!shown.contains("wJalrXUtnFEMI"));
        assert!(!shown.contains("SESSIONTOKENVALUE"));
    }

    #[test]
    fn from_env_reads_named_variables_and_names_only_the_variable() {
        // Unique names: tests run in parallel and share the process environment.
        let names = EnvNames {
            access_key_id: "PORTIER_TEST_S3_SIGN_AK".to_owned(),
            secret_access_key: "PORTIER_TEST_S3_SIGN_SK".to_owned(),
            session_token: "PORTIER_TEST_S3_SIGN_TOKEN".to_owned(),
        };
        assert_eq!(
            Credentials::from_env(&names).unwrap_err(),
            SignError::MissingEnv("PORTIER_TEST_S3_SIGN_AK".to_owned())
        );
        std::env::set_var(&names.access_key_id, "AKIDENV");
        std::env::set_var(&names.secret_access_key, "secret with space");
        let err = Credentials::from_env(&names).unwrap_err();
        assert!(!err.to_string().contains("secret with space"));
        std::env::set_var(&names.secret_access_key, "SECRETFROMENV");
        let c = Credentials::from_env(&names).unwrap();
        assert_eq!(c.access_key_id(), "AKIDENV");
        assert!(!c.has_session_token());
        std::env::set_var(&names.session_token, "TOKENFROMENV");
        assert!(Credentials::from_env(&names).unwrap().has_session_token());
    }

    #[test]
    fn header_signature_covers_the_allowed_headers_only() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "image/png".parse().unwrap());
        headers.insert("content-length", "5".parse().unwrap());
        headers.insert("x-amz-meta-origin", "upload".parse().unwrap());
        headers.insert("authorization", "AWS4-HMAC-SHA256 inbound".parse().unwrap());
        headers.insert("x-amz-content-sha256", "inbound".parse().unwrap());
        headers.insert("x-amz-security-token", "inbound".parse().unwrap());
        headers.insert("cookie", "session=1".parse().unwrap());
        headers.insert("host", "evil.example".parse().unwrap());
        let uri: Uri = "http://127.0.0.1:9000/media/user_a/x".parse().unwrap();
        let out = sign_headers(
            &creds(None),
            "us-east-1",
            "PUT",
            &uri,
            &headers,
            Payload::Unsigned,
            at(1_700_000_000),
        )
        .unwrap();
        assert_eq!(header(&out, "host"), Some("127.0.0.1:9000"));
        assert_eq!(
            header(&out, "x-amz-content-sha256"),
            Some("UNSIGNED-PAYLOAD")
        );
        assert_eq!(header(&out, "x-amz-date"), Some("20231114T221320Z"));
        assert_eq!(header(&out, "x-amz-security-token"), None);
        let auth = header(&out, "authorization").unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/s3/aws4_request, \
             SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date;\
             x-amz-meta-origin, Signature="
            ),
            "{auth}"
        );
        // Deterministic for a fixed time: the same inputs give the same signature.
        let again = sign_headers(
            &creds(None),
            "us-east-1",
            "PUT",
            &uri,
            &headers,
            Payload::Unsigned,
            at(1_700_000_000),
        )
        .unwrap();
        assert_eq!(out, again);
    }

    #[test]
    fn session_token_is_sent_and_signed() {
        let uri: Uri = "/media/user_a/x".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "store.internal:9000".parse().unwrap());
        let out = sign_headers(
            &creds(Some("TOKEN")),
            "us-east-1",
            "GET",
            &uri,
            &headers,
            Payload::Empty,
            at(1_700_000_000),
        )
        .unwrap();
        assert_eq!(header(&out, "host"), Some("store.internal:9000"));
        assert_eq!(header(&out, "x-amz-security-token"), Some("TOKEN"));
        assert_eq!(
            header(&out, "x-amz-content-sha256"),
            Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert!(header(&out, "authorization")
            .unwrap()
            .contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"));
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let c = creds(None);
        let path_only: Uri = "/media/x".parse().unwrap();
        let none = HeaderMap::new();
        let t = at(1_700_000_000);
        assert_eq!(
            sign_headers(&c, "us-east-1", "GET", &path_only, &none, Payload::Empty, t),
            Err(SignError::NoHost)
        );
        let uri: Uri = "http://h/media/x".parse().unwrap();
        assert_eq!(
            sign_headers(&c, "us-east-1", "G ET", &uri, &none, Payload::Empty, t),
            Err(SignError::InvalidMethod)
        );
        assert_eq!(
            sign_headers(
                &c,
                "us-east-1",
                "PUT",
                &uri,
                &none,
                Payload::Sha256("ABC".into()),
                t
            ),
            Err(SignError::InvalidPayloadHash)
        );
        let target = S3Target::new("http://h", "us-east-1", "media", Addressing::Path).unwrap();
        for expires in [Duration::ZERO, MAX_PRESIGN_EXPIRY + Duration::from_secs(1)] {
            assert_eq!(
                presign(&c, &target, "GET", "user_a/x", expires, t),
                Err(SignError::InvalidExpiry)
            );
        }
        assert_eq!(
            presign(&c, &target, "GET", "", Duration::from_secs(60), t),
            Err(SignError::EmptyKey)
        );
    }

    #[test]
    fn presigned_url_carries_the_sigv4_query() {
        let target = S3Target::new(
            "http://127.0.0.1:9000",
            "us-east-1",
            "media",
            Addressing::Path,
        )
        .unwrap();
        let url = presign(
            &creds(None),
            &target,
            "GET",
            "user_a/my photo.png",
            Duration::from_secs(3600),
            at(1_700_000_000),
        )
        .unwrap();
        assert!(url.starts_with(
            "http://127.0.0.1:9000/media/user_a/my%20photo.png?X-Amz-Algorithm=AWS4-HMAC-SHA256&\
             X-Amz-Credential=AKIDEXAMPLE%2F20231114%2Fus-east-1%2Fs3%2Faws4_request&\
             X-Amz-Date=20231114T221320Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&\
             X-Amz-Signature="
        ), "{url}");
        assert!(!url.contains("wJalrXUtnFEMI"));
    }
}
