//! Which S3 operation an egress request is, on which keys, and whether a service's rules
//! allow it. Plain functions over the method, path, query and headers: deny by default,
//! every key checked (both keys of a copy, every key of a batch delete), anything Portier does
//! not know refused.

use http::HeaderMap;

use super::errors::S3Error;
use super::query;
pub use crate::config::{KeyGlob, Permission, Rule};

/// The operations egress performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    GetObject,
    HeadObject,
    PutObject,
    CopyObject,
    DeleteObject,
    DeleteObjects,
    ListObjectsV2,
    CreateMultipartUpload,
    UploadPart,
    UploadPartCopy,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    ListParts,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::GetObject => "GetObject",
            Operation::HeadObject => "HeadObject",
            Operation::PutObject => "PutObject",
            Operation::CopyObject => "CopyObject",
            Operation::DeleteObject => "DeleteObject",
            Operation::DeleteObjects => "DeleteObjects",
            Operation::ListObjectsV2 => "ListObjectsV2",
            Operation::CreateMultipartUpload => "CreateMultipartUpload",
            Operation::UploadPart => "UploadPart",
            Operation::UploadPartCopy => "UploadPartCopy",
            Operation::CompleteMultipartUpload => "CompleteMultipartUpload",
            Operation::AbortMultipartUpload => "AbortMultipartUpload",
            Operation::ListParts => "ListParts",
        }
    }
}

/// A classified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Request {
    pub op: Operation,
    /// The decoded object key (none for bucket operations).
    pub key: Option<String>,
    /// The decoded source key of a copy.
    pub copy_source: Option<String>,
    /// The prefix of a listing.
    pub prefix: Option<String>,
    /// The decoded query parameters that were checked, without the presign ones (and without
    /// `fetch-owner`): the only parameters the store gets, see [`S3Request::store_query`].
    pub params: Vec<(String, String)>,
}

impl S3Request {
    /// The query for the store: the checked parameters, SigV4-encoded and sorted.
    pub fn store_query(&self) -> String {
        query::canonical(&self.params)
    }
}

/// The query's decoded parameters: one decoding shared with the signature check, and no
/// name given twice (which value counts would otherwise depend on who reads it).
fn params(raw: Option<&str>) -> Result<Vec<(String, String)>, S3Error> {
    let p = query::pairs(raw).map_err(|_| S3Error::BAD_QUERY)?;
    if query::repeated(&p).is_some() {
        return Err(S3Error::REPEATED_PARAMETER);
    }
    Ok(p)
}

/// Query parameters each kind of request may carry (besides the presign ones).
const OBJECT_READ: &[&str] = &[
    "response-content-type",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-cache-control",
    "response-expires",
    "partNumber",
    "x-id",
];
const LIST: &[&str] = &[
    "list-type",
    "prefix",
    "delimiter",
    "max-keys",
    "continuation-token",
    "start-after",
    "encoding-type",
    "fetch-owner",
    "x-id",
];

fn only(params: &[(String, String)], allowed: &[&str]) -> Result<(), S3Error> {
    for (k, _) in params {
        if !(allowed.contains(&k.as_str()) || query::is_presign(k)) {
            return Err(S3Error::NOT_IMPLEMENTED);
        }
    }
    Ok(())
}

fn has(params: &[(String, String)], name: &str) -> bool {
    params.iter().any(|(k, _)| k == name)
}

fn get<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The key of `/<bucket>/<key>`, decoded and canonical.
fn canonical(raw: &str) -> Result<String, S3Error> {
    let decoded = query::decode(raw).map_err(|_| S3Error::INVALID_KEY)?;
    // The front door's key rules, on the decoded key; the canonical key must be the one asked.
    let k = crate::s3::canonical_key(&crate::s3::encode_key_for_path(&decoded))
        .map_err(|_| S3Error::INVALID_KEY)?;
    if k != decoded {
        return Err(S3Error::INVALID_KEY);
    }
    Ok(k)
}

