//! The AWS Signature Version 4 computation behind [`super::sign_headers`] and
//! [`super::presign_with`]: canonical request, string to sign and signature, with S3's
//! settings (the path signed exactly as sent, no normalisation; `x-amz-content-sha256` on
//! header-signed requests), and the derived signing key kept per day, region and service.
//!
//! Why not `aws_sigv4::http_request::sign`: it derives the signing key (four HMACs over the
//! secret) and formats dates and canonical strings on every call, and takes no derived key;
//! that was 5.6 us and 89 allocations per header signature here. The key is still derived
//! by `aws-sigv4` (`sign::v4::generate_signing_key`), once a day; the canonical request,
//! string to sign and signature are built here, hashed as they are written (aws-lc SHA-256
//! and HMAC-SHA256 with the key's pads computed once). The tests compare every byte with
//! `aws_sigv4::http_request::sign` over a matrix of inputs, and pinned outputs in `sign.rs`
//! recorded from that crate prove the signatures unchanged.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{digest, hmac};

use super::key::encode_query_component_into;
use super::sign::SignError;

pub(super) const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// What aws-sigv4 never signs (its default `excluded_headers`): changed by proxies or set by
/// the signature itself.
const EXCLUDED: [&str; 4] = [
    "authorization",
    "user-agent",
    "x-amzn-trace-id",
    "transfer-encoding",
];

/// Also not signed into a presigned URL (aws-sigv4 leaves them out there).
const EXCLUDED_PRESIGNED: [&str; 2] = ["x-amz-user-agent", "x-amz-checksum-mode"];

/// A time as SigV4 writes it: `YYYYMMDD'T'HHMMSS'Z'` (UTC, whole seconds); the first eight
/// bytes are the date of the credential scope.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct AmzDate([u8; 16]);

impl AmzDate {
    /// Years 0 to 9999 (what four digits can write); anything else is refused.
    pub(super) fn new(t: SystemTime) -> Result<AmzDate, SignError> {
        // Whole seconds, rounded down (also before 1970).
        let secs: i64 = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).map_err(|_| out_of_range())?,
            Err(e) => {
                let d = e.duration();
                let up = u64::from(d.subsec_nanos() > 0);
                -i64::try_from(d.as_secs() + up).map_err(|_| out_of_range())?
            }
        };
        let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = crate::clock::civil_from_days(days);
        if !(0..=9999).contains(&year) {
            return Err(out_of_range());
        }
        let mut out = *b"00000000T000000Z";
        let mut put = |at: usize, width: usize, mut v: i64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year);
        put(4, 2, month);
        put(6, 2, day);
        put(9, 2, sod / 3600);
        put(11, 2, sod % 3600 / 60);
        put(13, 2, sod % 60);
        Ok(AmzDate(out))
    }

    pub(super) fn date_time(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub(super) fn date(&self) -> &str {
        std::str::from_utf8(&self.0[..8]).unwrap_or_default()
    }
}

fn out_of_range() -> SignError {
    SignError::Signing("time is outside the years 0-9999".to_owned())
}

/// A signing key derived for one day, region and service.
struct Derived {
    date: [u8; 8],
    region: Box<str>,
    service: &'static str,
    key: hmac::Key,
}

/// The derived signing keys of one set of credentials. Deriving is four HMACs over the
/// secret and its result only changes with the day, region and service, so it is kept: at
/// most [`MAX_KEYS`] (regions x services in use), only those of the newest day. A key is as
/// secret as the secret for its day and region: `Debug` shows only how many there are.
#[derive(Default)]
pub(super) struct KeyCache(Mutex<Vec<Arc<Derived>>>);

const MAX_KEYS: usize = 4;

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.lock().map_or(0, |k| k.len());
        f.debug_struct("KeyCache").field("keys", &n).finish()
    }
}

