//! Egress: real boto3 (from the project's .venv) drives Portier's egress listener with local
//! keys; Portier verifies their SigV4, authorizes each operation against the service's rules
//! and re-signs for the signature-checking embedded store, which sits behind a TCP relay that
//! records every byte it receives.

use std::io::{Read, Write};
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
        "list_special_prefix",
        "delete_objects_quiet",
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
    for series in [
        // The worker's PutObject outside its rules.
        r#"{operation="PutObject",result="deny",service="image-worker"}"#,
        // A wrong secret: the key id names the service, the request its operation.
        r#"{operation="PutObject",result="deny",service="api"}"#,
        // An unknown key id names no service.
        r#"{operation="GetObject",result="deny",service="-"}"#,
    ] {
        assert!(
            m.contains(&format!("portier_egress_requests_total{series}")),
            "{series}:\n{m}"
        );
    }
    // DeleteObjects: the store got the document rebuilt from the checked keys, with its own
    // Content-MD5, not the client's bytes (boto3 sends no Content-MD5, only a CRC32).
    let lower = sent.to_ascii_lowercase();
    assert!(
        sent.contains(r#"<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>user_a1/images/copy.png</Key></Object><Object><Key>user_a1/images/pre.png</Key></Object></Delete>"#),
        "{sent}"
    );
    assert!(
        sent.contains(r#"<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Quiet>true</Quiet><Object><Key>user_a1/blogs/a+b c.md</Key></Object></Delete>"#),
        "Quiet kept"
    );
    assert!(
        lower.contains("content-md5: "),
        "DeleteObjects without Content-MD5"
    );
}

/// How a test request's body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    ContentLength,
    Chunked,
}

/// A request signed the way an SDK signs it, with aws-sigv4 directly (not Portier's code).
struct Signed<'a> {
    method: &'a str,
    /// The path and query the signature is computed over.
    target: &'a str,
    /// The request target actually sent, when it differs (another encoding of the same).
    sent_target: Option<&'a str>,
    /// Headers signed and sent (besides host, x-amz-date, x-amz-content-sha256).
    headers: Vec<(&'a str, String)>,
    /// The `x-amz-content-sha256` value.
    payload: String,
    access_key: &'a str,
    secret: &'a str,
    when: SystemTime,
}

impl Signed<'_> {
    fn new<'a>(method: &'a str, target: &'a str, payload: String) -> Signed<'a> {
        Signed {
            method,
            target,
            sent_target: None,
            headers: Vec::new(),
            payload,
            access_key: API_KEY,
            secret: API_SECRET,
            when: SystemTime::now(),
        }
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b))
}

/// Sends `s` with `body` to the egress listener and reads the answer.
fn send_signed(w: &EgressWorld, mut s: Signed<'_>, body: &[u8], framing: Framing) -> Resp {
    use aws_sigv4::http_request::{
        sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
        SigningSettings, UriPathNormalizationMode,
    };
    use aws_sigv4::sign::v4;
    if framing == Framing::ContentLength {
        s.headers.push(("content-length", body.len().to_string()));
    }
    let host = w.egress.to_string();
    let identity =
        aws_credential_types::Credentials::new(s.access_key, s.secret, None, None, "test").into();
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(s.when)
        .settings(settings)
        .build()
        .expect("params")
        .into();
    let mut to_sign: Vec<(&str, &str)> = vec![("host", host.as_str())];
    to_sign.extend(s.headers.iter().map(|(k, v)| (*k, v.as_str())));
    let signable = SignableRequest::new(
        s.method,
        format!("http://{host}{}", s.target),
        to_sign.into_iter(),
        SignableBody::Precomputed(s.payload.clone()),
    )
    .expect("signable");
    let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
    let mut req = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n",
        s.method,
        s.sent_target.unwrap_or(s.target)
    );
    for (k, v) in &s.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    for (k, v) in instructions.headers() {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if framing == Framing::Chunked {
        req.push_str("Transfer-Encoding: chunked\r\n");
    }
    req.push_str("\r\n");
    let mut conn = std::net::TcpStream::connect(w.egress).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let _ = conn.write_all(req.as_bytes());
    match framing {
        Framing::ContentLength => {
            let _ = conn.write_all(body);
        }
        Framing::Chunked => {
            for part in body.chunks(50_000) {
                let _ = conn.write_all(format!("{:x}\r\n", part.len()).as_bytes());
                let _ = conn.write_all(part);
                let _ = conn.write_all(b"\r\n");
            }
            let _ = conn.write_all(b"0\r\n\r\n");
        }
    }
    let mut buf = Vec::new();
    let _ = conn.read_to_end(&mut buf);
    parse(&buf)
}

