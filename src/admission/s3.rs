//! S3 routes: which store operation an admitted request is, and whether a presign request
//! is granted. Plain functions over the request's method, key, query and headers; the proxy
//! performs the I/O (sniffing the first body bytes, signing, streaming).

use http::HeaderMap;

use super::content_length;
use crate::auth::Identity;
use crate::error::Reason;
use crate::path::canonicalize;
use crate::policy::{
    evaluate, Authn, ContentType, Decision, NoTrace, ObjectRoute, PolicySet, RequestFacts, Route,
    RouteKind,
};
use crate::s3::front::{list_query, object_path, PresignMethod, PresignRequest};
use crate::s3::{canonical_key, kind_folder, KeyError, PresignExtras};

/// An admitted operation on an object route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Op {
    /// ListObjectsV2 with this (caller-confined) query string.
    List {
        query: String,
    },
    Get {
        key: String,
    },
    Head {
        key: String,
    },
    Delete {
        key: String,
    },
    /// PutObject of `length` bytes, at most `limit`; the first bytes must be one of `sniff`
    /// when it is not empty.
    Put {
        key: String,
        length: u64,
        limit: u64,
        sniff: Vec<ContentType>,
    },
}

impl S3Op {
    pub fn method(&self) -> &'static str {
        match self {
            S3Op::List { .. } | S3Op::Get { .. } => "GET",
            S3Op::Head { .. } => "HEAD",
            S3Op::Delete { .. } => "DELETE",
            S3Op::Put { .. } => "PUT",
        }
    }

    /// The S3 API name, for `explain` and logs.
    pub fn name(&self) -> &'static str {
        match self {
            S3Op::List { .. } => "ListObjectsV2",
            S3Op::Get { .. } => "GetObject",
            S3Op::Head { .. } => "HeadObject",
            S3Op::Delete { .. } => "DeleteObject",
            S3Op::Put { .. } => "PutObject",
        }
    }

    pub fn key(&self) -> Option<&str> {
        match self {
            S3Op::List { .. } => None,
            S3Op::Get { key } | S3Op::Head { key } | S3Op::Delete { key } => Some(key),
            S3Op::Put { key, .. } => Some(key),
        }
    }
}

/// Headers that ask the store for something Portier does not check: a copy (its source key
/// would need its own ownership check) or an aws-chunked body (its chunk envelope would be
/// stored as the object).
fn unsupported(headers: &HeaderMap) -> bool {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    headers.contains_key("x-amz-copy-source")
        || h("content-encoding").contains("aws-chunked")
        || h("x-amz-content-sha256").starts_with("STREAMING-")
        || !h("x-amz-decoded-content-length").is_empty()
}

/// The parts of an object-route request the operation depends on.
#[derive(Debug, Clone, Copy)]
pub struct ObjectRequest<'a> {
    pub method: &'a str,
    /// The path as the client sent it, before canonicalisation.
    pub raw_path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub identity: Option<&'a Identity>,
}

/// The operation an object-route request performs, once policy allowed it.
pub fn operation(
    obj: &ObjectRoute,
    key: Option<Result<String, KeyError>>,
    req: &ObjectRequest<'_>,
    default_limit: u64,
) -> Result<S3Op, Reason> {
    let ObjectRequest {
        method,
        raw_path,
        query,
        headers,
        identity,
    } = *req;
    if unsupported(headers) {
        return Err(Reason::OperationNotSupported);
    }
    // Canonicalisation collapses `//`, so `user_a//images/x` would be stored as another key
    // than the one asked for: refuse it like the other ambiguous keys.
    if raw_path.contains("//") {
        return Err(Reason::BadKey);
    }
    let key = match key {
        None => None,
        Some(Ok(k)) => Some(k),
        Some(Err(e)) => {
            log::info!("bad object key: {e}");
            return Err(Reason::BadKey);
        }
    };
    match (method, key) {
        ("GET", None) => {
            let id = identity.ok_or(Reason::TokenMissing)?;
            list_query(&id.user_id, query)
                .map(|query| S3Op::List { query })
                .map_err(|e| {
                    log::info!("list refused: {e}");
                    Reason::OperationNotSupported
                })
        }
        (_, None) => Err(Reason::BadKey),
        ("GET", Some(key)) => Ok(S3Op::Get { key }),
        ("HEAD", Some(key)) => Ok(S3Op::Head { key }),
        ("DELETE", Some(key)) => Ok(S3Op::Delete { key }),
        ("PUT", Some(key)) => {
            let rule = kind_folder(&key).and_then(|kind| obj.kinds.get(kind));
            let limit = rule.and_then(|r| r.max_body_bytes).unwrap_or(default_limit);
            // S3 needs the length of a PutObject up front; refuse as S3 does.
            let length = content_length(headers).ok_or(Reason::LengthRequired)?;
            if length > limit {
                return Err(Reason::BodyTooLarge);
            }
            Ok(S3Op::Put {
                key,
                length,
                limit,
                sniff: rule.map(|r| r.content_types.clone()).unwrap_or_default(),
            })
        }
        _ => Err(Reason::MethodNotAllowed),
    }
}