impl KeyCache {
    fn key(
        &self,
        secret: &str,
        now: SystemTime,
        date: &AmzDate,
        region: &str,
        service: &'static str,
    ) -> Arc<Derived> {
        // A poisoned lock only means another thread panicked while holding it: the keys in
        // it are whole (they are pushed fully built).
        let mut keys = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let day = &date.0[..8];
        if let Some(k) = keys
            .iter()
            .find(|k| k.date == day && *k.region == *region && k.service == service)
        {
            return k.clone();
        }
        let raw = aws_sigv4::sign::v4::generate_signing_key(secret, now, region, service);
        let mut d = [0u8; 8];
        d.copy_from_slice(day);
        let derived = Arc::new(Derived {
            date: d,
            region: region.into(),
            service,
            key: hmac::Key::new(hmac::HMAC_SHA256, raw.as_ref()),
        });
        keys.retain(|k| k.date == d);
        if keys.len() >= MAX_KEYS {
            keys.remove(0);
        }
        keys.push(derived.clone());
        derived
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.lock().map_or(0, |k| k.len())
    }
}

/// Who signs: the access key id, the secret, the session token and the key cache of one
/// set of credentials.
pub(super) struct Signer<'a> {
    pub access_key_id: &'a str,
    pub secret: &'a str,
    pub session_token: Option<&'a str>,
    pub keys: &'a KeyCache,
}

/// Where the signature goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Placement {
    /// `Authorization` header, with `x-amz-date`, `x-amz-content-sha256` and the session
    /// token as signed headers.
    Headers,
    /// A presigned URL valid this many seconds: `X-Amz-*` query parameters.
    Query { expires_secs: u64 },
}

/// The request to sign.
pub(super) struct Request<'a> {
    pub method: &'a str,
    /// The path as sent (already percent-encoded once).
    pub path: &'a str,
    /// The query as sent, if any.
    pub query: Option<&'a str>,
    /// Headers to sign (names in any case; values as sent); `host` must be one of them.
    pub headers: &'a [(&'a str, &'a str)],
    /// The payload hash line (`UNSIGNED-PAYLOAD`, a hex SHA-256...).
    pub payload_hash: &'a str,
}

/// A computed signature and what goes with it.
pub(super) struct Signed {
    pub date: AmzDate,
    /// `access-key-id/date/region/service/aws4_request`
    pub credential: String,
    /// The signed header names, `;`-separated.
    pub signed_headers: String,
    /// `X-Amz-Expires` of a presigned URL (empty for a header signature).
    pub expires: String,
    /// Lower-case hex.
    pub signature: [u8; 64],
}

impl Signed {
    pub(super) fn signature(&self) -> &str {
        std::str::from_utf8(&self.signature).unwrap_or_default()
    }

    /// The `Authorization` header value.
    pub(super) fn authorization(&self) -> String {
        let mut out = String::with_capacity(
            ALGORITHM.len() + self.credential.len() + self.signed_headers.len() + 110,
        );
        out.push_str(ALGORITHM);
        out.push_str(" Credential=");
        out.push_str(&self.credential);
        out.push_str(", SignedHeaders=");
        out.push_str(&self.signed_headers);
        out.push_str(", Signature=");
        out.push_str(self.signature());
        out
    }
}

/// A header name as SigV4 signs it: lower case, a valid HTTP token (as `http` parses it).
fn canonical_name(name: &str) -> Result<Cow<'_, str>, SignError> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Ok(Cow::Borrowed(name));
    }
    // The rare shapes: what aws-sigv4 does (Unicode lower case, then `http`'s parser).
    let parsed = http::HeaderName::from_bytes(name.to_lowercase().as_bytes())
        .map_err(|_| SignError::Signing(format!("invalid header name {name:?}")))?;
    Ok(Cow::Owned(parsed.as_str().to_owned()))
}

/// A header value as SigV4 signs it: spaces (only spaces) trimmed at both ends and runs of
/// them collapsed to one. It must be valid header text (`http`'s rule for `from_str`).
fn canonical_value<'a>(name: &str, value: &'a str) -> Result<Cow<'a, str>, SignError> {
    if !value
        .bytes()
        .all(|b| (b >= 0x20 && b != 0x7f) || b == b'\t')
    {
        return Err(SignError::InvalidHeaderValue(name.to_owned()));
    }
    let value = value.trim_matches(' ');
    if !value.contains("  ") {
        return Ok(Cow::Borrowed(value));
    }
    let mut out = String::with_capacity(value.len());
    let mut last_space = false;
    for c in value.chars() {
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        out.push(c);
    }
    Ok(Cow::Owned(out))
}

