//! S3 routes: which store operation an admitted request is, and whether a presign request
//! is granted. Plain functions over the request's method, key, query and headers; the proxy
//! performs the I/O (sniffing the first body bytes, signing, streaming).

use http::HeaderMap;
use serde::Deserialize;

use super::content_length;
use crate::auth::Identity;
use crate::error::Reason;
use crate::path::canonicalize;
use crate::policy::{
    evaluate, Authn, ContentType, Decision, NoTrace, ObjectRoute, PolicySet, RequestFacts, Route,
    RouteKind,
};
use crate::s3::front::{list_query, object_path, PresignMethod, PresignRequest};
use crate::s3::{canonical_key, encode_key_for_path, kind_folder, KeyError, PresignExtras};

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

/// A JSON object body as `T`; anything else is 400 `bad_request`. Serde would also read a
/// struct from an array (`["user_x/images/a.png"]` as a delete of that key), a shape no
/// client means.
fn object_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Reason> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Reason::BadRequest);
    }
    serde_json::from_slice(body).map_err(|_| Reason::BadRequest)
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
/// (at most the kind's limit) and media type (one of the kind's types), and a download is
/// served as an attachment ([`download_extras`]).
pub fn presign(
    set: &PolicySet,
    presign_route: &Route,
    body: &[u8],
    authn: &Authn,
    default_limit: u64,
) -> Result<PresignGrant, Reason> {
    let ask: PresignRequest = object_body(body)?;
    if ask.expires_in == Some(0) {
        return Err(Reason::BadRequest);
    }
    let RouteKind::S3Presign { target, .. } = presign_route.kind else {
        return Err(Reason::Internal);
    };
    let plan = authorize_key(
        set,
        target,
        ask.method.as_str(),
        &ask.key,
        authn,
        default_limit,
    )?;
    let key = plan.key.clone();
    let types = plan.types.as_slice();
    let mut extras = PresignExtras::default();
    match ask.method {
        PresignMethod::Put => {
            let limit = plan.limit;
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
        PresignMethod::Get => extras = download_extras(),
    }
    Ok(PresignGrant {
        method: ask.method,
        key,
        expires_in: ask.expires_in,
        extras,
    })
}

/// What every presigned GET Portier issues binds: `response-content-disposition=attachment`,
/// whatever the kind. The URL bypasses Portier, and the egress listener lets backends write
/// keys without the front door's type checks, so a stored type is not trusted to render: a
/// navigation to the URL downloads the object, while `<img>`/`<video>` tags ignore the
/// disposition and still show it.
pub fn download_extras() -> PresignExtras {
    PresignExtras {
        headers: Vec::new(),
        query: vec![("response-content-disposition".into(), "attachment".into())],
    }
}

/// The key rules on a key given literally (a JSON string or a form field): nothing is
/// percent-decoded, the key is exactly what was sent. It is checked as the object route
/// checks the decoded key of a path, so the two accept the same keys: a `%` not followed by
/// two hex digits is an ordinary character (`100%.txt`; `100%25.txt` in a path), and a `%`
/// followed by two (`a%41.png`) is refused as ambiguous (400 `bad_key`), as a path's `%2541`
/// is.
pub fn literal_key(key: &str) -> Result<String, KeyError> {
    canonical_key(&encode_key_for_path(key))
}

/// The kind folder of a literal key that passes the key rules, for the decision log (also
/// of refused requests).
pub fn literal_kind(key: &str) -> Option<String> {
    literal_key(key)
        .ok()
        .and_then(|k| kind_folder(&k).map(str::to_string))
}

/// The kind a refused JSON request (presign, delete) was about, when its body names a valid
/// key: the decision log records it for refusals too. Read leniently; never decides.
pub fn asked_kind(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let key = v
        .get("s3_key")
        .or_else(|| v.get("key"))
        .or_else(|| v.get("s3_keys").and_then(|ks| ks.get(0)))?
        .as_str()?;
    literal_kind(key)
}

/// The kind folder a list request asks for (`content_type=image` is `images`), when well
/// formed, for the decision log of a refused listing.
pub fn asked_list_kind(query: Option<&str>) -> Option<String> {
    let ct = url_pairs(query.unwrap_or(""))?
        .into_iter()
        .find(|(k, _)| k == "content_type")?
        .1;
    valid_list_type(&ct).then(|| format!("{ct}s"))
}

fn valid_list_type(ct: &str) -> bool {
    !ct.is_empty()
        && ct
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'-')
}

/// What the object route's policy says about one key: the canonical key, its kind, its size
/// limit and the content types its first bytes must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPlan {
    pub key: String,
    pub kind: Option<String>,
    pub limit: u64,
    pub types: Vec<ContentType>,
}

