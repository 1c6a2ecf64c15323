//! Which S3 operation an egress request is, on which keys, and whether a service's rules
//! allow it. Plain functions over the method, path, query and headers: deny by default,
//! every key checked (both keys of a copy, every key of a batch delete), anything Portier does
//! not know refused.

use http::HeaderMap;

use super::errors::S3Error;

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

/// What a rule grants: the object permissions operations are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// GetObject (and the source of a copy).
    Get,
    Head,
    /// PutObject, the multipart family and the destination of a copy.
    Put,
    /// DeleteObject (each key of DeleteObjects).
    Delete,
    /// ListObjectsV2 of a prefix.
    List,
}

impl Permission {
    /// The names a rule's `operations` may list.
    pub fn parse(name: &str) -> Option<Vec<Permission>> {
        use Permission::*;
        Some(match name {
            "GetObject" => vec![Get],
            "HeadObject" => vec![Head],
            "PutObject" => vec![Put],
            "DeleteObject" => vec![Delete],
            "ListObjectsV2" => vec![List],
            "read" => vec![Get, Head, List],
            "write" => vec![Put],
            "delete" => vec![Delete],
            "*" => vec![Get, Head, Put, Delete, List],
            _ => return None,
        })
    }
}

/// A key pattern: `*` matches within one segment (no `/`), `**` matches anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGlob(String);

impl KeyGlob {
    pub fn new(p: &str) -> Result<KeyGlob, &'static str> {
        if p.is_empty() {
            return Err("a key pattern cannot be empty");
        }
        if p.contains("***") {
            return Err("use * (one segment) or ** (anything)");
        }
        Ok(KeyGlob(p.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, key: &str) -> bool {
        glob(self.0.as_bytes(), key.as_bytes())
    }

    /// Whether every key under `prefix` that this pattern could match starts there: a listing
    /// of `prefix` is allowed when the prefix itself is matched by the pattern's `**` form.
    pub fn covers_prefix(&self, prefix: &str) -> bool {
        self.0.ends_with("**") && glob(self.0.as_bytes(), prefix.as_bytes())
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            let rest = &p[2..];
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
        Some(b'*') => {
            let rest = &p[1..];
            let mut i = 0;
            loop {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if i == s.len() || s[i] == b'/' {
                    return false;
                }
                i += 1;
            }
        }
        Some(&c) => s.first() == Some(&c) && glob(&p[1..], &s[1..]),
    }
}

/// One rule of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub permissions: Vec<Permission>,
    pub keys: Vec<KeyGlob>,
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
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(crate::path::hex(*b.get(i + 1)?)? * 16 + crate::path::hex(*b.get(i + 2)?)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The query's parameter names and decoded values.
fn params(query: Option<&str>) -> Result<Vec<(String, String)>, S3Error> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((
                decode(k).ok_or(S3Error::INVALID_KEY)?,
                decode(v).ok_or(S3Error::INVALID_KEY)?,
            ))
        })
        .collect()
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
        if !(allowed.contains(&k.as_str()) || k.starts_with("X-Amz-")) {
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
    let decoded = decode(raw).ok_or(S3Error::INVALID_KEY)?;
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
                })
            }
            "POST" if has(&p, "delete") => {
                only(&p, &["delete", "x-id"])?;
                Ok(S3Request {
                    op: Operation::DeleteObjects,
                    key: None,
                    copy_source: None,
                    prefix: None,
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
    if decode(b).as_deref() != Some(bucket) {
        return Err(S3Error::ACCESS_DENIED);
    }
    canonical(k)
}

fn allowed(rules: &[Rule], perm: Permission, key: &str) -> bool {
    rules
        .iter()
        .any(|r| r.permissions.contains(&perm) && r.keys.iter().any(|g| g.matches(key)))
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

/// The keys of a DeleteObjects body.
pub fn delete_keys(xml: &[u8]) -> Result<Vec<String>, S3Error> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Delete {
        #[serde(default, rename = "Object")]
        objects: Vec<Obj>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Obj {
        key: String,
    }
    let text = std::str::from_utf8(xml).map_err(|_| S3Error::MALFORMED_XML)?;
    let doc: Delete = quick_xml::de::from_str(text).map_err(|_| S3Error::MALFORMED_XML)?;
    if doc.objects.is_empty() || doc.objects.len() > 1000 {
        return Err(S3Error::MALFORMED_XML);
    }
    doc.objects
        .into_iter()
        .map(|o| {
            let enc = crate::s3::encode_key_for_path(&o.key);
            match crate::s3::canonical_key(&enc) {
                Ok(k) if k == o.key => Ok(k),
                _ => Err(S3Error::INVALID_KEY),
            }
        })
        .collect()
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
    fn globs() {
        let g = KeyGlob::new("user_*/images/**").unwrap();
        assert!(g.matches("user_2abc/images/cat.png"));
        assert!(g.matches("user_2abc/images/a/b.png"));
        assert!(!g.matches("user_2abc/videos/v.mp4"));
        assert!(
            !g.matches("user_a/b/images/x.png"),
            "* stays in one segment"
        );
        assert!(g.covers_prefix("user_2abc/images/"));
        assert!(!g.covers_prefix("user_2abc/"));
        assert!(!g.covers_prefix(""));
        assert!(KeyGlob::new("**").unwrap().covers_prefix(""));
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
