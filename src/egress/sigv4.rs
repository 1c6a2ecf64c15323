//! Verifying an inbound AWS Signature Version 4 as S3 does: header signatures (`Authorization:
//! AWS4-HMAC-SHA256 ...`) and presigned query signatures (`X-Amz-Signature`), the credential
//! scope (date, region, service `s3`), the request time (15 minutes of skew for header
//! signatures; `X-Amz-Expires` of at most 7 days for presigned ones), which headers are
//! signed (`host`, and every `x-amz-*` header present, so an unsigned `x-amz-copy-source`
//! cannot ride along), and the payload mode (`x-amz-content-sha256`).
//!
//! Written here rather than taken from a crate: `s3s` has a verifier but keeps it private, and
//! `aws-sigv4` only signs. The canonical request follows S3's rules: the path as sent (S3
//! encodes once and does not normalise), with a decode-and-encode-once fallback for clients
//! that encode differently; the query decoded by [`super::query`] (the same decoding the
//! operation is read from and the store's query is built from), re-encoded and sorted;
//! header values trimmed with inner runs of spaces collapsed. Signatures are compared in
//! constant time. Tested against AWS's published S3 examples and against requests signed by
//! `aws-sigv4` and by boto3.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{constant_time, digest, hmac};
use http::HeaderMap;

/// S3's allowed clock skew for header signatures.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// The longest a presigned URL may be valid.
pub const MAX_PRESIGN_EXPIRES: u64 = 7 * 24 * 3600;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The request parts a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub method: &'a str,
    /// The path exactly as the client sent it (percent-encoded).
    pub raw_path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// What the body of a verified request is, as its signature says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadMode {
    /// `x-amz-content-sha256` is the body's SHA-256 (lower-case hex): Portier checks it.
    Sha256(String),
    /// `UNSIGNED-PAYLOAD` (and presigned URLs without a hash).
    Unsigned,
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`: aws-chunked framing, a checksum in the trailer.
    StreamingUnsignedTrailer,
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`: each chunk signed from the request's
    /// signature, which re-signing changes.
    StreamingSigned,
}

/// A request whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key: String,
    pub payload: PayloadMode,
    pub presigned: bool,
    /// Lower-case names of the signed headers.
    pub signed_headers: Vec<String>,
}

/// Why a signature is refused; each maps to S3's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("the request is not signed")]
    Missing,
    #[error("the authorization is malformed: {0}")]
    Malformed(&'static str),
    #[error("the access key id is not known")]
    UnknownKey,
    #[error("the signature does not match")]
    Mismatch,
    #[error("the request time is too far from now")]
    Skewed,
    #[error("the presigned URL has expired")]
    Expired,
    #[error("the credential scope is wrong: {0}")]
    Scope(&'static str),
    #[error("header {0} is present but not signed")]
    UnsignedHeader(String),
    #[error("only AWS Signature Version 4 (AWS4-HMAC-SHA256) is accepted")]
    Algorithm,
}

/// Derived signing keys, one per (secret, date, region): five HMACs saved per request.
#[derive(Default)]
pub struct KeyCache {
    keys: Mutex<HashMap<(String, String, String), hmac::Key>>,
}

impl KeyCache {
    fn signing_key(&self, access_key: &str, secret: &str, date: &str, region: &str) -> hmac::Key {
        let id = (access_key.to_string(), date.to_string(), region.to_string());
        if let Ok(g) = self.keys.lock() {
            if let Some(k) = g.get(&id) {
                return k.clone();
            }
        }
        let k = derive_key(secret, date, region, "s3");
        if let Ok(mut g) = self.keys.lock() {
            // Dates move on: drop yesterday's keys rather than grow without bound.
            if g.len() > 4096 {
                g.clear();
            }
            g.insert(id, k.clone());
        }
        k
    }
}

fn hmac_sign(key: &[u8], msg: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg)
        .as_ref()
        .to_vec()
}

