//! The app's file API (`/api/s3/*`) on the shipped config and policies, against the embedded
//! signature-checking store: uploads in both part orders, magic numbers, limits counted while
//! streaming, nothing stored (and no multipart parts left) on any refusal, cut-off form,
//! disconnect, stall, store error or store timeout, presigned URLs, batch deletes and
//! paginated listings confined to the caller's prefix, and what the decision log says.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portier::s3::{self, EmbeddedStore};
use serde_json::{json, Value};

use crate::common::*;
use crate::shipped::Shipped;

const BOUNDARY: &str = "----portierFormBoundary7MA4YWxkTrZu0gW";

fn png(len: usize) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    b.extend((0..len.saturating_sub(b.len())).map(|i| (i * 31 % 251) as u8));
    b
}

fn jpeg(len: usize) -> Vec<u8> {
    let mut b = b"\xff\xd8\xff\xe0\0\x10JFIF\0".to_vec();
    b.resize(len, 7);
    b
}

fn mp4(len: usize) -> Vec<u8> {
    let mut b = b"\0\0\0\x18ftypmp42\0\0\0\0".to_vec();
    b.resize(len, 3);
    b
}

/// One form field: its name, `(filename, content type)` for a file, and its bytes.
type Field<'a> = (&'a str, Option<(&'a str, &'a str)>, &'a [u8]);

