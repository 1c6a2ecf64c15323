//! The S3 front door against a real S3-compatible store that checks SigV4 (s3s-fs, embedded
//! on 127.0.0.1:0 with its own keys, known only to Portier's config).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use portier::s3::{self, EmbeddedStore};
use serde_json::{json, Value};

use crate::common::*;

const BUCKET: &str = "media";

const S3_POLICIES: &str = r#"
[[route]]
name = "files"
path = "/api/files/{key..}"
methods = ["GET", "HEAD", "PUT", "DELETE"]
upstream = "s3"
s3 = "object"
owner = "key"

[route.kinds.images]
max_body_bytes = 1000000
content_types = ["png", "jpeg", "gif", "webp"]

[route.kinds.videos]
plan = ["pro"]
max_body_bytes = 3000000
content_types = ["mp4", "webm", "quicktime"]

[route.kinds.docs]

[[route]]
name = "presign"
path = "/api/files/presigned-url"
methods = ["POST"]
upstream = "s3"
s3 = "presign"
presign_for = "files"
"#;

struct S3World {
    store: EmbeddedStore,
    root: TempDir,
    portier: Portier,
    relay: Option<Relay>,
}

fn png(len: usize) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    b.extend((0..len.saturating_sub(b.len())).map(|i| (i * 31 % 251) as u8));
    b
}

fn env_names(secret_override: Option<&str>, store: &EmbeddedStore) -> (String, String) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let (ak, sk) = (
        format!("PORTIER_TEST_S3_AK_{n}"),
        format!("PORTIER_TEST_S3_SK_{n}"),
    );
    std::env::set_var(&ak, &store.access_key);
    std::env::set_var(&sk, secret_override.unwrap_or(&store.secret_key));
    (ak, sk)
}

fn start(secret_override: Option<&str>, via_relay: bool) -> S3World {
    let root = TempDir::new();
    let (ak, sk) = s3::generate_keys();
    let store = runtime()
        .block_on(s3::start(root.0.clone(), BUCKET, &ak, &sk))
        .expect("embedded store");
    let relay = via_relay.then(|| Relay::start(store.addr));
    let endpoint = format!("http://{}", relay.as_ref().map_or(store.addr, |r| r.addr));
    let (ak_env, sk_env) = env_names(secret_override, &store);
    let jwks = JwksServer::start(vec![issuer().jwk()]);
    let up = Upstream::start();
    let mut setup = Setup::new(&jwks, &up, &up);
    setup.policies = S3_POLICIES.into();
    setup.extra_config = format!(
        "[s3]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\nbucket = \"{BUCKET}\"\naddressing = \"path\"\naccess_key_id_env = \"{ak_env}\"\nsecret_access_key_env = \"{sk_env}\"\nsession_token_env = \"PORTIER_TEST_NO_TOKEN\"\npresign_max_seconds = 600\npresign_default_seconds = 300\n"
    );
    let portier = setup.start();
    std::mem::forget(jwks);
    std::mem::forget(up);
    S3World {
        store,
        root,
        portier,
        relay,
    }
}

impl S3World {
    fn object_file(&self, key: &str) -> PathBuf {
        self.root.0.join(BUCKET).join(key)
    }

    fn put(&self, key: &str, tok: &str, body: &[u8]) -> Resp {
        let auth = bearer(tok);
        send_body(
            self.portier.addr,
            "PUT",
            &format!("/api/files/{key}"),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/octet-stream"),
            ],
            body,
            false,
        )
    }

    fn get(&self, target: &str, tok: &str, extra: &[(&str, &str)]) -> Resp {
        let auth = bearer(tok);
        let mut h = vec![("Authorization", auth.as_str())];
        h.extend_from_slice(extra);
        get(self.portier.addr, target, &h)
    }
}