/// The SigV4 signing key: HMAC("AWS4" + secret, date) -> region -> service -> "aws4_request".
pub fn derive_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let k_date = hmac_sign(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac_sign(&k_date, region.as_bytes());
    let k_service = hmac_sign(&k_region, service.as_bytes());
    let k_signing = hmac_sign(&k_service, b"aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, &k_signing)
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, b))
}

/// `%XX`-decodes a path; `+` is kept.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = crate::path::hex(*b.get(i + 1)?)?;
            let l = crate::path::hex(*b.get(i + 2)?)?;
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// SigV4's URI encoding: unreserved characters as they are, everything else `%XX` (upper
/// case); `/` kept when `keep_slash`.
fn uri_encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len() * 3 / 2);
    for &b in bytes {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A header's canonical value: every value of the name, trimmed, inner spaces collapsed,
/// joined with `,`.
fn canonical_header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut vals = Vec::new();
    for v in headers.get_all(name) {
        let s = std::str::from_utf8(v.as_bytes()).ok()?;
        vals.push(s.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    (!vals.is_empty()).then(|| vals.join(","))
}

/// The pieces of a SigV4 authorization, from the header or the query.
struct Parsed {
    access_key: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
    amz_date: String,
    presigned: Option<u64>,
}

fn parse_header(auth: &str, headers: &HeaderMap) -> Result<Parsed, SigError> {
    let (alg, rest) = auth
        .split_once(' ')
        .ok_or(SigError::Malformed("authorization"))?;
    if alg != ALGORITHM {
        return Err(SigError::Algorithm);
    }
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        } else {
            return Err(SigError::Malformed("authorization field"));
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(SigError::Malformed("authorization fields"));
    };
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or(SigError::Malformed("x-amz-date is required"))?;
    let (access_key, date, region, service) = parse_credential(credential)?;
    Ok(Parsed {
        access_key,
        date,
        region,
        service,
        signed_headers: signed.split(';').map(str::to_string).collect(),
        signature: signature.to_string(),
        amz_date: amz_date.to_string(),
        presigned: None,
    })
}

fn parse_credential(c: &str) -> Result<(String, String, String, String), SigError> {
    let parts: Vec<&str> = c.split('/').collect();
    match parts.as_slice() {
        [ak, date, region, service, "aws4_request"] if !ak.is_empty() => Ok((
            ak.to_string(),
            date.to_string(),
            region.to_string(),
            service.to_string(),
        )),
        _ => Err(SigError::Malformed("credential")),
    }
}

fn query_param(pairs: &[(String, String)], name: &str) -> Result<Option<String>, SigError> {
    let mut found = None;
    for (k, v) in pairs {
        if k == name {
            if found.is_some() {
                return Err(SigError::Malformed("presign parameter given twice"));
            }
            found = Some(v.clone());
        }
    }
    Ok(found)
}

fn parse_query(pairs: &[(String, String)]) -> Result<Parsed, SigError> {
    let need = |n: &str| query_param(pairs, n)?.ok_or(SigError::Malformed("presign parameters"));
    if need("X-Amz-Algorithm")? != ALGORITHM {
        return Err(SigError::Algorithm);
    }
    let (access_key, date, region, service) = parse_credential(&need("X-Amz-Credential")?)?;
    let expires: u64 = need("X-Amz-Expires")?
        .parse()
        .map_err(|_| SigError::Malformed("X-Amz-Expires"))?;
    if !(1..=MAX_PRESIGN_EXPIRES).contains(&expires) {
        return Err(SigError::Malformed(
            "X-Amz-Expires must be between 1 and 604800",
        ));
    }
    Ok(Parsed {
        access_key,
        date,
        region,
        service,
        signed_headers: need("X-Amz-SignedHeaders")?
            .split(';')
            .map(str::to_string)
            .collect(),
        signature: need("X-Amz-Signature")?,
        amz_date: need("X-Amz-Date")?,
        presigned: Some(expires),
    })
}

/// The access key id a request claims, before any check: to name the service in refusals.
/// None when the request carries no parsable credential.
pub fn claimed_access_key(req: &Inbound<'_>) -> Option<String> {
    if let Some(auth) = req.headers.get(http::header::AUTHORIZATION) {
        let auth = auth.to_str().ok()?;
        let credential = auth
            .split_once(' ')?
            .1
            .split(',')
            .find_map(|p| p.trim().strip_prefix("Credential="))?;
        return parse_credential(credential).ok().map(|c| c.0);
    }
    let pairs = super::query::pairs(req.query).ok()?;
    let credential = query_param(&pairs, "X-Amz-Credential").ok()??;
    parse_credential(&credential).ok().map(|c| c.0)
}

/// Seconds since the epoch of `YYYYMMDDTHHMMSSZ`.
pub fn parse_amz_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from civil (H. Hinnant's algorithm).
    let (y, m) = if mo <= 2 {
        (y as i64 - 1, mo + 9)
    } else {
        (y as i64, mo - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m as i64 + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + (h * 3600 + mi * 60 + se) as i64).ok()
}

/// Verifies a request's signature. `secret_of` finds a local key's secret; `region` is the
/// region the egress listener accepts.
pub fn verify(
    req: &Inbound<'_>,
    secret_of: impl Fn(&str) -> Option<String>,
    region: &str,
    now: SystemTime,
    keys: &KeyCache,
) -> Result<Verified, SigError> {
    let auth = req
        .headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.to_str().map_err(|_| SigError::Malformed("authorization")))
        .transpose()?;
    // Decoded once, by the same function that classifies the request and builds the query
    // sent to the store: names are compared decoded (`X%2DAmz%2DSignature` is the signature).
    let pairs =
        super::query::pairs(req.query).map_err(|_| SigError::Malformed("query encoding"))?;
    let in_query = pairs.iter().any(|(k, _)| k == "X-Amz-Signature");
    let p = match (auth, in_query) {
        (Some(_), true) => {
            return Err(SigError::Malformed(
                "signed both in the header and the query",
            ))
        }
        (Some(a), false) => parse_header(a, req.headers)?,
        (None, true) => parse_query(&pairs)?,
        (None, false) => {
            if pairs.iter().any(|(k, _)| k == "AWSAccessKeyId") {
                // SigV2 presigned URLs (boto3's default without signature_version="s3v4").
                return Err(SigError::Algorithm);
            }
            return Err(SigError::Missing);
        }
    };
    if p.service != "s3" {
        return Err(SigError::Scope("the service must be s3"));
    }
    if p.region != region {
        return Err(SigError::Scope(
            "the region is not the one this listener signs for",
        ));
    }
    if p.amz_date.get(..8) != Some(p.date.as_str()) {
        return Err(SigError::Scope(
            "the credential date is not the request's date",
        ));
    }
    let signed_at = parse_amz_date(&p.amz_date).ok_or(SigError::Malformed("x-amz-date"))?;
    let now_s = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    match p.presigned {
        None => {
            if now_s.abs_diff(signed_at) > MAX_SKEW.as_secs() {
                return Err(SigError::Skewed);
            }
        }
        Some(expires) => {
            if signed_at > now_s + MAX_SKEW.as_secs() {
                return Err(SigError::Skewed);
            }
            if now_s > signed_at + expires {
                return Err(SigError::Expired);
            }
        }
    }
    // The signed header list: sorted, lower case, with host and every x-amz-* header present.
    let mut sorted = p.signed_headers.clone();
    sorted.sort();
    if sorted != p.signed_headers
        || p.signed_headers
            .iter()
            .any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(SigError::Malformed(
            "SignedHeaders must be sorted lower-case names",
        ));
    }
    if !p.signed_headers.iter().any(|h| h == "host") {
        return Err(SigError::UnsignedHeader("host".into()));
    }
    // S3 refuses x-amz-* headers that are present but not signed: one could change what the
    // request does (a copy source, a checksum) without breaking the signature.
    for name in req.headers.keys() {
        let n = name.as_str();
        if n.starts_with("x-amz-") && !p.signed_headers.iter().any(|h| h == n) {
            return Err(SigError::UnsignedHeader(n.to_string()));
        }
    }
    let payload_header = req
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok());
    let (payload, hashed) = match (p.presigned, payload_header) {
        (None, None) => return Err(SigError::Malformed("x-amz-content-sha256 is required")),
        (Some(_), None) => (PayloadMode::Unsigned, "UNSIGNED-PAYLOAD".to_string()),
        (_, Some(v)) => (payload_mode(v)?, v.to_string()),
    };
    let mut canonical_headers = String::new();
    for h in &p.signed_headers {
        let v = canonical_header_value(req.headers, h)
            .ok_or(SigError::Malformed("a signed header is missing"))?;
        canonical_headers.push_str(h);
        canonical_headers.push(':');
        canonical_headers.push_str(&v);
        canonical_headers.push('\n');
    }
    let presigned = p.presigned.is_some();
    let query = super::query::canonical(
        pairs
            .iter()
            .filter(|(k, _)| !(presigned && k == "X-Amz-Signature")),
    );
    let secret = secret_of(&p.access_key).ok_or(SigError::UnknownKey)?;
    let key = keys.signing_key(&p.access_key, &secret, &p.date, &p.region);
    let scope = format!("{}/{}/s3/aws4_request", p.date, p.region);
    let signed_list = p.signed_headers.join(";");
    let check = |path: &str| {
        let creq = format!(
            "{}\n{path}\n{query}\n{canonical_headers}\n{signed_list}\n{hashed}",
            req.method
        );
        let sts = format!(
            "{ALGORITHM}\n{}\n{scope}\n{}",
            p.amz_date,
            sha256_hex(creq.as_bytes())
        );
        let sig = hex::encode(hmac::sign(&key, sts.as_bytes()));
        constant_time::verify_slices_are_equal(sig.as_bytes(), p.signature.as_bytes()).is_ok()
    };
    let path = if req.raw_path.is_empty() {
        "/"
    } else {
        req.raw_path
    };
    let ok = check(path)
        || percent_decode(path)
            .map(|d| uri_encode(&d, true))
            .is_some_and(|alt| alt != path && check(&alt));
    if !ok {
        return Err(SigError::Mismatch);
    }
    Ok(Verified {
        access_key: p.access_key,
        payload,
        presigned: p.presigned.is_some(),
        signed_headers: p.signed_headers,
    })
}