/// Signs a PutObject whose signed hash is `claimed`'s and sends `sent`.
fn signed_put(w: &EgressWorld, key: &str, claimed: &[u8], sent: &[u8], when: SystemTime) -> Resp {
    let target = format!("/media/{key}");
    let mut s = Signed::new("PUT", &target, sha256_hex(claimed));
    s.when = when;
    send_signed(w, s, sent, Framing::ContentLength)
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

/// Counts what the store receives across `f`.
fn relay_bytes_during(w: &EgressWorld, f: impl FnOnce() -> Resp) -> (Resp, u64) {
    let before = w.relay.settled_total();
    let r = f();
    (r, w.relay.settled_total() - before)
}

/// What Portier checks in the query is what the store gets: decoded once, a repeated name
/// refused, and the query rebuilt from the checked pairs (re-encoded, sorted), whatever
/// encoding the client used (`+` a literal plus, as in SigV4).
#[test]
fn the_store_gets_the_query_portier_checked() {
    let w = start();
    let target = "/media?list-type=2&prefix=user_a%2Fa%2Bb&fetch-owner=true";
    let mut s = Signed::new("GET", target, sha256_hex(b""));
    // The same parameters, another order and encoding.
    s.sent_target = Some("/media?prefix=user_a/a+b&list-type=2&fetch-owner=true");
    let r = send_signed(&w, s, b"", Framing::ContentLength);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        w.relay
            .text()
            .contains("GET /realbucket?list-type=2&prefix=user_a%2Fa%2Bb HTTP/1.1\r\n"),
        "the store got another query:\n{}",
        w.relay.text()
    );
    // A name given twice: refused before the store sees anything.
    let twice = "/media?list-type=2&prefix=user_a%2F&prefix=admin%2F";
    let (r, sent) = relay_bytes_during(&w, || {
        send_signed(
            &w,
            Signed::new("GET", twice, sha256_hex(b"")),
            b"",
            Framing::ContentLength,
        )
    });
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("<Code>InvalidArgument</Code>"),
        "{}",
        r.body
    );
    assert!(r.body.contains("more than once"), "{}", r.body);
    assert_eq!(sent, 0, "the store saw the refused request");
    // An encoded X-Amz- name is read decoded: not a presign parameter, not passed on.
    let r = send_signed(
        &w,
        Signed::new(
            "GET",
            "/media/user_a/x.png?X%2DAmz%2DFoo=1",
            sha256_hex(b""),
        ),
        b"",
        Framing::ContentLength,
    );
    assert_eq!(r.status, 501, "{}", r.body);
    assert!(r.body.contains("<Code>NotImplemented</Code>"), "{}", r.body);
}

/// CRC32 of `data`, base64, as `x-amz-checksum-crc32` carries it.
fn crc32_b64(data: &[u8]) -> String {
    use base64::Engine;
    use s3s::crypto::Checksum;
    base64::engine::general_purpose::STANDARD.encode(s3s::crypto::Crc32::checksum(data))
}

/// `data` in aws-chunked framing, the way botocore's AwsChunkedWrapper writes it.
fn aws_chunked(data: &[u8], chunk: usize, crc: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for c in data.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("0\r\nx-amz-checksum-crc32:{crc}\r\n\r\n").as_bytes());
    out
}

