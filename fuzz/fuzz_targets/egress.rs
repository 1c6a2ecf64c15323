//! The egress listener's request parsing: SigV4 verification never accepts a request the
//! fuzzer signed; a classified request's key is canonical; the query Portier forwards decodes
//! to exactly the pairs it checked; and the streaming body check (aws-chunked framing, its
//! trailer checksum) gives the same verdict however the body is cut into pieces.
#![no_main]
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use portier::egress::{body, ops, query, sigv4};

mod common;

fn keys() -> &'static sigv4::KeyCache {
    static K: OnceLock<sigv4::KeyCache> = OnceLock::new();
    K.get_or_init(sigv4::KeyCache::default)
}

fuzz_target!(|data: &[u8]| {
    let f = common::fields(data, 8);
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("authorization", &f[3]),
        ("x-amz-date", &f[4]),
        ("x-amz-content-sha256", &f[5]),
    ] {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    }
    let (method, path) = (f[0].as_str(), f[1].as_str());
    let query = (!f[2].is_empty()).then_some(f[2].as_str());
    let req = sigv4::Inbound {
        method,
        raw_path: path,
        query,
        headers: &headers,
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let secret = |ak: &str| (ak == "AKIAFUZZFUZZFUZZ0001").then(|| "fuzz-secret".to_string());
    if let Ok(v) = sigv4::verify(&req, secret, "us-east-1", now, keys()) {
        panic!("accepted a request the fuzzer signed: {}", v.access_key);
    }
    if let Ok(p) = query::pairs(query) {
        let forwarded = query::canonical(&p);
        let mut again = query::pairs(Some(&forwarded)).expect("Portier's own query decodes");
        let mut sorted = p.clone();
        sorted.sort();
        again.sort();
        assert_eq!(again, sorted, "{query:?} forwarded as {forwarded:?}");
    }
    chunked_body(f[6].as_bytes(), &f[7]);
    if let Ok(r) = ops::classify(method, path, query, &headers, "media") {
        for k in r.key.iter().chain(r.copy_source.iter()) {
            assert!(!k.is_empty() && !k.contains("//"), "{k:?}");
            assert!(k.split('/').all(|s| s != "." && s != ".."), "{k:?}");
        }
    }
});

/// An aws-chunked upload with a CRC32 trailer, checked whole and in pieces cut at the bytes of
/// `cuts` (`<decoded length>:<cut bytes>`): the verdict never depends on where the pieces end.
fn chunked_body(bytes: &[u8], cuts: &str) {
    let (declared, cuts) = cuts.split_once(':').unwrap_or(("0", cuts));
    let mut h = http::HeaderMap::new();
    h.insert("content-encoding", http::HeaderValue::from_static("aws-chunked"));
    h.insert("x-amz-trailer", http::HeaderValue::from_static("x-amz-checksum-crc32"));
    if let Ok(v) = http::HeaderValue::from_str(declared) {
        h.insert("x-amz-decoded-content-length", v);
    }
    let Ok(Some(spec)) = body::BodySpec::for_request(
        &sigv4::PayloadMode::StreamingUnsignedTrailer,
        &h,
        true,
        true,
    ) else {
        return;
    };
    let whole = {
        let mut c = body::BodyCheck::new(&spec);
        c.update(bytes).and_then(|()| c.finish()).map_err(|e| e.code)
    };
    let mut c = body::BodyCheck::new(&spec);
    let mut at = 0;
    let mut pieces = Ok(());
    for cut in cuts.bytes() {
        let end = (at + 1 + cut as usize % 64).min(bytes.len());
        pieces = c.update(&bytes[at..end]).map_err(|e| e.code);
        at = end;
        if pieces.is_err() || at == bytes.len() {
            break;
        }
    }
    let pieces = pieces.and_then(|()| {
        c.update(&bytes[at..])
            .and_then(|()| c.finish())
            .map_err(|e| e.code)
    });
    assert_eq!(whole, pieces, "the verdict depends on the pieces");
}