/// A granted presign request: what to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresignGrant {
    pub method: PresignMethod,
    pub key: String,
    pub expires_in: Option<u64>,
    /// Headers and query parameters the URL binds.
    pub extras: PresignExtras,
}

/// Decides `POST .../presigned-url`: the object route's own policy decides, for the method
/// and key asked, exactly as for a direct request. A URL goes straight to the store, so what
/// Portier would check on the bytes is bound into the URL instead: an upload's exact length
/// (at most the kind's limit) and media type (one of the kind's types), and a download of a
/// kind whose types are not checked is served as an attachment, never rendered.
pub fn presign(
    set: &PolicySet,
    presign_route: &Route,
    body: &[u8],
    authn: &Authn,
    default_limit: u64,
) -> Result<PresignGrant, Reason> {
    let ask: PresignRequest = serde_json::from_slice(body).map_err(|_| Reason::BadRequest)?;
    if ask.expires_in == Some(0) {
        return Err(Reason::BadRequest);
    }
    let key = canonical_key(&ask.key).map_err(|_| Reason::BadKey)?;
    let RouteKind::S3Presign { target, .. } = presign_route.kind else {
        return Err(Reason::Internal);
    };
    let pattern = &set.routes.get(target).ok_or(Reason::Internal)?.pattern;
    let path = object_path(pattern, &key)
        .and_then(|p| canonicalize(&p).ok())
        .ok_or(Reason::BadKey)?;
    let method = ask.method.as_str();
    let m = match set.lookup(method, &path) {
        Ok(m) if m.index == target => m,
        Ok(_) => return Err(Reason::NoRoute),
        Err(r) => return Err(r),
    };
    let facts = RequestFacts {
        method,
        navigation: false,
    };
    if let Decision::Deny(reason) = evaluate(&m, &path, &facts, authn, &mut NoTrace) {
        return Err(reason);
    }
    let RouteKind::S3Object(obj) = &m.route.kind else {
        return Err(Reason::Internal);
    };
    let rule = kind_folder(&key).and_then(|k| obj.kinds.get(k));
    let types = rule.map(|r| r.content_types.as_slice()).unwrap_or_default();
    let mut extras = PresignExtras::default();
    match ask.method {
        PresignMethod::Put => {
            let limit = rule
                .and_then(|r| r.max_body_bytes)
                .or(m.route.max_body_bytes)
                .unwrap_or(default_limit);
            let length = ask.content_length.ok_or(Reason::LengthRequired)?;
            if length > limit {
                return Err(Reason::BodyTooLarge);
            }
            extras
                .headers
                .push(("content-length".into(), length.to_string()));
            match (&ask.content_type, types.is_empty()) {
                (Some(ct), false) => {
                    if !types.iter().any(|t| t.mime() == ct) {
                        return Err(Reason::UnsupportedMediaType);
                    }
                    extras.headers.push(("content-type".into(), ct.clone()));
                }
                (None, false) => return Err(Reason::UnsupportedMediaType),
                (Some(ct), true) => {
                    if http::HeaderValue::from_str(ct).is_err() {
                        return Err(Reason::BadRequest);
                    }
                    extras.headers.push(("content-type".into(), ct.clone()));
                }
                (None, true) => {}
            }
        }
        PresignMethod::Get => {
            if types.is_empty() {
                extras
                    .query
                    .push(("response-content-disposition".into(), "attachment".into()));
            }
        }
    }
    Ok(PresignGrant {
        method: ask.method,
        key,
        expires_in: ask.expires_in,
        extras,
    })
}