fn payload_mode(v: &str) -> Result<PayloadMode, SigError> {
    Ok(match v {
        "UNSIGNED-PAYLOAD" => PayloadMode::Unsigned,
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => PayloadMode::StreamingUnsignedTrailer,
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" | "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" => {
            PayloadMode::StreamingSigned
        }
        h if h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            PayloadMode::Sha256(h.to_string())
        }
        _ => return Err(SigError::Malformed("x-amz-content-sha256")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn at(s: &str) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(parse_amz_date(s).unwrap())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn secret(ak: &str) -> Option<String> {
        (ak == "AKIAIOSFODNN7EXAMPLE").then(|| SECRET.to_string())
    }

    /// AWS's published example "GET Object" (Signature Version 4, S3 API reference).
    #[test]
    fn aws_get_object_example() {
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
        ]);
        let req = Inbound {
            method: "GET",
            raw_path: "/test.txt",
            query: None,
            headers: &h,
        };
        let v = verify(
            &req,
            secret,
            "us-east-1",
            at("20130524T000000Z"),
            &KeyCache::default(),
        )
        .expect("verifies");
        assert_eq!(v.access_key, "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(v.payload, PayloadMode::Sha256(EMPTY_SHA256.into()));
        // One bit off, another secret, another region, too late: each refused.
        let bad = Inbound {
            method: "HEAD",
            ..req
        };
        assert_eq!(
            verify(
                &bad,
                secret,
                "us-east-1",
                at("20130524T000000Z"),
                &KeyCache::default()
            ),
            Err(SigError::Mismatch)
        );
        assert_eq!(
            verify(
                &req,
                |_| Some("other".into()),
                "us-east-1",
                at("20130524T000000Z"),
                &KeyCache::default()
            ),
            Err(SigError::Mismatch)
        );
        assert!(matches!(
            verify(
                &req,
                secret,
                "eu-west-1",
                at("20130524T000000Z"),
                &KeyCache::default()
            ),
            Err(SigError::Scope(_))
        ));
        assert_eq!(
            verify(
                &req,
                secret,
                "us-east-1",
                at("20130524T002000Z"),
                &KeyCache::default()
            ),
            Err(SigError::Skewed)
        );
        assert_eq!(
            verify(
                &req,
                |_| None,
                "us-east-1",
                at("20130524T000000Z"),
                &KeyCache::default()
            ),
            Err(SigError::UnknownKey)
        );
    }

    /// AWS's published example "PUT Object": a real payload hash and an extra x-amz header.
    #[test]
    fn aws_put_object_example() {
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"),
        ]);
        let req = Inbound {
            method: "PUT",
            raw_path: "/test%24file.text",
            query: None,
            headers: &h,
        };
        let v = verify(
            &req,
            secret,
            "us-east-1",
            at("20130524T000000Z"),
            &KeyCache::default(),
        )
        .expect("verifies");
        assert_eq!(
            v.payload,
            PayloadMode::Sha256(
                "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072".into()
            )
        );
        // The same request with an unsigned x-amz header added is refused outright.
        let mut more = h.clone();
        more.insert("x-amz-copy-source", "examplebucket/secret".parse().unwrap());
        let req2 = Inbound {
            headers: &more,
            ..req
        };
        assert_eq!(
            verify(
                &req2,
                secret,
                "us-east-1",
                at("20130524T000000Z"),
                &KeyCache::default()
            ),
            Err(SigError::UnsignedHeader("x-amz-copy-source".into()))
        );
    }

    /// AWS's published example of a presigned URL (query string authentication).
    #[test]
    fn aws_presigned_url_example() {
        let h = headers(&[("host", "examplebucket.s3.amazonaws.com")]);
        let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
        let req = Inbound {
            method: "GET",
            raw_path: "/test.txt",
            query: Some(q),
            headers: &h,
        };
        let v = verify(
            &req,
            secret,
            "us-east-1",
            at("20130524T120000Z"),
            &KeyCache::default(),
        )
        .expect("verifies");
        assert!(v.presigned);
        assert_eq!(
            verify(
                &req,
                secret,
                "us-east-1",
                at("20130525T000001Z"),
                &KeyCache::default()
            ),
            Err(SigError::Expired)
        );
    }

    /// AWS's published example "GET Bucket (List Objects)": the canonical query of
    /// `max-keys=2&prefix=J`, sorted and encoded.
    #[test]
    fn aws_list_objects_example() {
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;x-amz-content-sha256;x-amz-date,Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
        ]);
        let now = at("20130524T000000Z");
        for q in [
            "max-keys=2&prefix=J",
            "prefix=J&max-keys=2",
            "max%2Dkeys=2&prefix=%4A",
        ] {
            let req = Inbound {
                method: "GET",
                raw_path: "/",
                query: Some(q),
                headers: &h,
            };
            assert!(
                verify(&req, secret, "us-east-1", now, &KeyCache::default()).is_ok(),
                "{q}"
            );
        }
        let other = Inbound {
            method: "GET",
            raw_path: "/",
            query: Some("max-keys=2&prefix=K"),
            headers: &h,
        };
        assert_eq!(
            verify(&other, secret, "us-east-1", now, &KeyCache::default()),
            Err(SigError::Mismatch)
        );
    }

    /// Requests boto3 1.44 really sent (captured by a socket that answered 200), replayed:
    /// a PutObject of a key with a space, `+`, `!()~*'` and a non-ASCII letter, with its
    /// default CRC32 header; a ListObjectsV2 whose prefix has a `+` and a space; a presigned
    /// GET with a response-content-disposition that needs encoding.
    #[test]
    fn captured_boto3_requests_verify() {
        let boto = |ak: &str| (ak == "AKIDLOCALTEST0000001").then(|| "s3cr3t/abc+def".to_string());
        let put = headers(&[
            ("host", "127.0.0.1:48287"),
            ("accept-encoding", "identity"),
            ("expect", "100-continue"),
            ("x-amz-checksum-crc32", "94Re7Q=="),
            ("x-amz-sdk-checksum-algorithm", "CRC32"),
            ("x-amz-date", "20261206T051131Z"),
            ("x-amz-content-sha256", "990cb8ebd0afb7150da453a213036a92f2c05e091df0d803e62d257ea7796c27"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDLOCALTEST0000001/20261206/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-checksum-crc32;x-amz-content-sha256;x-amz-date;x-amz-sdk-checksum-algorithm, Signature=43b893d9c9f74cf27a7a2d4b6034c6595d27a044ba4fe3332dcb88a5aa080416"),
            ("content-length", "3"),
        ]);
        let req = Inbound {
            method: "PUT",
            raw_path: "/media/user_a1/images/a%20b%2Bc%21%28x%29~%2A%27%C3%A9.png",
            query: None,
            headers: &put,
        };
        let v = verify(
            &req,
            boto,
            "us-east-1",
            at("20261206T051131Z"),
            &KeyCache::default(),
        )
        .expect("boto3's PutObject verifies");
        assert_eq!(
            v.payload,
            PayloadMode::Sha256(
                "990cb8ebd0afb7150da453a213036a92f2c05e091df0d803e62d257ea7796c27".into()
            )
        );
        let key = super::super::ops::classify("PUT", req.raw_path, None, &put, "media")
            .unwrap()
            .key;
        assert_eq!(
            key.as_deref(),
            Some("user_a1/images/a b+c!(x)~*'\u{e9}.png")
        );
        let list = headers(&[
            ("host", "127.0.0.1:48287"),
            ("x-amz-date", "20261206T051132Z"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDLOCALTEST0000001/20261206/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=5157679e47586c4128e19dc94f50af9b273b846caa79f1b5cf803adf2cac5bac"),
        ]);
        let q = "list-type=2&prefix=user_a%2Fa%2Bb%20c&max-keys=5&encoding-type=url";
        let req = Inbound {
            method: "GET",
            raw_path: "/media",
            query: Some(q),
            headers: &list,
        };
        verify(
            &req,
            boto,
            "us-east-1",
            at("20261206T051132Z"),
            &KeyCache::default(),
        )
        .expect("boto3's ListObjectsV2 verifies");
        // The same query with the + left raw is a literal plus too: the same signature.
        let raw_plus = Inbound {
            query: Some("list-type=2&prefix=user_a/a+b%20c&max-keys=5&encoding-type=url"),
            ..req
        };
        assert!(verify(
            &raw_plus,
            boto,
            "us-east-1",
            at("20261206T051132Z"),
            &KeyCache::default()
        )
        .is_ok());
        // A + meant as a space is not one.
        let plus_space = Inbound {
            query: Some("list-type=2&prefix=user_a%2Fa%2Bb+c&max-keys=5&encoding-type=url"),
            ..req
        };
        assert_eq!(
            verify(
                &plus_space,
                boto,
                "us-east-1",
                at("20261206T051132Z"),
                &KeyCache::default()
            ),
            Err(SigError::Mismatch)
        );
        let pre = headers(&[("host", "127.0.0.1:9")]);
        let req = Inbound {
            method: "GET",
            raw_path: "/media/user_a1/images/pre.png",
            query: Some("response-content-disposition=attachment%3B%20filename%3D%22a%2Bb.png%22&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDLOCALTEST0000001%2F20261206%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261206T052023Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=80ef37751af97d4ec478abf05030c61d5ddcf72921b7bf731eccc4161a4efd76"),
            headers: &pre,
        };
        let v = verify(
            &req,
            |ak| (ak == "AKIDLOCALTEST0000001").then(|| "x".to_string()),
            "us-east-1",
            at("20261206T052100Z"),
            &KeyCache::default(),
        )
        .expect("boto3's presigned GET verifies");
        assert!(v.presigned);
        assert_eq!(
            claimed_access_key(&req).as_deref(),
            Some("AKIDLOCALTEST0000001")
        );
        let h = headers(&[("authorization", "AWS4-HMAC-SHA256 Credential=AKIDX/20261206/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00")]);
        assert_eq!(
            claimed_access_key(&Inbound {
                method: "GET",
                raw_path: "/",
                query: None,
                headers: &h
            })
            .as_deref(),
            Some("AKIDX")
        );
    }

    /// Requests signed by aws-sigv4 (the signer Portier uses upstream) verify, including keys
    /// that need encoding and a query.
    #[test]
    fn aws_sigv4_signed_requests_verify() {
        let creds = crate::s3::Credentials::new("AKIDLOCAL", "local/secret+key", None).unwrap();
        let now = SystemTime::now();
        for (path, query) in [
            (
                "/media/user_1/images/a%20b%2Bc%21%28x%29~%2A%27%C3%A9%25.txt",
                None,
            ),
            ("/media", Some("list-type=2&prefix=user_1%2F&max-keys=5")),
            ("/media/user_1/videos/big.bin", Some("uploads=")),
        ] {
            let uri: http::Uri = match query {
                Some(q) => format!("http://127.0.0.1:9080{path}?{q}"),
                None => format!("http://127.0.0.1:9080{path}"),
            }
            .parse()
            .unwrap();
            let mut h = headers(&[("x-amz-meta-title", "a  b"), ("content-type", "image/png")]);
            let signed = crate::s3::sign_headers(
                &creds,
                "us-east-1",
                "PUT",
                &uri,
                &h,
                crate::s3::Payload::Unsigned,
                now,
            )
            .unwrap();
            h.insert("host", "127.0.0.1:9080".parse().unwrap());
            for (k, v) in signed {
                h.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            let req = Inbound {
                method: "PUT",
                raw_path: path,
                query,
                headers: &h,
            };
            let v = verify(
                &req,
                |ak| (ak == "AKIDLOCAL").then(|| "local/secret+key".to_string()),
                "us-east-1",
                now,
                &KeyCache::default(),
            )
            .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(v.payload, PayloadMode::Unsigned);
        }
    }

    #[test]
    fn what_is_refused_before_any_crypto() {
        let now = at("20130524T000000Z");
        let kc = KeyCache::default();
        let none = headers(&[("host", "h")]);
        let req = Inbound {
            method: "GET",
            raw_path: "/b/k",
            query: None,
            headers: &none,
        };
        assert_eq!(
            verify(&req, secret, "us-east-1", now, &kc),
            Err(SigError::Missing)
        );
        let v2 = Inbound {
            query: Some("AWSAccessKeyId=AKID&Signature=x&Expires=1"),
            ..req
        };
        assert_eq!(
            verify(&v2, secret, "us-east-1", now, &kc),
            Err(SigError::Algorithm)
        );
        let h = headers(&[
            ("host", "h"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=x-amz-date;host,Signature=00"),
        ]);
        let unsorted = Inbound { headers: &h, ..req };
        assert!(matches!(
            verify(&unsorted, secret, "us-east-1", now, &kc),
            Err(SigError::Malformed(_))
        ));
        let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=604801&X-Amz-SignedHeaders=host&X-Amz-Signature=00";
        let long = Inbound {
            query: Some(q),
            ..req
        };
        assert!(matches!(
            verify(&long, secret, "us-east-1", now, &kc),
            Err(SigError::Malformed(_))
        ));
    }

    #[test]
    fn amz_dates() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20130524T000000Z"), Some(1_369_353_600));
        assert_eq!(parse_amz_date("2013-05-24T00:00:00Z"), None);
        assert_eq!(parse_amz_date("20131324T000000Z"), None);
    }
}