fn trailer_put(w: &EgressWorld, key: &str, data: &[u8], crc: &str, framing: Framing) -> Resp {
    let target = format!("/media/{key}");
    let mut s = Signed::new(
        "PUT",
        &target,
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER".to_string(),
    );
    s.headers = vec![
        ("content-encoding", "aws-chunked".to_string()),
        ("x-amz-decoded-content-length", data.len().to_string()),
        ("x-amz-sdk-checksum-algorithm", "CRC32".to_string()),
        ("x-amz-trailer", "x-amz-checksum-crc32".to_string()),
    ];
    send_signed(w, s, &aws_chunked(data, 65_536, crc), framing)
}

/// The upload mode current SDKs use over https (botocore only over https, so no boto3 test
/// reaches it over the plain egress listener): `STREAMING-UNSIGNED-PAYLOAD-TRAILER`, an
/// aws-chunked body and a CRC32 trailer, with and without Content-Length. The store holds the
/// decoded payload; a wrong CRC stores nothing (Portier checks it before the body completes:
/// the embedded store writes the object before it compares).
#[test]
fn aws_chunked_uploads_with_a_crc_trailer_store_the_decoded_payload() {
    let w = start();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for (key, framing) in [
        ("user_c1/images/length.bin", Framing::ContentLength),
        ("user_c1/images/chunked.bin", Framing::Chunked),
    ] {
        let r = trailer_put(&w, key, &data, &crc32_b64(&data), framing);
        assert_eq!(r.status, 200, "{key}: {}", r.body);
        assert_eq!(
            stored(&w, key).as_deref(),
            Some(&data[..]),
            "{key}: the store holds the decoded payload"
        );
    }
    let sent = w.relay.text().to_ascii_lowercase();
    assert!(
        sent.contains("x-amz-content-sha256: streaming-unsigned-payload-trailer\r\n")
            && sent.contains("x-amz-trailer: x-amz-checksum-crc32\r\n"),
        "re-signed in trailer mode"
    );
    for framing in [Framing::ContentLength, Framing::Chunked] {
        let r = trailer_put(&w, "user_c1/images/badcrc.bin", &data, "AAAAAA==", framing);
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("<Code>BadDigest</Code>"), "{}", r.body);
        assert!(
            r.body.contains("<RequestId>portier</RequestId>"),
            "Portier's refusal, not the store's: {}",
            r.body
        );
        assert!(
            stored(&w, "user_c1/images/badcrc.bin").is_none(),
            "a body with a wrong CRC was stored"
        );
    }
    // The same check on a checksum header: an unsigned payload with a wrong CRC32.
    let target = "/media/user_c1/images/badheader.bin";
    let mut s = Signed::new("PUT", target, "UNSIGNED-PAYLOAD".to_string());
    s.headers = vec![("x-amz-checksum-crc32", crc32_b64(b"something else"))];
    let r = send_signed(&w, s, &data, Framing::ContentLength);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("<Code>BadDigest</Code>")
            && r.body.contains("<RequestId>portier</RequestId>"),
        "{}",
        r.body
    );
    assert!(stored(&w, "user_c1/images/badheader.bin").is_none());
    // Without the trailer declared: refused before the store.
    let target = "/media/user_c1/images/notrailer.bin";
    let mut s = Signed::new(
        "PUT",
        target,
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER".to_string(),
    );
    s.headers = vec![
        ("content-encoding", "aws-chunked".to_string()),
        ("x-amz-decoded-content-length", data.len().to_string()),
    ];
    let (r, sent) = relay_bytes_during(&w, || {
        send_signed(
            &w,
            s,
            &aws_chunked(&data, 65_536, &crc32_b64(&data)),
            Framing::ContentLength,
        )
    });
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("<Code>InvalidRequest</Code>"), "{}", r.body);
    assert_eq!(sent, 0);
}

