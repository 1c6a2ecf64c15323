//! Standard Webhooks / Svix signature verification and the replay guard for webhook routes.
//!
//! This module owns the webhook secrets (decoded once at startup, never logged), the check of
//! the `svix-*` / `webhook-*` headers against the raw body, and the record of message ids
//! already accepted. It does not read HTTP requests itself: the caller hands it header values
//! and the body bytes, then maps [`WebhookError::reason`] (or [`Reason::WebhookReplayed`]) to
//! the client-facing refusal.
//!
//! Order of use: [`verify`] first, then [`ReplayStore::first_seen`] with the message id. Only
//! ids carried by a valid signature reach the replay store, so an unauthenticated sender cannot
//! fill it or pre-empt a legitimate id.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_lc_rs::{constant_time, hmac};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

use crate::error::Reason;

/// Reason code for a message id already accepted within the replay window. The replay decision
/// belongs to the caller (it owns the [`ReplayStore`]), but the code lives here with its siblings.
pub const REASON_REPLAYED: &str = "webhook_replayed";

/// Tolerance recommended by the Standard Webhooks specification.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// Shorter secrets are refused: the Standard Webhooks specification asks for at least 24
/// random bytes, and Svix/Clerk secrets are exactly that long.
const MIN_SECRET_BYTES: usize = 24;

const SECRET_PREFIX: &str = "whsec_";

/// Senders and hand-edited configs disagree on trailing `=`; the bytes are what matter.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a webhook request fails verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook header {0} is missing or empty")]
    MissingHeader(&'static str),
    #[error("webhook header {0} is sent more than once")]
    DuplicateHeader(&'static str),
    #[error("webhook timestamp is not an integer")]
    TimestampInvalid,
    #[error("webhook timestamp is {skew_secs}s away from now, beyond the tolerance")]
    TimestampOutOfRange { skew_secs: i64 },
    #[error("webhook signature header has no usable v1 entry")]
    NoUsableSignature,
    #[error("no webhook signature matches any configured secret")]
    SignatureMismatch,
}

impl WebhookError {
    /// The client-facing reason. A malformed header is reported like a wrong signature so
    /// that a prober learns nothing about which part of the check failed.
    pub fn reason(&self) -> Reason {
        match self {
            WebhookError::MissingHeader(_)
            | WebhookError::DuplicateHeader(_)
            | WebhookError::NoUsableSignature
            | WebhookError::SignatureMismatch => Reason::WebhookSignatureInvalid,
            WebhookError::TimestampInvalid | WebhookError::TimestampOutOfRange { .. } => {
                Reason::WebhookTimestampOutOfRange
            }
        }
    }

    /// The reason's stable code.
    pub fn reason_code(&self) -> &'static str {
        self.reason().code()
    }
}

/// A configured secret that cannot be used. The secret itself is never part of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("no webhook secret configured")]
    Empty,
    #[error("webhook secret #{index} is not valid base64")]
    InvalidBase64 { index: usize },
    #[error(
        "webhook secret #{index} decodes to {len} bytes; at least {MIN_SECRET_BYTES} are required"
    )]
    TooShort { index: usize, len: usize },
}

/// The replay store could not answer; the caller decides whether that refuses the request.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("invalid redis url: {0}")]
    InvalidUrl(#[source] redis::RedisError),
    #[error("replay store unavailable: {0}")]
    Redis(#[source] redis::RedisError),
    #[error("replay store did not answer within {0:?}")]
    Timeout(Duration),
}

/// One or more HMAC keys. Several are accepted at once so a secret can be rotated without a
/// window in which the sender and Portier disagree.
#[derive(Clone)]
pub struct WebhookSecrets {
    keys: Vec<hmac::Key>,
}

impl WebhookSecrets {
    /// Decodes each secret (`whsec_<base64>` or bare base64). Fails if none is given or any is
    /// unusable: a half-loaded rotation set would reject traffic in confusing ways.
    pub fn new<I, S>(secrets: I) -> Result<Self, SecretError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut keys = Vec::new();
        for (index, secret) in secrets.into_iter().enumerate() {
            let secret = secret.as_ref().trim();
            let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
            let bytes = BASE64
                .decode(encoded)
                .map_err(|_| SecretError::InvalidBase64 { index })?;
            if bytes.len() < MIN_SECRET_BYTES {
                return Err(SecretError::TooShort {
                    index,
                    len: bytes.len(),
                });
            }
            keys.push(hmac::Key::new(hmac::HMAC_SHA256, &bytes));
        }
        if keys.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(WebhookSecrets { keys })
    }

    /// Parses a list separated by whitespace or commas (neither occurs in standard base64), the
    /// shape an environment variable holding a rotation set usually has.
    pub fn parse_list(list: &str) -> Result<Self, SecretError> {
        Self::new(
            list.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty()),
        )
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key material must never reach a log line through `{:?}`.
        f.debug_struct("WebhookSecrets")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// Which header family a request used; Svix and Standard Webhooks sign identically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderFamily {
    Svix,
    StandardWebhooks,
}