/// Works out the operation of a path-style request on `bucket` (the name the services use).
pub fn classify(
    method: &str,
    raw_path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    bucket: &str,
) -> Result<S3Request, S3Error> {
    let path = raw_path.strip_prefix('/').unwrap_or(raw_path);
    let (b, raw_key) = match path.split_once('/') {
        Some((b, k)) => (b, Some(k).filter(|k| !k.is_empty())),
        None => (path, None),
    };
    if b != bucket {
        return Err(S3Error::NO_SUCH_BUCKET);
    }
    let p = params(query)?;
    // What the store gets: the parameters checked below, never a presign one (Portier signs
    // in the header), never `fetch-owner` (it would show the real bucket's owner).
    let forwarded = || -> Vec<(String, String)> {
        p.iter()
            .filter(|(k, _)| !query::is_presign(k) && k != "fetch-owner")
            .cloned()
            .collect()
    };
    let copy = headers.contains_key("x-amz-copy-source");
    let Some(raw_key) = raw_key else {
        return match method {
            "GET" if get(&p, "list-type") == Some("2") => {
                only(&p, LIST)?;
                Ok(S3Request {
                    op: Operation::ListObjectsV2,
                    key: None,
                    copy_source: None,
                    prefix: Some(get(&p, "prefix").unwrap_or("").to_string()),
                    params: forwarded(),
                })
            }
            "POST" if has(&p, "delete") => {
                only(&p, &["delete", "x-id"])?;
                Ok(S3Request {
                    op: Operation::DeleteObjects,
                    key: None,
                    copy_source: None,
                    prefix: None,
                    params: forwarded(),
                })
            }
            _ => Err(S3Error::NOT_IMPLEMENTED),
        };
    };
    let key = canonical(raw_key)?;
    let copy_source = if copy {
        Some(copy_source(headers, bucket)?)
    } else {
        None
    };
    let multipart = has(&p, "uploadId");
    let op = match (method, multipart, copy) {
        ("GET", false, false) => {
            only(&p, OBJECT_READ)?;
            Operation::GetObject
        }
        ("HEAD", false, false) => {
            only(&p, OBJECT_READ)?;
            Operation::HeadObject
        }
        ("PUT", false, false) => {
            only(&p, &["x-id"])?;
            Operation::PutObject
        }
        ("PUT", false, true) => {
            only(&p, &["x-id"])?;
            Operation::CopyObject
        }
        ("PUT", true, false) => {
            only(&p, &["uploadId", "partNumber", "x-id"])?;
            Operation::UploadPart
        }
        ("PUT", true, true) => {
            only(&p, &["uploadId", "partNumber", "x-id"])?;
            Operation::UploadPartCopy
        }
        ("DELETE", false, false) => {
            only(&p, &["x-id"])?;
            Operation::DeleteObject
        }
        ("DELETE", true, false) => {
            only(&p, &["uploadId", "x-id"])?;
            Operation::AbortMultipartUpload
        }
        ("POST", false, false) if has(&p, "uploads") => {
            only(&p, &["uploads", "x-id"])?;
            Operation::CreateMultipartUpload
        }
        ("POST", true, false) => {
            only(&p, &["uploadId", "x-id"])?;
            Operation::CompleteMultipartUpload
        }
        ("GET", true, false) => {
            only(&p, &["uploadId", "max-parts", "part-number-marker", "x-id"])?;
            Operation::ListParts
        }
        _ => return Err(S3Error::NOT_IMPLEMENTED),
    };
    Ok(S3Request {
        op,
        key: Some(key),
        copy_source,
        prefix: None,
        params: forwarded(),
    })
}

/// The source key of `x-amz-copy-source: [/]<bucket>/<key>[?versionId=...]`.
fn copy_source(headers: &HeaderMap, bucket: &str) -> Result<String, S3Error> {
    let v = headers
        .get("x-amz-copy-source")
        .and_then(|v| v.to_str().ok())
        .ok_or(S3Error::INVALID_KEY)?;
    if v.contains('?') {
        // Versions are not offered through egress.
        return Err(S3Error::NOT_IMPLEMENTED);
    }
    let v = v.strip_prefix('/').unwrap_or(v);
    let (b, k) = v.split_once('/').ok_or(S3Error::INVALID_KEY)?;
    if query::decode(b).ok().as_deref() != Some(bucket) {
        return Err(S3Error::ACCESS_DENIED);
    }
    canonical(k)
}

