//! Egress: real boto3 (from the project's .venv) drives Portier's egress listener with local
//! keys; Portier verifies their SigV4, authorizes each operation against the service's rules
//! and re-signs for the signature-checking embedded store, which sits behind a TCP relay that
//! records every byte it receives.

use std::time::{Duration, SystemTime};

use portier::s3;

use crate::common::*;

const API_KEY: &str = "PORTIERAPISERVICE01";
const API_SECRET: &str = "local-api-secret/abc+def";
const WORKER_KEY: &str = "PORTIERIMAGEWORKER1";
const WORKER_SECRET: &str = "local-worker-secret-xyz";

struct EgressWorld {
    world: World,
    egress: std::net::SocketAddr,
    root: TempDir,
    relay: Relay,
    store_key: String,
    _store: s3::EmbeddedStore,
}

fn python() -> String {
    std::env::var("PORTIER_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_string())
}

fn start() -> EgressWorld {
    let root = TempDir::new();
    let (ak, sk) = s3::generate_keys();
    // The services call the bucket "media"; the real one is "realbucket".
    let store = runtime()
        .block_on(s3::start(root.0.clone(), "realbucket", &ak, &sk))
        .expect("store");
    let relay = Relay::start(store.addr);
    // Tests run in parallel in one process: each world reads its store keys from its own
    // variables, or one world's Portier would sign with another's keys.
    static WORLDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = WORLDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::set_var(format!("PORTIER_EGRESS_STORE_AK_{n}"), &ak);
    std::env::set_var(format!("PORTIER_EGRESS_STORE_SK_{n}"), &sk);
    std::env::set_var("PORTIER_EGRESS_API_SECRET", API_SECRET);
    std::env::set_var("PORTIER_EGRESS_WORKER_SECRET", WORKER_SECRET);
    let endpoint = format!("http://{}", relay.addr);
    let world = World::start_with(|s| {
        s.extra_config = format!(
            r#"
[s3]
endpoint = "{endpoint}"
region = "us-east-1"
bucket = "realbucket"
addressing = "path"
access_key_id_env = "PORTIER_EGRESS_STORE_AK_{n}"
secret_access_key_env = "PORTIER_EGRESS_STORE_SK_{n}"
session_token_env = "PORTIER_EGRESS_NO_TOKEN"

[egress]
listen = "127.0.0.1:0"
bucket = "media"

[egress.services.api]
access_key_id = "{API_KEY}"
secret_env = "PORTIER_EGRESS_API_SECRET"
[[egress.services.api.allow]]
operations = ["read", "write", "delete"]
keys = ["user_*/**"]

[egress.services.image-worker]
access_key_id = "{WORKER_KEY}"
secret_env = "PORTIER_EGRESS_WORKER_SECRET"
[[egress.services.image-worker.allow]]
operations = ["PutObject", "GetObject"]
keys = ["user_*/images/**"]
"#
        )
    });
    let egress = world.portier.egress.expect("egress listener");
    assert!(portier::server::wait_listening(
        egress,
        Duration::from_secs(10)
    ));
    EgressWorld {
        world,
        egress,
        root,
        relay,
        store_key: ak,
        _store: store,
    }
}

fn drive(w: &EgressWorld, mode: &str, key: &str, secret: &str) -> String {
    let out = std::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/egress/drive.py"
        ))
        .args([mode, &format!("http://{}", w.egress), "media", key, secret])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("python with boto3 (scripts/setup installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{mode}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn stored(w: &EgressWorld, key: &str) -> Option<Vec<u8>> {
    std::fs::read(w.root.0.join("realbucket").join(key)).ok()
}