impl HeaderFamily {
    fn names(self) -> [&'static str; 3] {
        match self {
            HeaderFamily::Svix => ["svix-id", "svix-timestamp", "svix-signature"],
            HeaderFamily::StandardWebhooks => {
                ["webhook-id", "webhook-timestamp", "webhook-signature"]
            }
        }
    }
}

/// The three signed header values of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookHeaders {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
}

impl WebhookHeaders {
    /// Reads the headers through `lookup` (lower-case names). The family is chosen as a whole:
    /// if any `svix-*` header is present all three come from `svix-*`, otherwise from
    /// `webhook-*`, so a request cannot combine an id from one family with a signature from
    /// the other.
    pub fn from_lookup<'a, F>(lookup: F) -> Result<Self, WebhookError>
    where
        F: Fn(&str) -> Option<&'a str>,
    {
        let svix = HeaderFamily::Svix.names();
        let family = if svix.iter().any(|name| lookup(name).is_some()) {
            HeaderFamily::Svix
        } else {
            HeaderFamily::StandardWebhooks
        };
        let [id, timestamp, signature] = family.names();
        let get = |name: &'static str| match lookup(name) {
            Some(value) if !value.is_empty() => Ok(value.to_owned()),
            _ => Err(WebhookError::MissingHeader(name)),
        };
        Ok(WebhookHeaders {
            id: get(id)?,
            timestamp: get(timestamp)?,
            signature: get(signature)?,
        })
    }

    /// Reads the headers of a request. A signed header sent twice is refused: which of the
    /// two a verifier and an upstream would each read is not the same everywhere.
    pub fn from_header_map(headers: &http::HeaderMap) -> Result<Self, WebhookError> {
        for family in [HeaderFamily::Svix, HeaderFamily::StandardWebhooks] {
            for name in family.names() {
                if headers.get_all(name).iter().count() > 1 {
                    return Err(WebhookError::DuplicateHeader(name));
                }
            }
        }
        Self::from_lookup(|n| headers.get(n).and_then(|v| v.to_str().ok()))
    }
}

/// Checks one delivery: timestamp within `now_unix +- tolerance_secs`, then an HMAC-SHA256 over
/// `id.timestamp.body` matching any `v1,` entry under any secret. Entries of other versions
/// (`v1a` asymmetric signatures, future schemes) are skipped rather than refused so a sender
/// may add them during a migration.
pub fn verify(
    secrets: &WebhookSecrets,
    headers: &WebhookHeaders,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<(), WebhookError> {
    if headers.id.is_empty() {
        return Err(WebhookError::MissingHeader("svix-id"));
    }
    // Timestamp before signature, as the reference implementations do: a stale delivery is
    // refused without spending an HMAC on it.
    let sent: i64 = headers
        .timestamp
        .parse()
        .map_err(|_| WebhookError::TimestampInvalid)?;
    let skew = now_unix.saturating_sub(sent);
    if skew.unsigned_abs() > tolerance_secs.max(0).unsigned_abs() {
        return Err(WebhookError::TimestampOutOfRange { skew_secs: skew });
    }

    let candidates: Vec<Vec<u8>> = headers
        .signature
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| BASE64.decode(b64).ok())
        .collect();
    if candidates.is_empty() {
        return Err(WebhookError::NoUsableSignature);
    }

    for key in &secrets.keys {
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(headers.id.as_bytes());
        ctx.update(b".");
        ctx.update(headers.timestamp.as_bytes());
        ctx.update(b".");
        ctx.update(body);
        let tag = ctx.sign();
        // Every candidate is compared even after a match would be found; the loop count
        // depends only on header shape, which the sender already knows.
        let matched = candidates.iter().fold(false, |acc, candidate| {
            constant_time::verify_slices_are_equal(tag.as_ref(), candidate).is_ok() | acc
        });
        if matched {
            return Ok(());
        }
    }
    Err(WebhookError::SignatureMismatch)
}