fn allowed(rules: &[Rule], perm: Permission, key: &str) -> bool {
    rules
        .iter()
        .any(|r| r.permissions.contains(&perm) && r.keys.iter().any(|g| g.matches(key)))
}

/// The first key of a DeleteObjects batch the rules do not let the service delete.
pub fn refused_delete_key<'a>(rules: &[Rule], keys: &'a [String]) -> Option<&'a str> {
    keys.iter()
        .find(|k| !allowed(rules, Permission::Delete, k))
        .map(String::as_str)
}

/// Whether `rules` allow the request; `keys` are the keys of a DeleteObjects body.
pub fn authorize(rules: &[Rule], req: &S3Request, delete_keys: &[String]) -> Result<(), S3Error> {
    use Operation::*;
    let key = req.key.as_deref().unwrap_or("");
    let ok = match req.op {
        GetObject => allowed(rules, Permission::Get, key),
        HeadObject => allowed(rules, Permission::Head, key) || allowed(rules, Permission::Get, key),
        PutObject
        | CreateMultipartUpload
        | UploadPart
        | CompleteMultipartUpload
        | AbortMultipartUpload
        | ListParts => allowed(rules, Permission::Put, key),
        CopyObject | UploadPartCopy => {
            allowed(rules, Permission::Put, key)
                && req
                    .copy_source
                    .as_deref()
                    .is_some_and(|s| allowed(rules, Permission::Get, s))
        }
        DeleteObject => allowed(rules, Permission::Delete, key),
        DeleteObjects => {
            !delete_keys.is_empty()
                && delete_keys
                    .iter()
                    .all(|k| allowed(rules, Permission::Delete, k))
        }
        ListObjectsV2 => {
            let prefix = req.prefix.as_deref().unwrap_or("");
            rules.iter().any(|r| {
                r.permissions.contains(&Permission::List)
                    && r.keys.iter().any(|g| g.covers_prefix(prefix))
            })
        }
    };
    if ok {
        Ok(())
    } else {
        Err(S3Error::ACCESS_DENIED)
    }
}

/// The value headers of S3's additional checksums: each holds one checksum of the body.
pub const CHECKSUM_HEADERS: &[&str] = &[
    "x-amz-checksum-crc32",
    "x-amz-checksum-crc32c",
    "x-amz-checksum-sha1",
    "x-amz-checksum-sha256",
    "x-amz-checksum-crc64nvme",
];

/// What Portier does with a client header on an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderUse {
    /// Sent to the store (and covered by Portier's signature when SigV4 signs it).
    Forward,
    /// Not sent: SDK bookkeeping, the client's own signature, and what S3 does not define for
    /// the operation.
    Drop,
    /// The request is refused: the header would change how the object is stored or who can
    /// read it, which a service's rules do not decide.
    Refuse,
}

/// Headers that set encryption keys, storage class, tags, object lock, ACLs or a website
/// redirect. Refused rather than dropped, so a client never believes one took effect.
fn refused_header(name: &str) -> bool {
    name.starts_with("x-amz-server-side-encryption-customer-")
        || name.starts_with("x-amz-copy-source-server-side-encryption-customer-")
        || name.starts_with("x-amz-object-lock-")
        || name.starts_with("x-amz-grant-")
        || matches!(
            name,
            "x-amz-server-side-encryption-aws-kms-key-id"
                | "x-amz-server-side-encryption-context"
                | "x-amz-server-side-encryption-bucket-key-enabled"
                | "x-amz-storage-class"
                | "x-amz-tagging"
                | "x-amz-tagging-directive"
                | "x-amz-website-redirect-location"
                | "x-amz-bypass-governance-retention"
                | "x-amz-acl"
        )
}

/// What an object is stored with (PutObject, CopyObject, CreateMultipartUpload).
const OBJECT_ATTRIBUTES: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-disposition",
    "content-language",
    "cache-control",
    "expires",
    "x-amz-server-side-encryption",
];