/// Decides one key exactly as a direct request to the object route (`method` on
/// `<prefix>/<key>`) would be decided: the key's form, its owner, its kind and the kind's
/// plan and feature rules, the route's requirements. Every file API operation calls this.
/// `key` is literal (a JSON string, a form field): see [`literal_key`].
pub fn authorize_key(
    set: &PolicySet,
    object_route: usize,
    method: &str,
    key: &str,
    authn: &Authn,
    default_limit: u64,
) -> Result<KeyPlan, Reason> {
    let key = literal_key(key).map_err(|e| {
        log::info!("bad object key: {e}");
        Reason::BadKey
    })?;
    let route = set.routes.get(object_route).ok_or(Reason::Internal)?;
    let path = object_path(&route.pattern, &key)
        .and_then(|p| canonicalize(&p).ok())
        .ok_or(Reason::BadKey)?;
    let m = match set.lookup(method, &path) {
        Ok(m) if m.index == object_route => m,
        Ok(_) => return Err(Reason::NoRoute),
        Err(r) => return Err(r),
    };
    let facts = RequestFacts {
        method,
        navigation: false,
        handshake: None,
    };
    if let Decision::Deny(reason) = evaluate(&m, &path, &facts, authn, &mut NoTrace) {
        return Err(reason);
    }
    let RouteKind::S3Object(obj) = &m.route.kind else {
        return Err(Reason::Internal);
    };
    let kind = kind_folder(&key).map(str::to_string);
    let rule = kind.as_deref().and_then(|k| obj.kinds.get(k));
    Ok(KeyPlan {
        limit: rule
            .and_then(|r| r.max_body_bytes)
            .or(m.route.max_body_bytes)
            .unwrap_or(default_limit),
        types: rule.map(|r| r.content_types.clone()).unwrap_or_default(),
        kind,
        key,
    })
}

/// Body of the file API's delete.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteRequest {
    #[serde(default)]
    s3_key: Option<String>,
    #[serde(default)]
    s3_keys: Option<Vec<String>>,
}

/// Most keys one batch delete may name (S3's DeleteObjects limit).
pub const MAX_BATCH_DELETE: usize = 1000;

/// Decides a delete: every key is authorized before any is deleted, so one foreign key
/// refuses the whole batch.
pub fn delete_keys(
    set: &PolicySet,
    object_route: usize,
    body: &[u8],
    authn: &Authn,
) -> Result<Vec<String>, Reason> {
    let ask: DeleteRequest = object_body(body)?;
    let keys = match (ask.s3_key, ask.s3_keys) {
        (Some(k), None) => vec![k],
        (None, Some(ks)) if !ks.is_empty() && ks.len() <= MAX_BATCH_DELETE => ks,
        _ => return Err(Reason::BadRequest),
    };
    let mut out = Vec::with_capacity(keys.len());
    for k in &keys {
        let plan = authorize_key(set, object_route, "DELETE", k, authn, 0)?;
        if !out.contains(&plan.key) {
            out.push(plan.key);
        }
    }
    Ok(out)
}

/// A listing the caller may see: one kind folder of their own prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPlan {
    pub prefix: String,
    pub kind: String,
    pub limit: u32,
    pub token: Option<String>,
}

/// Decides `GET ...?user_id=&content_type=[&limit=&next_token=]`: `user_id` must be the
/// caller, and the kind folder is decided by the object route's policy as a read of a key in
/// it would be (plan rules of the kind included).
pub fn list_request(
    set: &PolicySet,
    object_route: usize,
    query: Option<&str>,
    authn: &Authn,
) -> Result<ListPlan, Reason> {
    let Authn::SignedIn(id) = authn else {
        return Err(Reason::TokenMissing);
    };
    let (mut user, mut content_type, mut limit, mut token) = (None, None, 1000u32, None);
    for (k, v) in url_pairs(query.unwrap_or("")).ok_or(Reason::BadRequest)? {
        match k.as_str() {
            "user_id" => user = Some(v),
            "content_type" => content_type = Some(v),
            "limit" => {
                limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or(Reason::BadRequest)?
            }
            "next_token" if !v.is_empty() => token = Some(v),
            "next_token" => {}
            _ => return Err(Reason::BadRequest),
        }
    }
    let (Some(user), Some(ct)) = (user, content_type) else {
        return Err(Reason::BadRequest);
    };
    if user != id.user_id {
        return Err(Reason::NotOwner);
    }
    if !valid_list_type(&ct) {
        return Err(Reason::BadRequest);
    }
    let kind = format!("{ct}s");
    // A read of a key in the folder decides the listing (owner, kind, the kind's plan).
    let probe = format!("{user}/{kind}/.portier-list");
    authorize_key(set, object_route, "GET", &probe, authn, 0)?;
    Ok(ListPlan {
        prefix: format!("{user}/{kind}/"),
        kind,
        limit,
        token,
    })
}

/// Decoded `name=value` pairs of a query string (`+` is a space); `None` when malformed.
fn url_pairs(q: &str) -> Option<Vec<(String, String)>> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((decode_component(k)?, decode_component(v)?))
        })
        .collect()
}

fn decode_component(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = crate::path::hex(*b.get(i + 1)?)?;
                let l = crate::path::hex(*b.get(i + 2)?)?;
                out.push(h * 16 + l);
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
    String::from_utf8(out)
        .ok()
        .filter(|s| !s.chars().any(char::is_control))
}