/// How long an accepted id must be remembered. A delivery stays acceptable while its timestamp
/// is within +-tolerance of the clock, so between the first and last moment it can be accepted
/// lie up to two tolerances; remembering it for one would let a replay through near the end.
pub fn replay_window(tolerance_secs: i64) -> Duration {
    Duration::from_secs(tolerance_secs.max(0).unsigned_abs().saturating_mul(2))
}

/// Remembers message ids of accepted deliveries so a captured request cannot be replayed while
/// its timestamp is still acceptable.
#[async_trait]
pub trait ReplayStore: Send + Sync {
    /// Records `id` for `ttl` and returns `true` if it was not already recorded. Atomic: of
    /// concurrent calls with the same id exactly one sees `true`.
    async fn first_seen(&self, id: &str, ttl: Duration) -> Result<bool, ReplayError>;

    /// Drops `id` again, for when the upstream did not take the delivery: Svix retries with
    /// the same id, and the retry must not be refused as a replay.
    async fn forget(&self, id: &str) -> Result<(), ReplayError>;
}

/// Per-entry lifetime: each id lives exactly as long as the `ttl` it was recorded with.
struct RecordedTtl;

impl moka::Expiry<String, Duration> for RecordedTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        ttl: &Duration,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(*ttl)
    }
}

/// Replay store local to one process. With several replicas each keeps its own record, so a
/// replay sent to another replica is not caught; use a shared store there.
pub struct MemoryReplayStore {
    seen: moka::sync::Cache<String, Duration>,
}

impl MemoryReplayStore {
    /// `capacity` bounds memory. Ids are only recorded after a valid signature, so filling the
    /// store requires the sender's secret.
    pub fn new(capacity: u64) -> Self {
        MemoryReplayStore {
            seen: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(RecordedTtl)
                .build(),
        }
    }
}

#[async_trait]
impl ReplayStore for MemoryReplayStore {
    async fn first_seen(&self, id: &str, ttl: Duration) -> Result<bool, ReplayError> {
        let entry = self.seen.entry(id.to_owned()).or_insert_with(|| ttl);
        Ok(entry.is_fresh())
    }

    async fn forget(&self, id: &str) -> Result<(), ReplayError> {
        self.seen.invalidate(id);
        Ok(())
    }
}

/// Replay ids in Redis, shared by every replica: `SET id 1 NX PX ttl` is atomic, so of two
/// replicas receiving the same delivery exactly one accepts it.
#[derive(Clone)]
pub struct RedisReplayStore {
    conn: redis::aio::ConnectionManager,
    timeout: Duration,
    prefix: String,
}

impl RedisReplayStore {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, ReplayError> {
        let client = redis::Client::open(url).map_err(ReplayError::InvalidUrl)?;
        let conn =
            super::ratelimit::lazy_connection(client, timeout).map_err(ReplayError::Redis)?;
        Ok(RedisReplayStore {
            conn,
            timeout,
            prefix: "portier:wh:".into(),
        })
    }
}

