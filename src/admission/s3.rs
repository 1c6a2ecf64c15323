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
use crate::s3::{canonical_key, kind_folder, KeyError};

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

/// The operation an object-route request performs, once policy allowed it.
pub fn operation(
    obj: &ObjectRoute,
    key: Option<Result<String, KeyError>>,
    method: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    identity: Option<&Identity>,
    default_limit: u64,
) -> Result<S3Op, Reason> {
    if unsupported(headers) {
        return Err(Reason::OperationNotSupported);
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
}

/// Decides `POST .../presigned-url`: the object route's own policy decides, for the method
/// and key asked, exactly as for a direct request.
pub fn presign(
    set: &PolicySet,
    presign_route: &Route,
    body: &[u8],
    authn: &Authn,
) -> Result<PresignGrant, Reason> {
    let ask: PresignRequest = serde_json::from_slice(body).map_err(|_| Reason::BadRequest)?;
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
    Ok(PresignGrant {
        method: ask.method,
        key,
        expires_in: ask.expires_in,
    })
}