#[test]
fn boto3_through_egress_with_local_keys() {
    let w = start();
    let out = drive(&w, "happy", API_KEY, API_SECRET);
    for step in [
        "put_object",
        "get_object",
        "get_object_range",
        "head_object",
        "encoded_key",
        "upload_file_multipart",
        "download_file",
        "list_objects_v2",
        "list_paginated",
        "copy_object",
        "presigned_get",
        "presigned_put",
        "checksum_modes",
        "delete_objects",
        "delete_object",
        "delete_objects_refused_whole",
    ] {
        assert!(
            out.contains(&format!("ok {step}\n")),
            "{step} missing:\n{out}"
        );
    }
    assert_eq!(
        stored(&w, "user_a1/videos/big.bin").map(|b| b.len()),
        Some(20 * 1024 * 1024)
    );
    // The worker's rules: images only, no delete, no list.
    let out = drive(&w, "limited", WORKER_KEY, WORKER_SECRET);
    assert!(out.contains("ok worker_copy_source_checked"), "{out}");
    assert!(
        stored(&w, "user_w1/videos/v.mp4").is_none(),
        "nothing written outside the rules"
    );
    let out = drive(&w, "refused", API_KEY, API_SECRET);
    assert!(out.contains("ok sigv2_refused"), "{out}");
    // What the store received: Portier's real key id, never a local key id or secret.
    let sent = w.relay.text();
    assert!(
        sent.contains(&format!("Credential={}/", w.store_key)),
        "re-signed for the store"
    );
    for local in [API_KEY, WORKER_KEY, API_SECRET, WORKER_SECRET] {
        assert!(!sent.contains(local), "{local} reached the store");
    }
    let logs = captured_logs();
    assert!(!logs.contains(API_SECRET) && !logs.contains(WORKER_SECRET));
    let m = w.world.portier.gateway.render_metrics();
    assert!(
        m.contains("portier_egress_requests_total{operation=\"PutObject\",result=\"deny\",service=\"image-worker\"}"),
        "{m}"
    );
}

/// Signs a request as a service would, with aws-sigv4, at `when`.
fn signed_put(w: &EgressWorld, key: &str, claimed: &[u8], sent: &[u8], when: SystemTime) -> Resp {
    let creds = s3::Credentials::new(API_KEY, API_SECRET, None).expect("creds");
    let uri: http::Uri = format!("http://{}/media/{key}", w.egress)
        .parse()
        .expect("uri");
    let mut h = http::HeaderMap::new();
    h.insert("content-length", claimed.len().into());
    let hash = hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        claimed,
    ));
    let signed = s3::sign_headers(
        &creds,
        "us-east-1",
        "PUT",
        &uri,
        &h,
        s3::Payload::Sha256(hash),
        when,
    )
    .expect("sign");
    // Sent with the Host it was signed for.
    use std::io::{Read, Write};
    let mut req = format!(
        "PUT /media/{key} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        w.egress,
        sent.len()
    );
    for (k, v) in signed.iter().filter(|(k, _)| k != "host") {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = std::net::TcpStream::connect(w.egress).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(req.as_bytes()).expect("head");
    s.write_all(sent).expect("body");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
}

#[test]
fn tampered_bodies_and_stale_dates_are_refused_and_store_nothing() {
    let w = start();
    let now = SystemTime::now();
    let ok = signed_put(
        &w,
        "user_t1/images/a.png",
        b"the real body",
        b"the real body",
        now,
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    // Same length, other bytes: the signed hash no longer matches.
    let r = signed_put(
        &w,
        "user_t1/images/b.png",
        b"the real body",
        b"the fake body",
        now,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("<Code>XAmzContentSHA256Mismatch</Code>"),
        "{}",
        r.body
    );
    assert!(
        stored(&w, "user_t1/images/b.png").is_none(),
        "a tampered body was stored"
    );
    // Signed 20 minutes ago.
    let r = signed_put(
        &w,
        "user_t1/images/c.png",
        b"late",
        b"late",
        now - Duration::from_secs(20 * 60),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("<Code>RequestTimeTooSkewed</Code>"),
        "{}",
        r.body
    );
    assert!(stored(&w, "user_t1/images/c.png").is_none());
    // Unsigned, and signed for another region.
    let r = send_body(
        w.egress,
        "PUT",
        "/media/user_t1/images/d.png",
        &[],
        b"x",
        false,
    );
    assert!(r.body.contains("<Code>AccessDenied</Code>"), "{}", r.body);
    assert_eq!(r.status, 403);
}