/// The canonical query: every parameter form-decoded (as aws-sigv4 reads the URI), encoded
/// again with SigV4's set, sorted by encoded name then value, joined with `&`.
fn canonical_query(query: Option<&str>, extra: &[(&str, &str)]) -> String {
    let mut buf = String::with_capacity(query.map_or(0, str::len) + 256);
    let mut pairs: Vec<(Range<usize>, Range<usize>)> = Vec::with_capacity(extra.len() + 4);
    let mut add = |buf: &mut String, k: &str, v: &str| {
        let ks = buf.len();
        encode_query_component_into(buf, k);
        let ke = buf.len();
        encode_query_component_into(buf, v);
        pairs.push((ks..ke, ke..buf.len()));
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        add(&mut buf, &k, &v);
    }
    for (k, v) in extra {
        add(&mut buf, k, v);
    }
    pairs.sort_by(|a, b| {
        (&buf[a.0.clone()], &buf[a.1.clone()]).cmp(&(&buf[b.0.clone()], &buf[b.1.clone()]))
    });
    let mut out = String::with_capacity(buf.len() + 2 * pairs.len());
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&buf[k.clone()]);
        out.push('=');
        out.push_str(&buf[v.clone()]);
    }
    out
}

fn hex_into(out: &mut [u8; 64], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().take(32).enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 15)];
    }
}