#[test]
fn put_get_range_head_delete_and_list_through_portier() {
    let w = start(None, false);
    let me = token("user_s3a");
    let data = png(300_000);
    let r = w.put("user_s3a/images/cat.png", &me, &data);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        std::fs::read(w.object_file("user_s3a/images/cat.png")).expect("stored"),
        data,
        "byte-identical"
    );
    let r = w.get("/api/files/user_s3a/images/cat.png", &me, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), String::from_utf8_lossy(&data).len());
    let r = w.get(
        "/api/files/user_s3a/images/cat.png",
        &me,
        &[("Range", "bytes=100-199")],
    );
    assert_eq!(r.status, 206);
    assert_eq!(
        r.body.as_bytes(),
        String::from_utf8_lossy(&data[100..200]).as_bytes()
    );
    let r = raw(
        w.portier.addr,
        "HEAD",
        "/api/files/user_s3a/images/cat.png",
        &[("Authorization", &bearer(&me))],
    );
    assert_eq!(
        (r.status, r.header("content-length")),
        (200, Some("300000"))
    );

    // Listing shows only the caller's keys, across pages.
    for i in 0..3 {
        assert_eq!(
            w.put(&format!("user_s3a/docs/d{i}.txt"), &me, b"doc")
                .status,
            200
        );
    }
    let other = token("user_s3b");
    assert_eq!(
        w.put("user_s3b/docs/secret.txt", &other, b"theirs").status,
        200
    );
    let mut keys = Vec::new();
    let mut query = "max-keys=2".to_string();
    for _ in 0..5 {
        let r = w.get(&format!("/api/files/?{query}"), &me, &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        for part in r.body.split("<Key>").skip(1) {
            keys.push(part.split("</Key>").next().unwrap_or("").to_string());
        }
        match r
            .body
            .split("<NextContinuationToken>")
            .nth(1)
            .and_then(|t| t.split("</NextContinuationToken>").next())
        {
            Some(t) => {
                query = format!(
                    "max-keys=2&continuation-token={}",
                    s3::encode_query_component(t)
                )
            }
            None => break,
        }
    }
    keys.sort();
    assert_eq!(
        keys,
        [
            "user_s3a/docs/d0.txt",
            "user_s3a/docs/d1.txt",
            "user_s3a/docs/d2.txt",
            "user_s3a/images/cat.png"
        ]
    );
    // Asking for another user's prefix stays inside the caller's own.
    let r = w.get("/api/files/?prefix=user_s3b/", &me, &[]);
    assert!(!r.body.contains("secret.txt"), "{}", r.body);
    // Unknown list parameters are refused, not forwarded.
    let r = w.get("/api/files/?acl", &me, &[]);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (400, "operation_not_supported")
    );

    let r = raw(
        w.portier.addr,
        "DELETE",
        "/api/files/user_s3a/images/cat.png",
        &[("Authorization", &bearer(&me))],
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(!w.object_file("user_s3a/images/cat.png").exists());
    let r = w.get("/api/files/user_s3a/images/cat.png", &me, &[]);
    assert_eq!((r.status, r.reason().as_str()), (404, "not_found"));
    assert!(
        !r.body.contains("<Error>"),
        "the store's XML is replaced: {}",
        r.body
    );
}