/// How an uploaded body is framed and checked (PutObject, UploadPart).
const BODY: &[&str] = &[
    "content-md5",
    "content-encoding",
    "expect",
    "x-amz-sdk-checksum-algorithm",
    "x-amz-trailer",
    "x-amz-decoded-content-length",
];

const CONDITIONAL_READ: &[&str] = &[
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
];

/// The headers S3 defines for each operation egress performs; see [`HeaderUse`].
pub fn header_use(op: Operation, name: &str) -> HeaderUse {
    use Operation::*;
    if refused_header(name) {
        return HeaderUse::Refuse;
    }
    // The message framing, whatever the operation.
    if matches!(name, "content-length" | "transfer-encoding") {
        return HeaderUse::Forward;
    }
    let meta = name.starts_with("x-amz-meta-");
    let checksum = CHECKSUM_HEADERS.contains(&name);
    let conditional_write = matches!(name, "if-match" | "if-none-match");
    let forward = match op {
        GetObject | HeadObject => {
            name == "range" || CONDITIONAL_READ.contains(&name) || name == "x-amz-checksum-mode"
        }
        PutObject => {
            meta || checksum
                || conditional_write
                || OBJECT_ATTRIBUTES.contains(&name)
                || BODY.contains(&name)
        }
        CopyObject => {
            meta || conditional_write
                || OBJECT_ATTRIBUTES.contains(&name)
                || name.starts_with("x-amz-copy-source-if-")
                || matches!(
                    name,
                    "x-amz-metadata-directive" | "x-amz-checksum-algorithm"
                )
        }
        CreateMultipartUpload => {
            meta || OBJECT_ATTRIBUTES.contains(&name)
                || matches!(name, "x-amz-checksum-algorithm" | "x-amz-checksum-type")
        }
        UploadPart => checksum || BODY.contains(&name),
        UploadPartCopy => {
            name == "x-amz-copy-source-range" || name.starts_with("x-amz-copy-source-if-")
        }
        CompleteMultipartUpload => {
            checksum
                || conditional_write
                || matches!(
                    name,
                    "content-type"
                        | "content-md5"
                        | "expect"
                        | "x-amz-checksum-type"
                        | "x-amz-mp-object-size"
                        | "x-amz-sdk-checksum-algorithm"
                )
        }
        DeleteObject => name == "if-match",
        AbortMultipartUpload | ListParts | ListObjectsV2 | DeleteObjects => false,
    };
    if forward {
        HeaderUse::Forward
    } else {
        HeaderUse::Drop
    }
}

/// Refuses a request carrying a header that [`header_use`] refuses.
pub fn check_headers(op: Operation, headers: &HeaderMap) -> Result<(), S3Error> {
    if headers
        .keys()
        .any(|n| header_use(op, n.as_str()) == HeaderUse::Refuse)
    {
        return Err(S3Error::HEADER_REFUSED);
    }
    Ok(())
}

/// A DeleteObjects body, checked: its canonical keys and whether the answer is quiet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteBatch {
    pub keys: Vec<String>,
    pub quiet: Option<bool>,
}

