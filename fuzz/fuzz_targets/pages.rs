//! Next.js page decisions: a data request maps to a path, a redirect location never carries
//! a raw byte that could split headers and always comes back to this site, and the handshake
//! rules never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portier::admission::pages;
use portier::error::Reason;
use portier::policy::Authn;

mod common;

fuzz_target!(|data: &[u8]| {
    let f = common::fields(data, 4);
    if let Some(pages::DataRequest::Page(p)) = pages::data_request(&f[0]) {
        assert!(p.starts_with('/'), "{p:?}");
    }
    if let Ok(canonical) = portier::path::canonicalize(&f[1]) {
        let back = pages::back_target(&canonical, None);
        assert!(
            back.starts_with('/') && !back.starts_with("//") && !back.starts_with("/\\"),
            "{back:?} leaves the site"
        );
    }
    let loc = pages::redirect_location("/sign-in", None, &f[1], &[("required", f[2].as_str())]);
    assert!(loc.starts_with("/sign-in?"), "{loc:?}");
    assert!(
        loc.bytes().all(|b| b.is_ascii_graphic()),
        "{loc:?} has a byte a header cannot carry"
    );
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(&f[3]) {
        headers.insert(http::header::COOKIE, v);
    }
    headers.insert("sec-fetch-dest", http::HeaderValue::from_static("document"));
    let authn = Authn::SignedOut {
        reason: Reason::TokenExpired,
        source: None,
    };
    for development in [None, Some(false), Some(true)] {
        let instance = pages::Instance {
            cookie_suffix: Some("m3jNlIl7"),
            development,
            frontend_api: Some("clerk.portier.test"),
        };
        let _ = pages::clerk_would_handshake(
            &http::Method::GET,
            &headers,
            Some(&f[2]),
            &instance,
            &authn,
            1_800_000_000,
        );
    }
    let _ = pages::session_set_cookie([f[3].as_bytes()].into_iter(), Some("m3jNlIl7"));
});