#[test]
fn foreign_keys_and_their_disguises_are_refused() {
    let w = start(None, false);
    let other = token("user_s3b");
    assert_eq!(w.put("user_s3b/docs/x.txt", &other, b"theirs").status, 200);
    let me = token("user_s3a");
    let r = w.get("/api/files/user_s3b/docs/x.txt", &me, &[]);
    assert_eq!((r.status, r.reason().as_str()), (403, "not_owner"));
    for (target, reason) in [
        ("/api/files/user_s3a/../user_s3b/docs/x.txt", "bad_path"),
        ("/api/files/user_s3a/%2e%2e/user_s3b/docs/x.txt", "bad_path"),
        ("/api/files/user_s3a%2F..%2Fuser_s3b/docs/x.txt", "bad_path"),
        (
            "/api/files/user_s3a/%252e%252e/user_s3b/docs/x.txt",
            "bad_path",
        ),
        ("/api/files/user_s3a\\..\\user_s3b/docs/x.txt", "bad_path"),
        ("/api/files/user_s3a/docs/x.txt.", "bad_key"),
        ("/api/files/user_s3a/docs/x%20", "bad_key"),
        ("/api/files/user_s3a/docs/%00x", "bad_path"),
        ("/api/files/user_s3b", "not_owner"),
        ("/api/files/user_s3ab/docs/x.txt", "not_owner"),
    ] {
        let r = w.get(target, &me, &[]);
        assert_eq!(r.reason(), reason, "{target}: {} {}", r.status, r.body);
        assert!(r.status == 400 || r.status == 403, "{target}: {}", r.status);
    }
    // Writes with a disguised key store nothing anywhere.
    let r = w.put("user_s3a/../user_s3b/docs/x.txt", &me, b"mine now");
    assert_eq!(r.status, 400);
    assert_eq!(
        std::fs::read(w.object_file("user_s3b/docs/x.txt")).expect("file"),
        b"theirs"
    );
    // Copy and multi-object operations are refused explicitly.
    let auth = bearer(&me);
    let r = send_body(
        w.portier.addr,
        "PUT",
        "/api/files/user_s3a/docs/copy.txt",
        &[
            ("Authorization", &auth),
            ("x-amz-copy-source", "/media/user_s3b/docs/x.txt"),
        ],
        b"",
        false,
    );
    assert_eq!(
        (r.status, r.reason().as_str()),
        (400, "operation_not_supported")
    );
    let r = send_body(
        w.portier.addr,
        "PUT",
        "/api/files/user_s3a/docs/chunked.txt",
        &[
            ("Authorization", &auth),
            ("Content-Encoding", "aws-chunked"),
            ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        ],
        b"5\r\nhello\r\n0\r\n\r\n",
        false,
    );
    assert_eq!(
        (r.status, r.reason().as_str()),
        (400, "operation_not_supported")
    );
    assert!(
        !w.object_file("user_s3a/docs/chunked.txt").exists(),
        "no chunk envelope stored"
    );
    let r = send_body(
        w.portier.addr,
        "POST",
        "/api/files/?delete",
        &[("Authorization", &auth)],
        b"<Delete/>",
        false,
    );
    assert_eq!((r.status, r.reason().as_str()), (405, "method_not_allowed"));
}

#[test]
fn wrong_credentials_are_502_and_no_secret_leaks() {
    let wrong = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYWRONGSECRETKEY";
    let w = start(Some(wrong), false);
    let me = token("user_s3a");
    let r = w.put("user_s3a/docs/a.txt", &me, b"data");
    assert_eq!(
        (r.status, r.reason().as_str()),
        (502, "upstream_auth_failed"),
        "{}",
        r.body
    );
    let r = w.get("/api/files/user_s3a/docs/a.txt", &me, &[]);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (502, "upstream_auth_failed")
    );
    assert!(!w.object_file("user_s3a/docs/a.txt").exists());
    std::thread::sleep(Duration::from_millis(100));
    let logs = captured_logs();
    assert!(
        logs.contains("SignatureDoesNotMatch"),
        "the store's error code is logged"
    );
    for secret in [wrong, w.store.secret_key.as_str()] {
        assert!(!logs.contains(secret), "a secret reached the logs");
        assert!(!r.body.contains(secret));
    }
    let leaked: Vec<&str> = logs.lines().filter(|l| l.contains("Signature=")).collect();
    assert!(leaked.is_empty(), "signatures in logs: {leaked:?}");
    assert!(
        !r.body.contains(&w.store.access_key),
        "no key id in the answer"
    );
}