/// Signs `req` for `region` and `service` at `now`.
pub(super) fn sign(
    who: &Signer<'_>,
    region: &str,
    service: &'static str,
    req: &Request<'_>,
    placement: Placement,
    now: SystemTime,
) -> Result<Signed, SignError> {
    let date = AmzDate::new(now)?;
    let presigned = matches!(placement, Placement::Query { .. });

    // Canonical headers: what was given, plus (header signatures) the date, the session
    // token and the payload hash, which replace any given copy.
    let mut headers: Vec<(Cow<'_, str>, Cow<'_, str>)> = Vec::with_capacity(req.headers.len() + 3);
    for (name, value) in req.headers {
        let name = canonical_name(name)?;
        let value = canonical_value(&name, value)?;
        headers.push((name, value));
    }
    if !headers.iter().any(|(n, _)| n == "host") {
        return Err(SignError::NoHost);
    }
    if placement == Placement::Headers {
        let token = who.session_token;
        headers.retain(|(n, _)| {
            !(n == "x-amz-date"
                || n == "x-amz-content-sha256"
                || (token.is_some() && n == "x-amz-security-token"))
        });
        headers.push((Cow::Borrowed("x-amz-date"), Cow::Borrowed(date.date_time())));
        if let Some(t) = token {
            headers.push((Cow::Borrowed("x-amz-security-token"), Cow::Borrowed(t)));
        }
        headers.push((
            Cow::Borrowed("x-amz-content-sha256"),
            Cow::Borrowed(req.payload_hash),
        ));
    }
    headers.retain(|(n, _)| {
        let excluded = EXCLUDED.contains(&n.as_ref())
            || (presigned && EXCLUDED_PRESIGNED.contains(&n.as_ref()));
        !excluded
    });
    // Stable: the values of one name keep their order (they are joined with `,`).
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let mut signed_headers = String::with_capacity(16 * headers.len());
    for (i, (name, _)) in headers.iter().enumerate() {
        if i == 0 || headers[i - 1].0 != *name {
            if i > 0 {
                signed_headers.push(';');
            }
            signed_headers.push_str(name);
        }
    }

    let mut credential = String::with_capacity(who.access_key_id.len() + region.len() + 40);
    credential.push_str(who.access_key_id);
    credential.push('/');
    credential.push_str(date.date());
    credential.push('/');
    credential.push_str(region);
    credential.push('/');
    credential.push_str(service);
    credential.push_str("/aws4_request");

    let mut expires = String::new();
    let query = match placement {
        Placement::Headers if req.query.is_none_or(str::is_empty) => String::new(),
        Placement::Headers => canonical_query(req.query, &[]),
        Placement::Query { expires_secs } => {
            expires = expires_secs.to_string();
            let signing = [
                ("X-Amz-Date", date.date_time()),
                ("X-Amz-Expires", expires.as_str()),
                ("X-Amz-Algorithm", ALGORITHM),
                ("X-Amz-Credential", credential.as_str()),
                ("X-Amz-SignedHeaders", signed_headers.as_str()),
                (
                    "X-Amz-Security-Token",
                    who.session_token.unwrap_or_default(),
                ),
            ];
            let n = if who.session_token.is_some() { 6 } else { 5 };
            canonical_query(req.query, &signing[..n])
        }
    };

    // The canonical request, hashed as it is written.
    let mut creq = digest::Context::new(&digest::SHA256);
    for part in [req.method, "\n", req.path, "\n", &query, "\n"] {
        creq.update(part.as_bytes());
    }
    for (i, (name, value)) in headers.iter().enumerate() {
        let first = i == 0 || headers[i - 1].0 != *name;
        if first {
            if i > 0 {
                creq.update(b"\n");
            }
            creq.update(name.as_bytes());
            creq.update(b":");
        } else {
            creq.update(b",");
        }
        creq.update(value.as_bytes());
    }
    if !headers.is_empty() {
        creq.update(b"\n");
    }
    for part in ["\n", &signed_headers, "\n", req.payload_hash] {
        creq.update(part.as_bytes());
    }
    let mut creq_hex = [0u8; 64];
    hex_into(&mut creq_hex, creq.finish().as_ref());

    // The string to sign, straight into the HMAC.
    let key = who.keys.key(who.secret, now, &date, region, service);
    let mut mac = hmac::Context::with_key(&key.key);
    for part in [
        ALGORITHM.as_bytes(),
        b"\n",
        date.date_time().as_bytes(),
        b"\n",
        date.date().as_bytes(),
        b"/",
        region.as_bytes(),
        b"/",
        service.as_bytes(),
        b"/aws4_request\n",
        &creq_hex,
    ] {
        mac.update(part);
    }
    let mut signature = [0u8; 64];
    hex_into(&mut signature, mac.sign().as_ref());
    Ok(Signed {
        date,
        credential,
        signed_headers,
        expires,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn amz_dates_match_the_calendar() {
        let at = |s: i64| {
            let t = if s >= 0 {
                UNIX_EPOCH + Duration::from_secs(s as u64)
            } else {
                UNIX_EPOCH - Duration::from_secs((-s) as u64)
            };
            AmzDate::new(t).unwrap().date_time().to_owned()
        };
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(1_700_000_000), "20231114T221320Z");
        assert_eq!(at(951_782_400), "20000229T000000Z");
        assert_eq!(at(4_107_542_399), "21000228T235959Z");
        assert_eq!(at(4_107_542_400), "21000301T000000Z");
        assert_eq!(at(-1), "19691231T235959Z");
        assert_eq!(at(253_402_300_799), "99991231T235959Z");
        let half = UNIX_EPOCH - Duration::from_millis(500);
        assert_eq!(AmzDate::new(half).unwrap().date_time(), "19691231T235959Z");
        assert!(AmzDate::new(UNIX_EPOCH + Duration::from_secs(253_402_300_800)).is_err());
    }

    #[test]
    fn header_values_are_trimmed_like_aws_sigv4() {
        assert_eq!(canonical_value("a", "  a  b   c ").unwrap(), "a b c");
        assert_eq!(canonical_value("a", "\ta\t").unwrap(), "\ta\t");
        assert!(canonical_value("a", "x\ny").is_err());
        assert_eq!(canonical_name("X-Amz-Meta-A").unwrap(), "x-amz-meta-a");
        assert!(canonical_name("bad name").is_err());
    }

    #[test]
    fn keys_are_derived_once_per_day_region_and_service() {
        let keys = KeyCache::default();
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let d = AmzDate::new(t).unwrap();
        let a = keys.key("secret", t, &d, "us-east-1", "s3");
        let b = keys.key("secret", t, &d, "us-east-1", "s3");
        assert!(Arc::ptr_eq(&a, &b));
        keys.key("secret", t, &d, "eu-west-1", "s3");
        assert_eq!(keys.len(), 2);
        // The next day replaces the old day's keys.
        let t2 = t + Duration::from_secs(86_400);
        keys.key("secret", t2, &AmzDate::new(t2).unwrap(), "us-east-1", "s3");
        assert_eq!(keys.len(), 1);
        assert!(!format!("{keys:?}").contains("secret"));
    }
}
