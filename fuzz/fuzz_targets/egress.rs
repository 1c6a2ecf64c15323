//! The egress listener's request parsing: SigV4 verification never accepts a request the
//! fuzzer signed, and a classified request's key is canonical.
#![no_main]
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use portier::egress::{ops, sigv4};

mod common;

fn keys() -> &'static sigv4::KeyCache {
    static K: OnceLock<sigv4::KeyCache> = OnceLock::new();
    K.get_or_init(sigv4::KeyCache::default)
}

fuzz_target!(|data: &[u8]| {
    let f = common::fields(data, 6);
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
    if let Ok(r) = ops::classify(method, path, query, &headers, "media") {
        for k in r.key.iter().chain(r.copy_source.iter()) {
            assert!(!k.is_empty() && !k.contains("//"), "{k:?}");
            assert!(k.split('/').all(|s| s != "." && s != ".."), "{k:?}");
        }
    }
});