#[test]
fn client_credentials_and_identity_headers_never_reach_the_store() {
    let w = start(None, true);
    let me = token("user_s3a");
    let auth = bearer(&me);
    let r = send_body(
        w.portier.addr,
        "PUT",
        "/api/files/user_s3a/docs/h.txt",
        &[
            ("Authorization", &auth),
            ("Cookie", "__session=abc; theme=dark"),
            ("x-amz-security-token", "EVILTOKEN"),
            ("x-amz-content-sha256", "EVILHASH"),
            ("x-amz-date", "20000101T000000Z"),
            ("X-Portier-User-Id", "user_evil"),
            ("x_portier_user_id", "user_evil"),
            ("x-amz-meta-title", "kept"),
            ("Content-Type", "text/plain"),
        ],
        b"hello",
        false,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let sent = w.relay.as_ref().expect("relay").text();
    let lower = sent.to_ascii_lowercase();
    for needle in [
        "evil",
        "bearer",
        "cookie:",
        "theme=dark",
        "20000101",
        "x-portier",
        &me[..40],
    ] {
        assert!(
            !lower.contains(&needle.to_ascii_lowercase()),
            "{needle:?} reached the store:\n{sent}"
        );
    }
    assert!(
        lower.contains("authorization: aws4-hmac-sha256 credential="),
        "{sent}"
    );
    assert!(sent.contains(&w.store.access_key));
    assert!(lower.contains("x-amz-meta-title: kept"));
    assert!(lower.contains("x-amz-content-sha256: unsigned-payload"));
    assert_eq!(
        std::fs::read(w.object_file("user_s3a/docs/h.txt")).expect("stored"),
        b"hello"
    );
}

#[test]
fn presigned_urls_work_directly_expire_and_are_refused_for_foreign_keys() {
    let w = start(None, false);
    let me = token("user_s3a");
    let auth = bearer(&me);
    let ask = |v: Value| {
        let body = v.to_string();
        send_body(
            w.portier.addr,
            "POST",
            "/api/files/presigned-url",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
            false,
        )
    };
    // A presigned PUT states its length, which is signed into the URL.
    let r = ask(json!({"key": "user_s3a/docs/p.txt", "method": "PUT"}));
    assert_eq!((r.status, r.reason().as_str()), (411, "length_required"));
    let r = ask(json!({"key": "user_s3a/docs/p.txt", "method": "PUT", "content_length": 14}));
    assert_eq!(r.status, 200, "{}", r.body);
    let put = r.json();
    assert_eq!(put["expires_in"], 300);
    let url = put["url"].as_str().expect("url");
    assert!(url.contains("X-Amz-Signature="));
    assert_eq!(
        store_request(url, "PUT", &[], b"presigned body").status,
        200
    );
    assert_eq!(
        std::fs::read(w.object_file("user_s3a/docs/p.txt")).expect("stored"),
        b"presigned body"
    );
    let get = ask(json!({"key": "user_s3a/docs/p.txt", "method": "GET", "expires_in": 99999}));
    // Capped at presign_max_seconds; a GET URL is stable within presign_stable_seconds
    // (default 300), so what is left of it is between the cap minus the window and the cap.
    let url = get.json()["url"].as_str().unwrap_or("").to_string();
    assert!(
        url.contains("X-Amz-Expires=600"),
        "capped at presign_max_seconds: {url}"
    );
    let left = get.json()["expires_in"].as_u64().unwrap_or(0);
    assert!((300..=600).contains(&left), "{left}");
    let r = store_request(get.json()["url"].as_str().expect("url"), "GET", &[], b"");
    assert_eq!((r.status, r.body.as_str()), (200, "presigned body"));
    // The same policy decides: another user's key, a bad key, a kind that needs a plan.
    let r = ask(json!({"key": "user_s3b/docs/p.txt", "method": "GET"}));
    assert_eq!((r.status, r.reason().as_str()), (403, "not_owner"));
    let r = ask(json!({"key": "user_s3a/../user_s3b/x", "method": "GET"}));
    assert_eq!((r.status, r.reason().as_str()), (400, "bad_key"));
    let r = ask(json!({"key": "user_s3a/videos/v.mp4", "method": "PUT", "content_length": 5}));
    assert_eq!((r.status, r.reason().as_str()), (403, "plan_required"));
    let r = send_body(
        w.portier.addr,
        "POST",
        "/api/files/presigned-url",
        &[],
        b"{}",
        false,
    );
    assert_eq!((r.status, r.reason().as_str()), (401, "token_missing"));
    let r = ask(json!({"nope": 1}));
    assert_eq!((r.status, r.reason().as_str()), (400, "bad_request"));
    // Expiry.
    let short = ask(json!({"key": "user_s3a/docs/p.txt", "method": "GET", "expires_in": 1}));
    std::thread::sleep(Duration::from_millis(2100));
    let r = store_request(short.json()["url"].as_str().expect("url"), "GET", &[], b"");
    assert_eq!(r.status, 403, "expired: {}", r.body);
}

#[test]
fn upload_limits_and_content_types() {
    let w = start(None, false);
    let me = token("user_s3a");
    let pro = token_with("user_s3p", json!({"pla": "u:pro"}));
    // Over the images limit (1 MB) with a Content-Length: 413, nothing stored.
    let r = w.put("user_s3a/images/big.png", &me, &png(1_500_000));
    assert_eq!((r.status, r.reason().as_str()), (413, "body_too_large"));
    assert!(!w.object_file("user_s3a/images/big.png").exists());
    // Without a Content-Length (chunked): 411 before anything is read or stored.
    let auth = bearer(&me);
    let r = send_body(
        w.portier.addr,
        "PUT",
        "/api/files/user_s3a/images/chunked.png",
        &[("Authorization", &auth)],
        &png(1_500_000),
        true,
    );
    assert_eq!((r.status, r.reason().as_str()), (411, "length_required"));
    assert!(!w.object_file("user_s3a/images/chunked.png").exists());
    // A JPEG body on a PNG key of the images kind is still an image (any listed type), but a
    // text body is not: 415, nothing stored.
    let mut jpeg = b"\xff\xd8\xff\xe0\0\x10JFIF\0".to_vec();
    jpeg.extend(vec![1u8; 5000]);
    assert_eq!(w.put("user_s3a/images/photo.jpg", &me, &jpeg).status, 200);
    let r = w.put(
        "user_s3a/images/fake.png",
        &me,
        b"<html>not an image at all</html>",
    );
    assert_eq!(
        (r.status, r.reason().as_str()),
        (415, "unsupported_media_type")
    );
    assert!(!w.object_file("user_s3a/images/fake.png").exists());
    // Videos need plan pro, and a video body.
    let mut mp4 = b"\0\0\0\x18ftypmp42\0\0\0\0".to_vec();
    mp4.extend(vec![2u8; 2_000_000]);
    let r = w.put("user_s3a/videos/v.mp4", &me, &mp4);
    assert_eq!((r.status, r.reason().as_str()), (403, "plan_required"));
    let r = w.put("user_s3p/videos/v.mp4", &pro, &mp4);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        std::fs::metadata(w.object_file("user_s3p/videos/v.mp4"))
            .expect("stored")
            .len(),
        mp4.len() as u64
    );
    let r = w.put("user_s3p/videos/v.png", &pro, &png(1000));
    assert_eq!(
        (r.status, r.reason().as_str()),
        (415, "unsupported_media_type")
    );
    // A kind folder the route does not list.
    let r = w.put("user_s3a/secrets/x.bin", &me, b"x");
    assert_eq!((r.status, r.reason().as_str()), (403, "kind_not_allowed"));
}