/// A browser-shaped multipart body: the fields in the order given.
fn form(fields: &[Field<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, file, data) in fields {
        out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match file {
            Some((filename, ct)) => out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {ct}\r\n\r\n").as_bytes(),
            ),
            None => out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

fn upload(w: &Shipped, tok: &str, body: &[u8]) -> Resp {
    upload_at(w.portier.addr, tok, body)
}

fn upload_at(addr: std::net::SocketAddr, tok: &str, body: &[u8]) -> Resp {
    let auth = bearer(tok);
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    send_body(
        addr,
        "POST",
        "/api/s3/upload",
        &[("Authorization", &auth), ("Content-Type", &ct)],
        body,
        false,
    )
}

fn upload_file(w: &Shipped, tok: &str, key: &str, data: &[u8], key_first: bool) -> Resp {
    upload_file_at(w.portier.addr, tok, key, data, key_first)
}

fn upload_form(key: &str, data: &[u8], key_first: bool) -> Vec<u8> {
    let file = ("file", Some(("f.bin", "application/octet-stream")), data);
    let k = ("s3_key", None, key.as_bytes());
    if key_first {
        form(&[k, file])
    } else {
        form(&[file, k])
    }
}

fn upload_file_at(
    addr: std::net::SocketAddr,
    tok: &str,
    key: &str,
    data: &[u8],
    key_first: bool,
) -> Resp {
    upload_at(addr, tok, &upload_form(key, data, key_first))
}

fn json_call(w: &Shipped, tok: &str, method: &str, path: &str, v: &Value) -> Resp {
    let auth = bearer(tok);
    send_body(
        w.portier.addr,
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        v.to_string().as_bytes(),
        false,
    )
}

fn stored(w: &Shipped, key: &str) -> Option<Vec<u8>> {
    stored_in(&w.store_root.0, key)
}

fn stored_in(root: &Path, key: &str) -> Option<Vec<u8>> {
    std::fs::read(root.join("app-media").join(key)).ok()
}

/// What s3s-fs keeps of multipart uploads in progress, in the store root: the upload id
/// (`.upload-<id>.json`), its parts (`.upload_id-<id>.part-<n>`) and its metadata
/// (`.bucket-..object-..upload-<id>.metadata.json`).
fn multipart_leftovers(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.contains(".upload"))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until no multipart upload is left in the store (aborts run in the background).
fn assert_no_multipart_left(root: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = multipart_leftovers(root);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "multipart uploads left: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until Portier has finished every request (a disconnected one included).
fn wait_idle(gw: &portier::state::Gateway) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw.in_flight() > 0 {
        assert!(Instant::now() < deadline, "requests still in flight");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The request head of an upload with `length` bytes of form.
fn upload_head(tok: &str, length: usize) -> String {
    format!(
        "POST /api/s3/upload HTTP/1.1\r\nHost: portier.test\r\nAuthorization: Bearer {tok}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n"
    )
}

#[test]
fn uploads_in_both_part_orders_by_magic_number() {
    let w = Shipped::start(0);
    let me = token("user_up");
    let pro = token_with("user_pro", json!({"pla": "u:pro"}));
    for (i, (key, data, tok, want_type)) in [
        ("user_up/images/a.png", png(30_000), &me, "image/png"),
        ("user_up/images/b.jpg", jpeg(20_000), &me, "image/jpeg"),
        ("user_pro/videos/c.mp4", mp4(40_000), &pro, "video/mp4"),
    ]
    .into_iter()
    .enumerate()
    {
        let key_first = i % 2 == 0;
        let r = upload_file(&w, tok, key, &data, key_first);
        assert_eq!(r.status, 200, "{key}: {}", r.body);
        let j = r.json();
        assert_eq!(j["s3_key"], key);
        assert_eq!(j["bucket"], "app-media");
        assert_eq!(j["content_type"], want_type);
        assert_eq!(stored(&w, key).as_deref(), Some(data.as_slice()), "{key}");
        let url = j["url"].as_str().expect("url");
        assert!(
            url.contains("response-content-disposition=attachment"),
            "{url}"
        );
        let got = fetch_url(url);
        assert_eq!(got.status, 200);
        assert_eq!(got.header("content-type"), Some(want_type));
    }
    // The other order, the other way round.
    let r = upload_file(&w, &me, "user_up/images/d.png", &png(5000), true);
    assert_eq!(r.status, 200, "{}", r.body);
    // A renamed executable is not an image, whatever its name and declared type.
    let elf = {
        let mut b = b"\x7fELF\x02\x01\x01\0".to_vec();
        b.resize(4096, 0);
        b
    };
    for key_first in [true, false] {
        let r = upload_file(&w, &me, "user_up/images/tool.png", &elf, key_first);
        assert_eq!(
            (r.status, r.reason().as_str()),
            (415, "unsupported_media_type")
        );
    }
    assert!(stored(&w, "user_up/images/tool.png").is_none());
}

#[test]
fn refusals_have_their_codes_and_store_nothing() {
    let w = Shipped::start(0);
    let me = token("user_rf");
    let free = token_with("user_rf", json!({"pla": "u:free"}));
    let cases: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        ("user_other/images/x.png", png(100), &me, 403, "not_owner"),
        ("user_rf/images/../x.png", png(100), &me, 400, "bad_key"),
        ("user_rf//images/x.png", png(100), &me, 400, "bad_key"),
        (
            "user_rf/secrets/x.png",
            png(100),
            &me,
            403,
            "kind_not_allowed",
        ),
        (
            "user_rf/videos/v.mp4",
            mp4(100),
            &free,
            403,
            "plan_required",
        ),
    ];
    for (key, data, tok, status, code) in cases {
        for key_first in [true, false] {
            let r = upload_file(&w, tok, key, &data, key_first);
            assert_eq!(
                (r.status, r.reason().as_str()),
                (status, code),
                "{key} (key first: {key_first})"
            );
        }
    }
    // Malformed forms: no key, no file, not multipart, an unknown field.
    let r = upload(
        &w,
        &me,
        &form(&[("file", Some(("a.png", "image/png")), &png(10))]),
    );
    assert_eq!((r.status, r.reason().as_str()), (400, "bad_request"));
    let r = upload(&w, &me, &form(&[("s3_key", None, b"user_rf/images/a.png")]));
    assert_eq!((r.status, r.reason().as_str()), (400, "bad_request"));
    let r = json_call(&w, &me, "POST", "/api/s3/upload", &json!({"s3_key": "x"}));
    assert_eq!((r.status, r.reason().as_str()), (400, "bad_request"));
    let r = upload(
        &w,
        &me,
        &form(&[
            ("s3_key", None, b"user_rf/images/a.png"),
            ("extra", None, b"1"),
        ]),
    );
    assert_eq!((r.status, r.reason().as_str()), (400, "bad_request"));
    // No session at all.
    let r = send_body(w.portier.addr, "POST", "/api/s3/upload", &[], b"", false);
    assert_eq!((r.status, r.reason().as_str()), (401, "token_missing"));
    let bucket = w.store_root.0.join("app-media");
    let written: Vec<_> = walk(&bucket);
    assert!(written.is_empty(), "nothing stored: {written:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if !p.to_string_lossy().contains(".s3s") {
                out.push(p);
            }
        }
    }
    out
}

/// 10 MiB is the images limit: one byte more is refused while streaming, and the parts
/// already sent (the file is larger than one 8 MiB part) are aborted, so nothing is stored.
#[test]
fn one_byte_over_the_limit_stores_nothing_in_either_order() {
    let w = Shipped::start(0);
    let me = token("user_big");
    let limit = 10 * 1024 * 1024;
    for (key_first, key) in [
        (true, "user_big/images/a.png"),
        (false, "user_big/images/b.png"),
    ] {
        let r = upload_file(&w, &me, key, &png(limit + 1), key_first);
        assert_eq!(
            (r.status, r.reason().as_str()),
            (413, "body_too_large"),
            "key first: {key_first}"
        );
        assert!(stored(&w, key).is_none());
    }
    // The key-first one had sent a part: its multipart upload was aborted.
    assert_no_multipart_left(&w.store_root.0);
    // Exactly at the limit (two parts: a multipart upload) it is stored whole.
    let data = png(limit);
    let r = upload_file(&w, &me, "user_big/images/c.png", &data, true);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        stored(&w, "user_big/images/c.png").map(|b| b.len()),
        Some(limit)
    );
    assert!(stored(&w, "user_big/images/c.png") == Some(data));
}

