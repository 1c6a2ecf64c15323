//! The app's file API (`/api/s3/*`) on the shipped config and policies, against the embedded
//! signature-checking store: uploads in both part orders, magic numbers, limits counted while
//! streaming, nothing stored on any refusal or disconnect, presigned URLs, batch deletes and
//! paginated listings confined to the caller's prefix.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

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
    let auth = bearer(tok);
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    send_body(
        w.portier.addr,
        "POST",
        "/api/s3/upload",
        &[("Authorization", &auth), ("Content-Type", &ct)],
        body,
        false,
    )
}

fn upload_file(w: &Shipped, tok: &str, key: &str, data: &[u8], key_first: bool) -> Resp {
    let file = ("file", Some(("f.bin", "application/octet-stream")), data);
    let k = ("s3_key", None, key.as_bytes());
    let body = if key_first {
        form(&[k, file])
    } else {
        form(&[file, k])
    };
    upload(w, tok, &body)
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
    std::fs::read(w.store_root.0.join("app-media").join(key)).ok()
}

/// GET a presigned URL straight from the store.
fn fetch(url: &str) -> Resp {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let addr: std::net::SocketAddr = host.parse().expect("addr");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
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
        let got = fetch(j["url"].as_str().expect("url"));
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
        let head = format!(
            "POST /api/s3/upload HTTP/1.1\r\nHost: portier.test\r\nAuthorization: Bearer {me}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).expect("head");
        // Past the first 8 MiB part, then gone.
        s.write_all(&body[..body.len() - 200_000])
            .expect("most of the body");
        std::thread::sleep(Duration::from_millis(300));
        drop(s);
        std::thread::sleep(Duration::from_millis(700));
        assert!(stored(&w, key).is_none(), "{key} was stored");
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
    let got = fetch(a.json()["url"].as_str().expect("url"));
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-length"), Some("3000"));
    // A direct upload URL binds length and type; the store refuses others.
    let put = ask(
        json!({"s3_key": "user_ps/images/b.png", "method": "PUT", "content_type": "image/png", "content_length": 100}),
    );
    assert_eq!(put.status, 200, "{}", put.body);
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
                .is_some_and(|u| u.contains("X-Amz-Signature")));
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