fn raw_to(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> Resp {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("write");
    s.write_all(body).expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
}

/// Finding 7: a PNG that says `text/html` and `inline` was stored and served back as a page.
/// Checked kinds are stored as what their bytes are; downloads carry `nosniff` and are inline
/// only for a checked type; presigned downloads of unchecked kinds are attachments.
#[test]
fn stored_types_are_the_detected_ones_and_downloads_are_not_rendered() {
    let w = start(None, false);
    let me = token("user_s3x");
    let auth = bearer(&me);
    let img = png(2000);
    let r = send_body(
        w.portier.addr,
        "PUT",
        "/api/files/user_s3x/images/x.png",
        &[
            ("Authorization", &auth),
            ("Content-Type", "text/html"),
            ("Content-Disposition", "inline"),
        ],
        &img,
        false,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = w.get("/api/files/user_s3x/images/x.png", &me, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("image/png"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("content-disposition"), Some("inline"));
    // An unchecked kind keeps the client's type but is never rendered.
    let r = send_body(
        w.portier.addr,
        "PUT",
        "/api/files/user_s3x/docs/page.html",
        &[("Authorization", &auth), ("Content-Type", "text/html")],
        b"<script>alert(1)</script>",
        false,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = w.get("/api/files/user_s3x/docs/page.html", &me, &[]);
    assert_eq!(r.header("content-disposition"), Some("attachment"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    // A presigned download of it is an attachment too: the disposition is signed in.
    let ask = |v: Value| {
        send_body(
            w.portier.addr,
            "POST",
            "/api/files/presigned-url",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            v.to_string().as_bytes(),
            false,
        )
    };
    let r = ask(json!({"key": "user_s3x/docs/page.html", "method": "GET"}));
    let url = r.json()["url"].as_str().unwrap_or("").to_string();
    assert!(
        url.contains("response-content-disposition=attachment"),
        "{url}"
    );
    let d = store_request(&url, "GET", &[], b"");
    assert_eq!(d.status, 200, "{}", d.body);
    // Presigned uploads of a checked kind state one of its types and an exact length.
    let r = ask(json!({"key": "user_s3x/images/y.png", "method": "PUT", "content_length": 2000}));
    assert_eq!(
        (r.status, r.reason().as_str()),
        (415, "unsupported_media_type")
    );
    let r = ask(
        json!({"key": "user_s3x/images/y.png", "method": "PUT", "content_length": 2000, "content_type": "text/html"}),
    );
    assert_eq!(
        (r.status, r.reason().as_str()),
        (415, "unsupported_media_type")
    );
    let r = ask(
        json!({"key": "user_s3x/images/y.png", "method": "PUT", "content_length": 2_000_000, "content_type": "image/png"}),
    );
    assert_eq!((r.status, r.reason().as_str()), (413, "body_too_large"));
    let r = ask(
        json!({"key": "user_s3x/images/y.png", "method": "PUT", "content_length": 2000, "content_type": "image/png"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let url = r.json()["url"].as_str().unwrap_or("").to_string();
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let addr: std::net::SocketAddr = host.parse().expect("addr");
    let put = |len: usize, ct: &str| {
        let head = format!("PUT /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: {ct}\r\nContent-Length: {len}\r\n\r\n");
        raw_to(addr, &head, &png(len))
    };
    // The store itself refuses another length or type than the ones signed.
    assert_eq!(put(3000, "image/png").status, 403, "another length");
    assert_eq!(put(2000, "text/html").status, 403, "another type");
    assert!(!w.object_file("user_s3x/images/y.png").exists());
    assert_eq!(
        put(2000, "image/png").status,
        200,
        "the signed length and type"
    );
    // `expires_in: 0` is a bad request, not a 500.
    let r = ask(json!({"key": "user_s3x/docs/page.html", "method": "GET", "expires_in": 0}));
    assert_eq!((r.status, r.reason().as_str()), (400, "bad_request"));
}

/// Finding 9: `user_x//images/a.png` was stored as `user_x/images/a.png`, another key than
/// the one asked for.
#[test]
fn keys_with_empty_segments_are_refused_not_collapsed() {
    let w = start(None, false);
    let me = token("user_s3y");
    for target in [
        "/api/files/user_s3y//images/a.png",
        "/api/files//user_s3y/images/a.png",
        "/api//files/user_s3y/images/a.png",
    ] {
        let auth = bearer(&me);
        let r = send_body(
            w.portier.addr,
            "PUT",
            target,
            &[("Authorization", &auth)],
            &png(100),
            false,
        );
        assert_eq!(
            (r.status, r.reason().as_str()),
            (400, "bad_key"),
            "{target}"
        );
    }
    assert!(!w.object_file("user_s3y/images/a.png").exists());
}

/// `Expect: 100-continue` (curl above 1 MB, boto3 always) on uploads: answered by Portier when
/// it reads the first bytes, and by the store otherwise; the upload never stalls.
#[test]
fn uploads_with_expect_continue_do_not_stall() {
    let w = start(None, false);
    let me = token("user_s3z");
    for (key, body) in [
        ("user_s3z/images/e.png", png(5000)),
        ("user_s3z/docs/e.txt", b"plain text body".to_vec()),
    ] {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(w.portier.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let head = format!(
            "PUT /api/files/{key} HTTP/1.1\r\nHost: portier.test\r\nConnection: close\r\nAuthorization: Bearer {me}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).expect("write");
        let mut buf = [0u8; 25];
        let n = s.read(&mut buf).expect("a 100 Continue, not a stall");
        let first = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(first.starts_with("HTTP/1.1 100"), "{key}: {first}");
        s.write_all(&body).expect("body");
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        let text = String::from_utf8_lossy(&rest);
        assert!(text.contains(" 200 "), "{key}: {text}");
        assert_eq!(std::fs::read(w.object_file(key)).expect("stored"), body);
    }
}