/// A client that goes away half-way leaves nothing under the key (after one part was sent).
#[test]
fn a_client_that_disconnects_mid_upload_leaves_nothing() {
    let w = Shipped::start(0);
    let me = token("user_gone");
    let data = png(9 * 1024 * 1024);
    for (key_first, key) in [
        (true, "user_gone/images/a.png"),
        (false, "user_gone/images/b.png"),
    ] {
        let file = ("file", Some(("a.png", "image/png")), data.as_slice());
        let k = ("s3_key", None, key.as_bytes());
        let body = if key_first {
            form(&[k, file])
        } else {
            form(&[file, k])
        };
        let mut s = TcpStream::connect(w.portier.addr).expect("connect");
        s.write_all(upload_head(&me, body.len()).as_bytes())
            .expect("head");
        // Past the first 8 MiB part, then gone.
        s.write_all(&body[..body.len() - 200_000])
            .expect("most of the body");
        if key_first {
            // The first part is in the store before the client goes.
            let deadline = Instant::now() + Duration::from_secs(20);
            while multipart_leftovers(&w.store_root.0).is_empty() {
                assert!(Instant::now() < deadline, "no part was sent");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        drop(s);
        wait_idle(&w.portier.gateway);
        assert!(stored(&w, key).is_none(), "{key} was stored");
        assert_no_multipart_left(&w.store_root.0);
    }
}

#[test]
fn presigned_urls_of_the_file_api() {
    let w = Shipped::start(0);
    let me = token("user_ps");
    assert_eq!(
        upload_file(&w, &me, "user_ps/images/a.png", &png(3000), true).status,
        200
    );
    let ask = |v: Value| json_call(&w, &me, "POST", "/api/s3/presigned-url", &v);
    let a = ask(json!({"s3_key": "user_ps/images/a.png", "expires_in": 3600}));
    assert_eq!(a.status, 200, "{}", a.body);
    let b = ask(json!({"s3_key": "user_ps/images/a.png", "expires_in": 3600}));
    assert_eq!(a.json()["url"], b.json()["url"], "stable within the window");
    let left = a.json()["expires_in"].as_u64().unwrap_or(0);
    assert!((3300..=3600).contains(&left), "{left}");
    let got = fetch_url(a.json()["url"].as_str().expect("url"));
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-length"), Some("3000"));
    // Every presigned GET is an attachment, whatever the kind: a navigation downloads it.
    // The disposition is signed: without it the URL is refused.
    let url = a.json()["url"].as_str().expect("url").to_string();
    assert!(
        url.contains("response-content-disposition=attachment"),
        "{url}"
    );
    let unsigned = without_param(&url, "response-content-disposition");
    assert_ne!(unsigned, url);
    assert_eq!(
        fetch_url(&unsigned).status,
        403,
        "the disposition is signed in"
    );
    // A direct upload URL binds length and type; the store refuses others.
    let put = ask(
        json!({"s3_key": "user_ps/images/b.png", "method": "PUT", "content_type": "image/png", "content_length": 100}),
    );
    assert_eq!(put.status, 200, "{}", put.body);
    let put_url = put.json()["url"].as_str().expect("url").to_string();
    let r = store_request(
        &put_url,
        "PUT",
        &[("Content-Type", "image/jpeg")],
        &png(100),
    );
    assert_eq!(
        r.status, 403,
        "another type is refused by the store: {}",
        r.body
    );
    let r = store_request(&put_url, "PUT", &[("Content-Type", "image/png")], &png(99));
    assert_ne!(r.status / 100, 2, "another length is refused by the store");
    assert!(stored(&w, "user_ps/images/b.png").is_none());
    let r = store_request(&put_url, "PUT", &[("Content-Type", "image/png")], &png(100));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(stored(&w, "user_ps/images/b.png"), Some(png(100)));
    let r = ask(json!({"s3_key": "user_other/images/b.png", "method": "GET"}));
    assert_eq!((r.status, r.reason().as_str()), (403, "not_owner"));
    let r = ask(
        json!({"s3_key": "user_ps/images/b.png", "method": "PUT", "content_type": "image/png", "content_length": 20_000_000}),
    );
    assert_eq!((r.status, r.reason().as_str()), (413, "body_too_large"));
    let r = ask(
        json!({"s3_key": "user_ps/images/b.png", "method": "PUT", "content_type": "text/html", "content_length": 10}),
    );
    assert_eq!(
        (r.status, r.reason().as_str()),
        (415, "unsupported_media_type")
    );
    let r = json_call(
        &w,
        &me,
        "POST",
        "/api/s3/presigned-url",
        &json!("not an object"),
    );
    assert_eq!((r.status, r.reason().as_str()), (400, "bad_request"));
    // expires_in is a positive whole number of seconds.
    for bad in [json!(-5), json!(1.5), json!("3600"), json!(0), json!(null)] {
        let r = ask(json!({"s3_key": "user_ps/images/a.png", "expires_in": bad}));
        if bad.is_null() {
            assert_eq!(r.status, 200, "null is the default: {}", r.body);
            continue;
        }
        assert_eq!(
            (r.status, r.reason().as_str()),
            (400, "bad_request"),
            "expires_in {bad}"
        );
    }
    // A JSON key is literal: `%41` is not decoded into `A` (refused as ambiguous, as `%2541`
    // in an object path is); a `%` that escapes nothing stays as it is.
    let r = ask(json!({"s3_key": "user_ps/images/a%41.png"}));
    assert_eq!((r.status, r.reason().as_str()), (400, "bad_key"));
    let r = upload_file(&w, &me, "user_ps/books/100%.txt", b"a hundred", true);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["s3_key"], "user_ps/books/100%.txt");
    assert_eq!(
        stored(&w, "user_ps/books/100%.txt").as_deref(),
        Some(&b"a hundred"[..])
    );
    let r = ask(json!({"s3_key": "user_ps/books/100%.txt"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["s3_key"], "user_ps/books/100%.txt");
    assert_eq!(
        fetch_url(r.json()["url"].as_str().expect("url")).body,
        "a hundred"
    );
    // The object route names the same key with `%25`.
    let r = get(
        w.portier.addr,
        "/api/files/user_ps/books/100%25.txt",
        &[("Authorization", &bearer(&me))],
    );
    assert_eq!((r.status, r.body.as_str()), (200, "a hundred"));
}

#[test]
fn batch_deletes_check_every_key_first() {
    let w = Shipped::start(0);
    let me = token("user_del");
    for n in ["a", "b", "c"] {
        let key = format!("user_del/images/{n}.png");
        assert_eq!(upload_file(&w, &me, &key, &png(500), true).status, 200);
    }
    let del = |v: Value| json_call(&w, &me, "DELETE", "/api/s3/delete", &v);
    // One foreign key refuses the whole batch: nothing is deleted.
    let r = del(json!({"s3_keys": ["user_del/images/a.png", "user_x/images/a.png"]}));
    assert_eq!((r.status, r.reason().as_str()), (403, "not_owner"));
    assert!(stored(&w, "user_del/images/a.png").is_some());
    let r = del(json!({"s3_keys": ["user_del/images/a.png", "user_del/images/../x"]}));
    assert_eq!((r.status, r.reason().as_str()), (400, "bad_key"));
    let too_many: Vec<String> = (0..1001)
        .map(|i| format!("user_del/images/{i}.png"))
        .collect();
    let r = del(json!({"s3_keys": too_many}));
    assert_eq!((r.status, r.reason().as_str()), (400, "bad_request"));
    // Malformed JSON, and JSON of the wrong shape.
    let auth = bearer(&me);
    for body in [
        &b"{\"s3_key\": "[..],
        b"not json",
        b"{\"s3_key\": 5}",
        b"[\"user_del/images/a.png\"]",
    ] {
        let r = send_body(
            w.portier.addr,
            "DELETE",
            "/api/s3/delete",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body,
            false,
        );
        assert_eq!(
            (r.status, r.reason().as_str()),
            (400, "bad_request"),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    assert!(stored(&w, "user_del/images/a.png").is_some());
    // One key, then a batch.
    let r = del(json!({"s3_key": "user_del/images/a.png"}));
    assert_eq!(
        (r.status, r.json()["success"].clone()),
        (200, json!(true)),
        "{}",
        r.body
    );
    assert!(stored(&w, "user_del/images/a.png").is_none());
    let r = del(json!({"s3_keys": ["user_del/images/b.png", "user_del/images/c.png"]}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["deleted"], 2);
    assert!(stored(&w, "user_del/images/b.png").is_none());
    assert!(stored(&w, "user_del/images/c.png").is_none());
}

#[test]
fn listings_are_paginated_and_confined_to_the_callers_folder() {
    let w = Shipped::start(0);
    let me = token("user_ls");
    let other = token("user_ls2");
    let free = token_with("user_ls", json!({"pla": "u:free"}));
    for i in 0..5 {
        let key = format!("user_ls/images/{i}.png");
        assert_eq!(upload_file(&w, &me, &key, &png(100 + i), false).status, 200);
    }
    assert_eq!(
        upload_file(&w, &other, "user_ls2/images/x.png", &png(100), true).status,
        200
    );
    assert_eq!(
        upload_file(&w, &me, "user_ls/books/b.txt", b"a book", true).status,
        200
    );
    let list = |tok: &str, q: &str| {
        get(
            w.portier.addr,
            &format!("/api/s3/list?{q}"),
            &[("Authorization", &bearer(tok))],
        )
    };
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..10 {
        let q = match &token {
            Some(t) => format!(
                "user_id=user_ls&content_type=image&limit=2&next_token={}",
                urlencode(t)
            ),
            None => "user_id=user_ls&content_type=image&limit=2".to_string(),
        };
        let r = list(&me, &q);
        assert_eq!(r.status, 200, "{}", r.body);
        let j = r.json();
        let files = j["files"].as_array().expect("files");
        assert!(files.len() <= 2);
        for f in files {
            let key = f["key"].as_str().expect("key").to_string();
            assert!(key.starts_with("user_ls/images/"), "{key}");
            assert_eq!(f["filename"], key.rsplit('/').next().expect("name"));
            assert!(f["size"].as_u64().is_some() && f["last_modified"].is_string());
            assert!(f["url"]
                .as_str()
                .is_some_and(|u| u.contains("X-Amz-Signature")
                    && u.contains("response-content-disposition=attachment")));
            seen.push(key);
        }
        match j["next_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..5)
            .map(|i| format!("user_ls/images/{i}.png"))
            .collect::<Vec<_>>()
    );
    // Another user's folder, a missing parameter, a kind that needs a plan.
    let r = list(&me, "user_id=user_ls2&content_type=image");
    assert_eq!((r.status, r.reason().as_str()), (403, "not_owner"));
    let r = list(&me, "user_id=user_ls");
    assert_eq!((r.status, r.reason().as_str()), (400, "bad_request"));
    let r = list(&free, "user_id=user_ls&content_type=video");
    assert_eq!((r.status, r.reason().as_str()), (403, "plan_required"));
    let r = list(&me, "user_id=user_ls&content_type=secret");
    assert_eq!((r.status, r.reason().as_str()), (403, "kind_not_allowed"));
    let r = list(&me, "user_id=user_ls&content_type=book");
    let books = r.json()["files"].as_array().map(|a| a.len());
    assert_eq!(books, Some(1));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The front end's own requests (fetch, FormData, JSON), driven by a Node script shaped
/// like its `s3-service.ts`, through `portier run` on the shipped shape.
#[test]
fn the_front_end_drives_the_file_api_through_portier_run() {
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("node is required (scripts/setup installs it)");
    }
    let w = Shipped::start(0);
    // The same config as a real replica: `portier run` on it, in its own process.
    let mut t: toml::Table = std::fs::read_to_string(&w.config_path)
        .expect("config")
        .parse()
        .expect("toml");
    let any = toml::Value::String("127.0.0.1:0".into());
    t["server"]["listen"] = toml::Value::Array(vec![any.clone()]);
    t["admin"]["listen"] = any.clone();
    t["egress"]["listen"] = any;
    let cfg = w.portier.dir.0.join("replica.toml");
    std::fs::write(&cfg, toml::to_string(&t).expect("toml")).expect("write");
    let (mut child, bound) = spawn_portier_run(&cfg, &[], &[]);
    let listen = bound.public[0];
    assert!(portier::server::wait_listening(
        listen,
        Duration::from_secs(15)
    ));
    let user = "user_fe123";
    let out = std::process::Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/frontend_client/drive.mjs"
        ))
        .env("PORTIER_URL", format!("http://{listen}"))
        .env("PORTIER_TOKEN", token(user))
        .env("PORTIER_USER_ID", user)
        .env("PORTIER_OTHER_USER_ID", "user_fe999")
        .env(
            "PORTIER_FREE_TOKEN",
            token_with("user_fefree", json!({"pla": "u:free"})),
        )
        .env("PORTIER_FREE_USER_ID", "user_fefree")
        .env("PORTIER_DRIVE_DEADLINE_MS", "120000")
        .output()
        .expect("node");
    let _ = child.kill();
    let _ = child.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "front-end drive failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count() >= 20,
        "{stdout}"
    );
}

/// An object is committed only after the form's closing boundary: an extra or repeated
/// field after the file, or a form cut off after it, stores nothing (a multipart upload
/// already holding a part is aborted).
#[test]
fn a_form_that_does_not_end_well_stores_nothing() {
    let w = Shipped::start(0);
    let me = token("user_tail");
    let root = w.store_root.0.clone();
    for (size, key) in [
        (3000, "user_tail/images/a.png"),
        (9 * 1024 * 1024, "user_tail/images/b.png"),
    ] {
        let data = png(size);
        let k = ("s3_key", None, key.as_bytes());
        let file = ("file", Some(("a.png", "image/png")), data.as_slice());
        for extra in [
            ("extra", None, &b"1"[..]),
            ("s3_key", None, key.as_bytes()),
            file,
        ] {
            let r = upload(&w, &me, &form(&[k, file, extra]));
            assert_eq!(
                (r.status, r.reason().as_str()),
                (400, "bad_request"),
                "{key} then {:?}",
                extra.0
            );
            assert!(stored(&w, key).is_none(), "{key} stored before a refusal");
        }
        // Whole requests whose form is cut after the file: the next part begun, or the
        // closing boundary cut short.
        let whole = form(&[k, file]);
        let closing = format!("--{BOUNDARY}--\r\n");
        let cut = &whole[..whole.len() - closing.len()];
        for tail in [
            format!("--{BOUNDARY}\r\nContent-Disposition: form-da"),
            format!("--{BOUNDARY}-"),
        ] {
            let body = [cut, tail.as_bytes()].concat();
            let r = upload(&w, &me, &body);
            assert_eq!(
                (r.status, r.reason().as_str()),
                (400, "bad_request"),
                "{key} cut at {tail:?}"
            );
            assert!(stored(&w, key).is_none(), "{key} stored from a cut form");
        }
        // The connection ends before the closing boundary arrives.
        let mut s = TcpStream::connect(w.portier.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.write_all(upload_head(&me, whole.len()).as_bytes())
            .expect("head");
        s.write_all(cut).expect("body");
        s.write_all(format!("--{BOUNDARY}\r\nContent-Disp").as_bytes())
            .expect("tail");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        wait_idle(&w.portier.gateway);
        assert!(
            stored(&w, key).is_none(),
            "{key} stored without its form's end"
        );
    }
    assert_no_multipart_left(&root);
}

/// The store fails a part half-way through a multipart upload: 502, nothing stored, the
/// parts already sent are aborted. Then the store goes away: every operation that needs it
/// is 502 `upstream_unavailable`.
#[test]
fn a_store_error_mid_upload_is_502_and_leaves_nothing() {
    let w = Shipped::start(0);
    let me = token("user_se");
    let root = w.store_root.0.clone();
    let key = "user_se/images/a.png";
    let data = png(9 * 1024 * 1024);
    let body = upload_form(key, &data, true);
    let mut s = TcpStream::connect(w.portier.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(upload_head(&me, body.len()).as_bytes())
        .expect("head");
    // More than one part: the multipart upload starts and its first part goes up.
    let first = 8 * 1024 * 1024 + 512 * 1024;
    s.write_all(&body[..first]).expect("first part");
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let found = multipart_leftovers(&root).into_iter().find_map(|n| {
            n.strip_prefix(".upload-")
                .and_then(|r| r.strip_suffix(".json"))
                .map(str::to_string)
        });
        if let Some(id) = found {
            break id;
        }
        assert!(Instant::now() < deadline, "no multipart upload started");
        std::thread::sleep(Duration::from_millis(20));
    };
    // s3s-fs writes part 2 to this path: a directory there makes it fail (500).
    let blocker = root.join(format!(".upload_id-{id}.part-2"));
    std::fs::create_dir(&blocker).expect("blocker");
    s.write_all(&body[first..]).expect("rest");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let r = parse(&buf);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (502, "upstream_unavailable"),
        "{}",
        r.body
    );
    assert!(stored(&w, key).is_none());
    std::fs::remove_dir(&blocker).expect("remove blocker");
    assert_no_multipart_left(&root);
    // The store stops.
    let ok = upload_file(&w, &me, "user_se/images/b.png", &png(500), true);
    assert_eq!(ok.status, 200, "{}", ok.body);
    w.store.stop();
    let r = upload_file(&w, &me, "user_se/images/c.png", &png(500), true);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (502, "upstream_unavailable")
    );
    let r = get(
        w.portier.addr,
        "/api/s3/list?user_id=user_se&content_type=image",
        &[("Authorization", &bearer(&me))],
    );
    assert_eq!(
        (r.status, r.reason().as_str()),
        (502, "upstream_unavailable")
    );
    let r = json_call(
        &w,
        &me,
        "DELETE",
        "/api/s3/delete",
        &json!({"s3_key": "user_se/images/b.png"}),
    );
    assert_eq!(
        (r.status, r.reason().as_str()),
        (502, "upstream_unavailable")
    );
    assert!(stored(&w, "user_se/images/c.png").is_none());
    assert!(stored(&w, "user_se/images/b.png").is_some());
}

/// A world of its own on the shipped file API policies, so the test can shape the config:
/// `server_extra` under `[server]`, the bucket's endpoint (the embedded store unless
/// `endpoint` is given), the spool directory and the decision log.
struct ApiWorld {
    w: World,
    root: TempDir,
    _store: Option<EmbeddedStore>,
}

fn api_world(
    server_extra: &str,
    endpoint: Option<String>,
    spool: &Path,
    decision_log: Option<PathBuf>,
) -> ApiWorld {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let root = TempDir::new();
    let (ak, sk) = s3::generate_keys();
    let store = match endpoint {
        Some(_) => None,
        None => Some(
            runtime()
                .block_on(s3::start(root.0.clone(), "app-media", &ak, &sk))
                .expect("store"),
        ),
    };
    let endpoint =
        endpoint.unwrap_or_else(|| store.as_ref().map(|s| s.endpoint()).unwrap_or_default());
    let (ak_env, sk_env) = (
        format!("PORTIER_FILES_AK_{n}"),
        format!("PORTIER_FILES_SK_{n}"),
    );
    std::env::set_var(&ak_env, &ak);
    std::env::set_var(&sk_env, &sk);
    let policies =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/files.toml"))
            .expect("shipped policies/files.toml");
    let w = World::start_with(|s| {
        s.policies = policies;
        s.server_extra = server_extra.to_string();
        if let Some(log) = decision_log {
            s.decision_log = log;
        }
        s.extra_config = format!(
            "[s3]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\nbucket = \"app-media\"\naddressing = \"path\"\naccess_key_id_env = \"{ak_env}\"\nsecret_access_key_env = \"{sk_env}\"\nsession_token_env = \"PORTIER_FILES_NO_TOKEN\"\nspool_dir = \"{}\"\nconnect_timeout_ms = 1000\nread_timeout_ms = 1000\n",
            spool.display()
        );
    });
    ApiWorld {
        w,
        root,
        _store: store,
    }
}

fn spool_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("portier-upload-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn wait_no_spool(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = spool_files(dir);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "spool files left: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn requests(a: &ApiWorld, decision: &str, reason: &str) -> u64 {
    a.w.portier
        .gateway
        .metrics
        .requests
        .with_label_values(&["s3-upload", decision, reason])
        .get()
}

/// An upload whose body stops arriving is 408 `client_timeout` after
/// `server.body_idle_timeout_seconds`, as on every other route, and stores nothing; a client
/// that goes away is counted as an error, not as a policy denial.
#[test]
fn a_stalled_upload_is_408_and_a_vanished_client_is_an_error() {
    let spool = TempDir::new();
    let a = api_world("body_idle_timeout_seconds = 1", None, &spool.0, None);
    let addr = a.w.portier.addr;
    let me = token("user_stall");
    for (key_first, key) in [
        (true, "user_stall/images/a.png"),
        (false, "user_stall/images/b.png"),
    ] {
        let body = upload_form(key, &png(9 * 1024 * 1024), key_first);
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s.write_all(upload_head(&me, body.len()).as_bytes())
            .expect("head");
        s.write_all(&body[..body.len() - 100_000]).expect("body");
        // ...and then nothing.
        let t = Instant::now();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let r = parse(&buf);
        assert_eq!(
            (r.status, r.reason().as_str()),
            (408, "client_timeout"),
            "key first: {key_first}: {}",
            r.body
        );
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        assert!(stored_in(&a.root.0, key).is_none());
    }
    assert_no_multipart_left(&a.root.0);
    wait_no_spool(&spool.0);
    assert_eq!(requests(&a, "error", "client_timeout"), 2);
    // A client that goes away mid-upload.
    let denied_before = requests(&a, "deny", "bad_request");
    let body = upload_form("user_stall/images/c.png", &png(2 * 1024 * 1024), true);
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(upload_head(&me, body.len()).as_bytes())
        .expect("head");
    s.write_all(&body[..body.len() / 2]).expect("half");
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(20);
    while requests(&a, "error", "-") < 1 {
        assert!(
            Instant::now() < deadline,
            "the vanished client was not counted as an error"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(requests(&a, "deny", "bad_request"), denied_before);
    assert!(stored_in(&a.root.0, "user_stall/images/c.png").is_none());
}

/// A file sent before its key is spooled to `[s3] spool_dir` readable by Portier's user only,
/// and removed whether it was stored or refused; spool files a crashed process left (older
/// than a day) are swept at start.
#[test]
fn spool_files_are_private_removed_and_stale_ones_swept_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let spool = TempDir::new();
    let stale = spool.0.join("portier-upload-00000000deadbeef");
    let unrelated = spool.0.join("notes.txt");
    let recent = spool.0.join("portier-upload-00000000cafef00d");
    let two_days = std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    for p in [&stale, &unrelated, &recent] {
        std::fs::write(p, b"x").expect("write");
    }
    for p in [&stale, &unrelated] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .and_then(|f| f.set_modified(two_days))
            .expect("age");
    }
    let a = api_world("", None, &spool.0, None);
    assert!(!stale.exists(), "a stale spool file is swept at start");
    assert!(unrelated.exists() && recent.exists());
    std::fs::remove_file(&recent).expect("remove");
    let me = token("user_spool");
    let key = "user_spool/images/a.png";
    let data = png(2 * 1024 * 1024);
    let body = upload_form(key, &data, false);
    let mut s = TcpStream::connect(a.w.portier.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(upload_head(&me, body.len()).as_bytes())
        .expect("head");
    s.write_all(&body[..body.len() / 2]).expect("half");
    let deadline = Instant::now() + Duration::from_secs(20);
    let file = loop {
        if let Some(f) = spool_files(&spool.0).into_iter().next() {
            break f;
        }
        assert!(Instant::now() < deadline, "nothing spooled");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "spool file mode {:o}", mode & 0o777);
    s.write_all(&body[body.len() / 2..]).expect("rest");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert_eq!(parse(&buf).status, 200, "{}", parse(&buf).body);
    assert_eq!(stored_in(&a.root.0, key), Some(data));
    wait_no_spool(&spool.0);
    // Refused once the key arrives: removed too.
    let r = upload_file_at(
        a.w.portier.addr,
        &me,
        "user_other/images/a.png",
        &png(5000),
        false,
    );
    assert_eq!((r.status, r.reason().as_str()), (403, "not_owner"));
    wait_no_spool(&spool.0);
}

/// A store that takes requests and never answers them: CreateMultipartUpload is answered,
/// everything else is read and left hanging. Records each request line.
struct SilentStore {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl SilentStore {
    fn start() -> SilentStore {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let seen = s2.clone();
                std::thread::spawn(move || silent_conn(conn, seen));
            }
        });
        SilentStore { addr, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn silent_conn(mut c: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let line = text.lines().next().unwrap_or("").to_string();
    if let Ok(mut s) = seen.lock() {
        s.push(line.clone());
    }
    if line.starts_with("POST ") && line.contains("?uploads") {
        let xml = "<InitiateMultipartUploadResult><Bucket>app-media</Bucket><Key>k</Key><UploadId>up-1</UploadId></InitiateMultipartUploadResult>";
        let _ = c.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                xml.len()
            )
            .as_bytes(),
        );
        return;
    }
    let mut sink = vec![0u8; 64 * 1024];
    while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
}

/// `[s3] read_timeout_ms` bounds the file API's own store requests: a store that never
/// answers is 504 `upstream_timeout` within a few timeouts, and an upload that had begun a
/// multipart upload is aborted.
#[test]
fn a_store_that_never_answers_is_504_and_the_multipart_upload_is_aborted() {
    let silent = SilentStore::start();
    let spool = TempDir::new();
    let a = api_world("", Some(format!("http://{}", silent.addr)), &spool.0, None);
    let me = token("user_slow");
    let t = Instant::now();
    let r = upload_file_at(
        a.w.portier.addr,
        &me,
        "user_slow/images/a.png",
        &png(1000),
        true,
    );
    assert_eq!(
        (r.status, r.reason().as_str()),
        (504, "upstream_timeout"),
        "{}",
        r.body
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // More than one part: the multipart upload is created, its first part hangs.
    let t = Instant::now();
    let r = upload_file_at(
        a.w.portier.addr,
        &me,
        "user_slow/images/b.png",
        &png(8 * 1024 * 1024 + 1),
        true,
    );
    assert_eq!(
        (r.status, r.reason().as_str()),
        (504, "upstream_timeout"),
        "{}",
        r.body
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(20);
    let abort = "DELETE /app-media/user_slow/images/b.png?uploadId=up-1 ";
    while !silent.seen().iter().any(|l| l.starts_with(abort)) {
        assert!(
            Instant::now() < deadline,
            "no abort was attempted: {:?}",
            silent.seen()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Listing and deleting are bounded the same way.
    let r = get(
        a.w.portier.addr,
        "/api/s3/list?user_id=user_slow&content_type=image",
        &[("Authorization", &bearer(&me))],
    );
    assert_eq!((r.status, r.reason().as_str()), (504, "upstream_timeout"));
}

/// The decision log names the file API operation and the key's kind for allowed and refused
/// requests alike, and never a URL or a signature.
#[test]
fn the_decision_log_names_operation_and_kind_and_never_a_url() {
    let spool = TempDir::new();
    let logdir = TempDir::new();
    let log = logdir.0.join("decisions.jsonl");
    let a = api_world("", None, &spool.0, Some(log.clone()));
    let addr = a.w.portier.addr;
    let me = token("user_dlog");
    let auth = bearer(&me);
    let call = |method: &str, path: &str, v: Value| {
        send_body(
            addr,
            method,
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            v.to_string().as_bytes(),
            false,
        )
    };
    let mut want: Vec<(u16, &str, &str)> = Vec::new();
    let r = upload_file_at(addr, &me, "user_dlog/images/a.png", &png(800), true);
    want.push((r.status, "Upload", "images"));
    let r = upload_file_at(addr, &me, "user_dlog/secrets/a.png", &png(800), true);
    want.push((r.status, "Upload", "secrets"));
    let r = upload_file_at(addr, &me, "user_other/images/a.png", &png(800), false);
    want.push((r.status, "Upload", "images"));
    let r = call(
        "POST",
        "/api/s3/presigned-url",
        json!({"s3_key": "user_dlog/images/a.png"}),
    );
    want.push((r.status, "Presign", "images"));
    let r = call(
        "POST",
        "/api/s3/presigned-url",
        json!({"s3_key": "user_other/videos/a.mp4"}),
    );
    want.push((r.status, "Presign", "videos"));
    let r = call(
        "DELETE",
        "/api/s3/delete",
        json!({"s3_keys": ["user_other/images/a.png"]}),
    );
    want.push((r.status, "Delete", "images"));
    let r = call(
        "DELETE",
        "/api/s3/delete",
        json!({"s3_key": "user_dlog/images/a.png"}),
    );
    want.push((r.status, "Delete", "images"));
    for q in ["user_id=user_dlog", "user_id=user_other"] {
        let r = get(
            addr,
            &format!("/api/s3/list?{q}&content_type=image"),
            &[("Authorization", &auth)],
        );
        want.push((r.status, "List", "images"));
    }
    let statuses: Vec<u16> = want.iter().map(|w| w.0).collect();
    assert_eq!(
        statuses,
        vec![200, 403, 403, 200, 403, 403, 200, 200, 403],
        "allowed and refused requests of each operation"
    );
    a.w.portier.gateway.flush_logs();
    let text = std::fs::read_to_string(&log).expect("decision log");
    for needle in [
        "X-Amz-Signature",
        "X-Amz-Credential",
        "http://",
        "https://",
        "?",
    ] {
        assert!(!text.contains(needle), "the log holds {needle:?}:\n{text}");
    }
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .filter(|l: &Value| l["user_id"] == "user_dlog")
        .collect();
    let got: Vec<(u16, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["status"].as_u64().unwrap_or(0) as u16,
                l["operation"].as_str().unwrap_or("-"),
                l["kind"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(got, want, "{text}");
}