/// The keys (and `Quiet`) of a DeleteObjects body; versions are refused (not offered).
pub fn delete_batch(xml: &[u8]) -> Result<DeleteBatch, S3Error> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Delete {
        #[serde(default, rename = "Object")]
        objects: Vec<Obj>,
        #[serde(default)]
        quiet: Option<bool>,
    }
    // Unknown children (a conditional `ETag`...) are refused: the batch Portier sends is
    // rebuilt from what it understood, so nothing may be silently left out.
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct Obj {
        key: String,
        #[serde(default)]
        version_id: Option<String>,
    }
    let text = std::str::from_utf8(xml).map_err(|_| S3Error::MALFORMED_XML)?;
    let doc: Delete = quick_xml::de::from_str(text).map_err(|_| S3Error::MALFORMED_XML)?;
    if doc.objects.is_empty() || doc.objects.len() > 1000 {
        return Err(S3Error::MALFORMED_XML);
    }
    let keys = doc
        .objects
        .into_iter()
        .map(|o| {
            if o.version_id.is_some() {
                return Err(S3Error::NOT_IMPLEMENTED);
            }
            let enc = crate::s3::encode_key_for_path(&o.key);
            match crate::s3::canonical_key(&enc) {
                Ok(k) if k == o.key => Ok(k),
                _ => Err(S3Error::INVALID_KEY),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DeleteBatch {
        keys,
        quiet: doc.quiet,
    })
}

/// The keys of a DeleteObjects body.
pub fn delete_keys(xml: &[u8]) -> Result<Vec<String>, S3Error> {
    delete_batch(xml).map(|b| b.keys)
}

/// The DeleteObjects document Portier sends: exactly the checked keys (and `Quiet`), never
/// the client's bytes.
pub fn delete_document(batch: &DeleteBatch) -> Result<String, S3Error> {
    #[derive(serde::Serialize)]
    #[serde(rename = "Delete")]
    struct Delete<'a> {
        #[serde(rename = "@xmlns")]
        xmlns: &'static str,
        #[serde(rename = "Quiet", skip_serializing_if = "Option::is_none")]
        quiet: Option<bool>,
        #[serde(rename = "Object")]
        objects: Vec<Obj<'a>>,
    }
    #[derive(serde::Serialize)]
    struct Obj<'a> {
        #[serde(rename = "Key")]
        key: &'a str,
    }
    let doc = Delete {
        xmlns: "http://s3.amazonaws.com/doc/2006-03-01/",
        quiet: batch.quiet,
        objects: batch.keys.iter().map(|k| Obj { key: k }).collect(),
    };
    quick_xml::se::to_string(&doc).map_err(|_| S3Error::INTERNAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    fn op(
        method: &str,
        path: &str,
        query: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<S3Request, S3Error> {
        classify(method, path, query, &h(headers), "media")
    }

    #[test]
    fn operations_are_classified_from_method_path_and_query() {
        let o = |m, p, q, hs: &[(&str, &str)]| op(m, p, q, hs).map(|r| r.op);
        assert_eq!(
            o("GET", "/media/u/a.png", None, &[]),
            Ok(Operation::GetObject)
        );
        assert_eq!(
            o("HEAD", "/media/u/a.png", None, &[]),
            Ok(Operation::HeadObject)
        );
        assert_eq!(
            o("PUT", "/media/u/a.png", None, &[]),
            Ok(Operation::PutObject)
        );
        assert_eq!(
            o(
                "PUT",
                "/media/u/b.png",
                None,
                &[("x-amz-copy-source", "media/u/a%20b.png")]
            ),
            Ok(Operation::CopyObject)
        );
        assert_eq!(
            o("DELETE", "/media/u/a.png", None, &[]),
            Ok(Operation::DeleteObject)
        );
        assert_eq!(
            o("POST", "/media", Some("delete="), &[]),
            Ok(Operation::DeleteObjects)
        );
        assert_eq!(
            o(
                "GET",
                "/media",
                Some("list-type=2&prefix=u%2F&encoding-type=url"),
                &[]
            ),
            Ok(Operation::ListObjectsV2)
        );
        assert_eq!(
            o("POST", "/media/u/v.mp4", Some("uploads="), &[]),
            Ok(Operation::CreateMultipartUpload)
        );
        assert_eq!(
            o(
                "PUT",
                "/media/u/v.mp4",
                Some("uploadId=X&partNumber=2"),
                &[]
            ),
            Ok(Operation::UploadPart)
        );
        assert_eq!(
            o("POST", "/media/u/v.mp4", Some("uploadId=X"), &[]),
            Ok(Operation::CompleteMultipartUpload)
        );
        assert_eq!(
            o("DELETE", "/media/u/v.mp4", Some("uploadId=X"), &[]),
            Ok(Operation::AbortMultipartUpload)
        );
        assert_eq!(
            o("GET", "/media/u/v.mp4", Some("uploadId=X"), &[]),
            Ok(Operation::ListParts)
        );
        // What Portier does not do is refused, not passed through.
        for (m, p, q) in [
            ("PUT", "/media/u/a.png", Some("acl=")),
            ("GET", "/media/u/a.png", Some("tagging=")),
            ("GET", "/media", None),
            ("PUT", "/media", Some("policy=")),
            ("GET", "/media/u/a.png", Some("versionId=3")),
        ] {
            assert_eq!(
                o(m, p, q, &[]),
                Err(S3Error::NOT_IMPLEMENTED),
                "{m} {p} {q:?}"
            );
        }
        assert_eq!(
            o("GET", "/other/u/a.png", None, &[]),
            Err(S3Error::NO_SUCH_BUCKET)
        );
        assert_eq!(
            o("GET", "/media/u/../v/a.png", None, &[]),
            Err(S3Error::INVALID_KEY)
        );
        assert_eq!(
            o("GET", "/media/u//a.png", None, &[]),
            Err(S3Error::INVALID_KEY)
        );
        let r = op(
            "PUT",
            "/media/u/b.png",
            None,
            &[("x-amz-copy-source", "/media/u/a%20b.png")],
        )
        .unwrap();
        assert_eq!(r.copy_source.as_deref(), Some("u/a b.png"));
        assert_eq!(
            op(
                "PUT",
                "/media/u/b.png",
                None,
                &[("x-amz-copy-source", "other/u/a.png")]
            ),
            Err(S3Error::ACCESS_DENIED)
        );
    }

    fn rules(spec: &[(&str, &str)]) -> Vec<Rule> {
        spec.iter()
            .map(|(ops, keys)| Rule {
                permissions: ops
                    .split(',')
                    .flat_map(|o| Permission::parse(o).unwrap())
                    .collect(),
                keys: keys.split(',').map(|k| KeyGlob::new(k).unwrap()).collect(),
            })
            .collect()
    }

    #[test]
    fn deny_by_default_and_every_key_checked() {
        // The image worker: put and get images, nothing else.
        let worker = rules(&[("PutObject,GetObject", "user_*/images/**")]);
        let req = |m, p, q, hs: &[(&str, &str)]| op(m, p, q, hs).unwrap();
        assert!(authorize(
            &worker,
            &req("PUT", "/media/user_a/images/x.png", None, &[]),
            &[]
        )
        .is_ok());
        assert!(authorize(
            &worker,
            &req(
                "PUT",
                "/media/user_a/images/x.png",
                Some("uploadId=1&partNumber=1"),
                &[]
            ),
            &[]
        )
        .is_ok());
        assert_eq!(
            authorize(
                &worker,
                &req("PUT", "/media/user_a/videos/x.mp4", None, &[]),
                &[]
            ),
            Err(S3Error::ACCESS_DENIED)
        );
        assert_eq!(
            authorize(
                &worker,
                &req("DELETE", "/media/user_a/images/x.png", None, &[]),
                &[]
            ),
            Err(S3Error::ACCESS_DENIED)
        );
        assert_eq!(
            authorize(
                &worker,
                &req(
                    "GET",
                    "/media",
                    Some("list-type=2&prefix=user_a%2Fimages%2F"),
                    &[]
                ),
                &[]
            ),
            Err(S3Error::ACCESS_DENIED),
            "no list permission"
        );
        // A copy needs Get on the source and Put on the destination.
        let copy = req(
            "PUT",
            "/media/user_a/images/y.png",
            None,
            &[("x-amz-copy-source", "media/user_a/videos/v.mp4")],
        );
        assert_eq!(authorize(&worker, &copy, &[]), Err(S3Error::ACCESS_DENIED));
        // The API: read and list everything, delete under user_*/.
        let api = rules(&[("read", "**"), ("delete", "user_*/**")]);
        assert!(authorize(&api, &req("GET", "/media", Some("list-type=2"), &[]), &[]).is_ok());
        let batch = req("POST", "/media", Some("delete"), &[]);
        assert!(authorize(&api, &batch, &["user_a/x".into(), "user_b/y".into()]).is_ok());
        assert_eq!(
            authorize(&api, &batch, &["user_a/x".into(), "admin/y".into()]),
            Err(S3Error::ACCESS_DENIED),
            "one key outside the rules refuses the batch"
        );
        assert_eq!(
            authorize(&[], &req("GET", "/media/a", None, &[]), &[]),
            Err(S3Error::ACCESS_DENIED)
        );
    }

    /// The query is decoded once, a repeated name is refused, and what the store gets is
    /// rebuilt from the checked pairs (presign and `fetch-owner` left out).
    #[test]
    fn query_checked_is_query_forwarded() {
        assert_eq!(
            op(
                "GET",
                "/media",
                Some("list-type=2&prefix=user_a/&prefix=admin/"),
                &[]
            ),
            Err(S3Error::REPEATED_PARAMETER)
        );
        assert_eq!(
            op(
                "GET",
                "/media",
                Some("list-type=2&pre%66ix=a&prefix=b"),
                &[]
            ),
            Err(S3Error::REPEATED_PARAMETER),
            "names compared decoded"
        );
        assert_eq!(
            op("GET", "/media", Some("list-type=2&prefix=%zz"), &[]),
            Err(S3Error::BAD_QUERY)
        );
        let r = op(
            "GET",
            "/media",
            Some("prefix=user_a/a+b&list-type=2&fetch-owner=true&encoding-type=url"),
            &[],
        )
        .unwrap();
        assert_eq!(
            r.prefix.as_deref(),
            Some("user_a/a+b"),
            "+ is a literal plus"
        );
        assert_eq!(
            r.store_query(),
            "encoding-type=url&list-type=2&prefix=user_a%2Fa%2Bb"
        );
        // A presigned GET: its signature parameters never reach the store.
        let r = op(
            "GET",
            "/media/user_a/x.png",
            Some("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=ab&response-content-type=text%2Fplain"),
            &[],
        )
        .unwrap();
        assert_eq!(r.store_query(), "response-content-type=text%2Fplain");
        // An encoded name is read decoded: `X-Amz-Foo` is not a presign parameter.
        assert_eq!(
            op("GET", "/media/user_a/x.png", Some("X%2DAmz%2DFoo=1"), &[]).map(|r| r.op),
            Err(S3Error::NOT_IMPLEMENTED)
        );
        let r = op(
            "GET",
            "/media/user_a/x.png",
            Some("X%2DAmz%2DSignature=1"),
            &[],
        )
        .unwrap();
        assert_eq!(r.store_query(), "", "decoded presign names are dropped");
    }

    #[test]
    fn headers_per_operation() {
        use HeaderUse::*;
        for (o, name, want) in [
            (
                Operation::PutObject,
                "x-amz-server-side-encryption-customer-key",
                Refuse,
            ),
            (
                Operation::GetObject,
                "x-amz-server-side-encryption-customer-algorithm",
                Refuse,
            ),
            (
                Operation::PutObject,
                "x-amz-server-side-encryption-aws-kms-key-id",
                Refuse,
            ),
            (Operation::PutObject, "x-amz-storage-class", Refuse),
            (Operation::PutObject, "x-amz-tagging", Refuse),
            (Operation::CopyObject, "x-amz-tagging-directive", Refuse),
            (
                Operation::PutObject,
                "x-amz-website-redirect-location",
                Refuse,
            ),
            (Operation::PutObject, "x-amz-object-lock-mode", Refuse),
            (Operation::PutObject, "x-amz-acl", Refuse),
            (Operation::CreateMultipartUpload, "x-amz-grant-read", Refuse),
            (
                Operation::PutObject,
                "x-amz-server-side-encryption",
                Forward,
            ),
            (Operation::PutObject, "x-amz-meta-title", Forward),
            (Operation::PutObject, "x-amz-checksum-crc32", Forward),
            (Operation::PutObject, "content-type", Forward),
            (Operation::PutObject, "range", Drop),
            (Operation::GetObject, "range", Forward),
            (Operation::GetObject, "x-amz-meta-title", Drop),
            (Operation::GetObject, "content-type", Drop),
            (Operation::UploadPart, "content-type", Drop),
            (
                Operation::CreateMultipartUpload,
                "x-amz-checksum-algorithm",
                Forward,
            ),
            (
                Operation::ListObjectsV2,
                "x-amz-expected-bucket-owner",
                Drop,
            ),
            (Operation::PutObject, "user-agent", Drop),
            (Operation::PutObject, "amz-sdk-invocation-id", Drop),
            (Operation::HeadObject, "transfer-encoding", Forward),
        ] {
            assert_eq!(header_use(o, name), want, "{o:?} {name}");
        }
        assert_eq!(
            check_headers(
                Operation::PutObject,
                &h(&[("x-amz-server-side-encryption-customer-key", "a2V5")])
            ),
            Err(S3Error::HEADER_REFUSED)
        );
        assert_eq!(
            check_headers(Operation::PutObject, &h(&[("x-amz-meta-a", "b")])),
            Ok(())
        );
    }

    /// What is forwarded is the serialisation of the checked keys, not the client's bytes.
    #[test]
    fn delete_documents_are_rebuilt_from_checked_keys() {
        let xml = br#"<?xml version="1.0"?><!-- a comment --><Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>user_a/x.png</Key></Object><Object>  <Key>user_b/a &amp; b&lt;c&gt;</Key></Object><Quiet>true</Quiet></Delete>"#;
        let batch = delete_batch(xml).unwrap();
        assert_eq!(batch.keys, vec!["user_a/x.png", "user_b/a & b<c>"]);
        assert_eq!(batch.quiet, Some(true));
        let doc = delete_document(&batch).unwrap();
        assert_eq!(
            doc,
            r#"<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Quiet>true</Quiet><Object><Key>user_a/x.png</Key></Object><Object><Key>user_b/a &amp; b&lt;c&gt;</Key></Object></Delete>"#
        );
        // The rebuilt document reads back as the same batch.
        assert_eq!(delete_batch(doc.as_bytes()), Ok(batch));
        let plain = delete_batch(b"<Delete><Object><Key>k/1</Key></Object></Delete>").unwrap();
        assert_eq!(
            delete_document(&plain).unwrap(),
            r#"<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>k/1</Key></Object></Delete>"#
        );
        // What Portier would not understand is refused, not dropped.
        assert_eq!(
            delete_batch(b"<Delete><Object><Key>k/1</Key></Object><Quiet>true</Quiet><Object><Key>k/2</Key></Object></Delete>"),
            Err(S3Error::MALFORMED_XML),
            "objects split around Quiet"
        );
        assert_eq!(
            delete_batch(
                b"<Delete><Object><Key>k/1</Key><VersionId>3</VersionId></Object></Delete>"
            ),
            Err(S3Error::NOT_IMPLEMENTED)
        );
        assert_eq!(
            delete_batch(b"<Delete><Object><Key>k/1</Key><ETag>x</ETag></Object></Delete>"),
            Err(S3Error::MALFORMED_XML)
        );
        let rules = rules(&[("delete", "user_*/**")]);
        let keys = ["user_a/x".to_string(), "admin/y".to_string()];
        assert_eq!(refused_delete_key(&rules, &keys), Some("admin/y"));
        assert_eq!(refused_delete_key(&rules, &keys[..1]), None);
    }

    #[test]
    fn delete_bodies() {
        let xml = br#"<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>user_a/x.png</Key></Object><Object><Key>user_b/a &amp; b</Key></Object></Delete>"#;
        assert_eq!(
            delete_keys(xml),
            Ok(vec!["user_a/x.png".to_string(), "user_b/a & b".to_string()])
        );
        assert_eq!(
            delete_keys(b"<Delete></Delete>"),
            Err(S3Error::MALFORMED_XML)
        );
        assert_eq!(delete_keys(b"not xml"), Err(S3Error::MALFORMED_XML));
        assert_eq!(
            delete_keys(b"<Delete><Object><Key>a/../b</Key></Object></Delete>"),
            Err(S3Error::INVALID_KEY)
        );
    }
}
