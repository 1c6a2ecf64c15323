//! Where the session token comes from, and what is stripped for upstreams: the token is a
//! piece of what was sent, the header wins, and no Clerk cookie survives stripping.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portier::auth::token::{cookie_pairs, extract_token, TokenSource};
use portier::headers::strip_clerk_cookies;

mod common;

fuzz_target!(|data: &[u8]| {
    let f = common::fields(data, 4);
    let auth = (!f[0].is_empty()).then(|| f[0].as_bytes());
    let cookies = [f[1].as_bytes(), f[2].as_bytes()];
    let suffix = (!f[3].is_empty()).then_some(f[3].as_str());
    if let Ok(Some((token, source))) = extract_token(auth, cookies.iter().copied(), suffix) {
        assert!(!token.is_empty());
        match source {
            TokenSource::Header => assert!(f[0].contains(token)),
            TokenSource::Cookie => {
                assert!(
                    auth.is_none(),
                    "a cookie token while Authorization was sent"
                );
                assert!(f[1].contains(token) || f[2].contains(token));
            }
        }
    }
    if let Some(kept) = strip_clerk_cookies(cookies.iter().copied()) {
        for (name, _) in cookie_pairs(&kept) {
            for clerk in [&b"__session"[..], b"__client_uat", b"__clerk", b"__refresh"] {
                assert!(
                    !name.starts_with(clerk),
                    "{:?} kept",
                    String::from_utf8_lossy(name)
                );
            }
        }
    }
});