#[async_trait]
impl ReplayStore for RedisReplayStore {
    async fn first_seen(&self, id: &str, ttl: Duration) -> Result<bool, ReplayError> {
        let mut conn = self.conn.clone();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}{id}", self.prefix))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ms);
        let reply: Option<String> = tokio::time::timeout(self.timeout, cmd.query_async(&mut conn))
            .await
            .map_err(|_| ReplayError::Timeout(self.timeout))?
            .map_err(ReplayError::Redis)?;
        Ok(reply.is_some())
    }

    async fn forget(&self, id: &str) -> Result<(), ReplayError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("DEL");
        cmd.arg(format!("{}{id}", self.prefix));
        let _: i64 = tokio::time::timeout(self.timeout, cmd.query_async(&mut conn))
            .await
            .map_err(|_| ReplayError::Timeout(self.timeout))?
            .map_err(ReplayError::Redis)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const OTHER_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1649367553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn headers(signature: &str) -> WebhookHeaders {
        WebhookHeaders {
            id: ID.to_string(),
            timestamp: TS.to_string(),
            signature: signature.to_string(),
        }
    }

    fn secrets(list: &[&str]) -> WebhookSecrets {
        WebhookSecrets::new(list).expect("valid secrets")
    }

    fn check(
        secrets: &WebhookSecrets,
        h: &WebhookHeaders,
        body: &[u8],
        now: i64,
    ) -> Result<(), WebhookError> {
        verify(secrets, h, body, now, DEFAULT_TOLERANCE_SECS)
    }

    #[test]
    fn published_test_vector_verifies() {
        assert_eq!(check(&secrets(&[SECRET]), &headers(SIG), BODY, TS), Ok(()));
    }

    #[test]
    fn raw_base64_secret_without_prefix_verifies() {
        let raw = SECRET.trim_start_matches("whsec_");
        assert_eq!(check(&secrets(&[raw]), &headers(SIG), BODY, TS), Ok(()));
    }

    #[test]
    fn changed_body_is_refused() {
        let body = br#"{"email":"evil@example.com","username":"test_user"}"#;
        let err = check(&secrets(&[SECRET]), &headers(SIG), body, TS).unwrap_err();
        assert_eq!(err, WebhookError::SignatureMismatch);
        assert_eq!(err.reason_code(), "webhook_signature_invalid");
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let s = secrets(&[SECRET]);
        let stale = check(&s, &headers(SIG), BODY, TS + 301).unwrap_err();
        assert_eq!(stale, WebhookError::TimestampOutOfRange { skew_secs: 301 });
        assert_eq!(stale.reason_code(), "webhook_timestamp_out_of_range");
        let future = check(&s, &headers(SIG), BODY, TS - 301).unwrap_err();
        assert_eq!(
            future,
            WebhookError::TimestampOutOfRange { skew_secs: -301 }
        );
        assert_eq!(future.reason_code(), "webhook_timestamp_out_of_range");
        // The bounds themselves are inside the window.
        assert_eq!(check(&s, &headers(SIG), BODY, TS + 300), Ok(()));
        assert_eq!(check(&s, &headers(SIG), BODY, TS - 300), Ok(()));
    }

    #[test]
    fn non_integer_timestamp_is_refused_as_out_of_range() {
        let mut h = headers(SIG);
        h.timestamp = "1649367553.5".to_string();
        let err = check(&secrets(&[SECRET]), &h, BODY, TS).unwrap_err();
        assert_eq!(err, WebhookError::TimestampInvalid);
        assert_eq!(err.reason_code(), "webhook_timestamp_out_of_range");
    }

    #[test]
    fn unknown_secret_is_refused() {
        let err = check(&secrets(&[OTHER_SECRET]), &headers(SIG), BODY, TS).unwrap_err();
        assert_eq!(err, WebhookError::SignatureMismatch);
        assert_eq!(err.reason_code(), "webhook_signature_invalid");
    }

    #[test]
    fn rotation_accepts_the_second_secret() {
        let s = WebhookSecrets::parse_list(&format!("{OTHER_SECRET}, {SECRET}")).expect("list");
        assert_eq!(s.len(), 2);
        assert_eq!(check(&s, &headers(SIG), BODY, TS), Ok(()));
    }

    #[test]
    fn any_of_several_signature_entries_may_match() {
        let sig =
            format!("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= v1a,ignored {SIG} v2,xyz");
        assert_eq!(check(&secrets(&[SECRET]), &headers(&sig), BODY, TS), Ok(()));
        // A matching value under a version other than v1 does not count.
        let relabelled = SIG.replacen("v1,", "v2,", 1);
        let err = check(&secrets(&[SECRET]), &headers(&relabelled), BODY, TS).unwrap_err();
        assert_eq!(err, WebhookError::NoUsableSignature);
    }

    #[test]
    fn malformed_headers_are_refused_as_invalid_signature() {
        let s = secrets(&[SECRET]);
        for bad in [
            "",
            "v1",
            "v1,",
            "v1,!!!notbase64",
            "tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ] {
            let err = check(&s, &headers(bad), BODY, TS).unwrap_err();
            assert_eq!(err.reason_code(), "webhook_signature_invalid", "{bad:?}");
        }
        let mut h = headers(SIG);
        h.id.clear();
        let err = check(&s, &h, BODY, TS).unwrap_err();
        assert_eq!(err.reason_code(), "webhook_signature_invalid");
    }

    #[test]
    fn headers_come_from_one_family() {
        let svix = |name: &str| match name {
            "svix-id" => Some(ID),
            "svix-timestamp" => Some("1649367553"),
            "svix-signature" => Some(SIG),
            "webhook-signature" => Some("v1,other"),
            _ => None,
        };
        let h = WebhookHeaders::from_lookup(svix).expect("svix headers");
        assert_eq!(h, headers(SIG));

        let standard = |name: &str| match name {
            "webhook-id" => Some(ID),
            "webhook-timestamp" => Some("1649367553"),
            "webhook-signature" => Some(SIG),
            _ => None,
        };
        assert_eq!(WebhookHeaders::from_lookup(standard), Ok(headers(SIG)));

        // A partial svix set does not borrow the rest from webhook-*.
        let mixed = |name: &str| match name {
            "svix-id" => Some(ID),
            "webhook-timestamp" => Some("1649367553"),
            "webhook-signature" => Some(SIG),
            _ => None,
        };
        let err = WebhookHeaders::from_lookup(mixed).unwrap_err();
        assert_eq!(err, WebhookError::MissingHeader("svix-timestamp"));
        assert_eq!(err.reason_code(), "webhook_signature_invalid");

        let none = |_: &str| None;
        assert_eq!(
            WebhookHeaders::from_lookup(none),
            Err(WebhookError::MissingHeader("webhook-id"))
        );
    }

    #[test]
    fn secret_errors_are_typed() {
        assert_eq!(
            WebhookSecrets::new(Vec::<String>::new()).unwrap_err(),
            SecretError::Empty
        );
        assert_eq!(
            WebhookSecrets::parse_list(" , ").unwrap_err(),
            SecretError::Empty
        );
        assert_eq!(
            WebhookSecrets::new([SECRET, "whsec_not base64!"]).unwrap_err(),
            SecretError::InvalidBase64 { index: 1 }
        );
        assert_eq!(
            WebhookSecrets::new(["whsec_c2hvcnQ="]).unwrap_err(),
            SecretError::TooShort { index: 0, len: 5 }
        );
        let debug = format!("{:?}", secrets(&[SECRET]));
        assert!(!debug.contains("C2FV"), "{debug}");
    }

    #[tokio::test]
    async fn replayed_id_is_refused_until_forgotten() {
        let store = MemoryReplayStore::new(1000);
        let ttl = replay_window(DEFAULT_TOLERANCE_SECS);
        assert_eq!(ttl, Duration::from_secs(600));
        assert_eq!(store.first_seen(ID, ttl).await.ok(), Some(true));
        assert_eq!(store.first_seen(ID, ttl).await.ok(), Some(false));
        assert_eq!(store.first_seen("msg_other", ttl).await.ok(), Some(true));
        store.forget(ID).await.expect("forget");
        assert_eq!(store.first_seen(ID, ttl).await.ok(), Some(true));
        assert_eq!(REASON_REPLAYED, "webhook_replayed");
    }

    #[tokio::test]
    async fn replay_record_expires_after_its_ttl() {
        let store = MemoryReplayStore::new(1000);
        assert_eq!(
            store.first_seen(ID, Duration::from_millis(50)).await.ok(),
            Some(true)
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(
            store.first_seen(ID, Duration::from_millis(50)).await.ok(),
            Some(true)
        );
    }
}