/// Chunk-signed bodies chain each chunk's signature from the request's, which re-signing
/// changes: refused up front, with the client setting that turns them off named.
#[test]
fn chunk_signed_uploads_are_refused_naming_the_client_setting() {
    let w = start();
    let target = "/media/user_s1/images/signed-chunks.bin";
    let mut s = Signed::new(
        "PUT",
        target,
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD".to_string(),
    );
    s.headers = vec![
        ("content-encoding", "aws-chunked".to_string()),
        ("x-amz-decoded-content-length", "5".to_string()),
    ];
    let body = b"5;chunk-signature=0000000000000000000000000000000000000000000000000000000000000000\r\nhello\r\n0;chunk-signature=0000000000000000000000000000000000000000000000000000000000000000\r\n\r\n";
    let (r, sent) = relay_bytes_during(&w, || send_signed(&w, s, body, Framing::ContentLength));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("<Code>InvalidRequest</Code>"), "{}", r.body);
    assert!(
        r.body.contains("chunkedEncodingEnabled(false)") && r.body.contains("UNSIGNED-PAYLOAD"),
        "the message names what to change: {}",
        r.body
    );
    assert!(!r.body.contains("over http"), "{}", r.body);
    assert_eq!(sent, 0, "the store saw a request");
    assert!(stored(&w, "user_s1/images/signed-chunks.bin").is_none());
}

/// An 8 MiB body with one byte flipped in the middle, under a signed SHA-256: Portier finds it
/// while the body streams and holds its last piece back, so the store never gets the whole
/// body; the refusal is Portier's (its RequestId), and nothing is stored.
#[test]
fn a_tampered_8_mib_body_never_completes_at_the_store() {
    let w = start();
    let real: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let mut tampered = real.clone();
    tampered[4 * 1024 * 1024 + 17] ^= 0x20;
    let key = "user_t8/videos/big.bin";
    let (r, sent) = relay_bytes_during(&w, || {
        signed_put(&w, key, &real, &tampered, SystemTime::now())
    });
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("<Code>XAmzContentSHA256Mismatch</Code>")
            && r.body.contains("<RequestId>portier</RequestId>"),
        "Portier's refusal: {}",
        r.body
    );
    let text = w.relay.text();
    let head = text
        .find("\r\n\r\n")
        .map(|i| i as u64 + 4)
        .expect("the request reached the store");
    let body_bytes = sent - head;
    assert!(
        body_bytes < real.len() as u64,
        "the store got the whole body ({body_bytes} bytes)"
    );
    assert!(
        body_bytes > 1024 * 1024,
        "the body streamed rather than waited for ({body_bytes} bytes)"
    );
    assert!(stored(&w, key).is_none(), "a tampered body was stored");
}

/// Headers that set encryption keys, storage class, tags, object lock, ACLs or a website
/// redirect are refused (not silently dropped) and never reach the store.
#[test]
fn storage_and_encryption_headers_are_refused() {
    let w = start();
    for (name, value) in [
        ("x-amz-server-side-encryption-customer-algorithm", "AES256"),
        ("x-amz-storage-class", "GLACIER"),
        ("x-amz-tagging", "a=b"),
        ("x-amz-acl", "public-read"),
        ("x-amz-website-redirect-location", "/elsewhere"),
    ] {
        let body = b"secret picture";
        let target = "/media/user_h1/images/h.png";
        let mut s = Signed::new("PUT", target, sha256_hex(body));
        s.headers = vec![(name, value.to_string())];
        let (r, sent) = relay_bytes_during(&w, || send_signed(&w, s, body, Framing::ContentLength));
        assert_eq!(r.status, 501, "{name}: {}", r.body);
        assert!(r.body.contains("<Code>NotImplemented</Code>"), "{}", r.body);
        assert_eq!(sent, 0, "{name}: the store saw the request");
        assert!(stored(&w, "user_h1/images/h.png").is_none());
    }
    // What S3 does not define for an operation is dropped: the store never sees it.
    let target = "/media/user_h1/images/ok.png";
    let mut s = Signed::new("PUT", target, sha256_hex(b"ok"));
    s.headers = vec![
        ("x-amz-meta-title", "fine".to_string()),
        ("x-amz-expected-bucket-owner", "111122223333".to_string()),
        ("range", "bytes=0-1".to_string()),
    ];
    let r = send_signed(&w, s, b"ok", Framing::ContentLength);
    assert_eq!(r.status, 200, "{}", r.body);
    let sent = w.relay.text().to_ascii_lowercase();
    assert!(sent.contains("x-amz-meta-title: fine\r\n"), "{sent}");
    assert!(
        !sent.contains("x-amz-expected-bucket-owner") && !sent.contains("range:"),
        "{sent}"
    );
}
