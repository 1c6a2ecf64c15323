//! Path canonicalisation: a canonical path is a fixed point, starts with `/`, and has no
//! segment or character that two servers could read differently; and through the proxy's own
//! first admission steps (the shipped policies), a path canonicalisation refuses never reaches
//! the router, and an accepted one is routed by its canonical form only.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portier::admission::{front, Front, FrontConfig};
use portier::path::{canonicalize, segments};
use portier::policy::{PolicySet, Step};

fn shipped() -> &'static PolicySet {
    static P: OnceLock<PolicySet> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let sources = portier::policy::read_dir_sources(&dir).expect("shipped policies");
        let known = portier::policy::Known {
            upstreams: &["flask", "nextjs", "s3"],
            webhooks: &["workers", "clerk"],
            declared: None,
        };
        PolicySet::compile_with(&sources, known).expect("shipped policies compile")
    })
}

/// The first admission steps, as the proxy takes them, on `raw` (when it is a request target).
fn admit(raw: &str) {
    let Ok(uri) = raw.parse::<http::Uri>() else {
        return;
    };
    let cfg = FrontConfig {
        policies: shipped(),
        max_header_bytes: 1 << 20,
        max_body_bytes: 1 << 20,
        jwks_path: None,
    };
    let mut steps: Vec<Step> = Vec::new();
    let got = front(cfg, "GET", &uri, &http::HeaderMap::new(), &mut steps);
    let routed_steps = steps.iter().filter(|s| s.check.starts_with("route")).count();
    match canonicalize(uri.path()) {
        Err(_) => {
            assert!(
                matches!(&got, Err(e) if e.reason == portier::error::Reason::BadPath),
                "{raw:?}: a refused path was admitted"
            );
            assert_eq!(routed_steps, 0, "{raw:?} reached the router: {steps:?}");
        }
        Ok(c) => {
            if let Ok(Front::Routed(r)) = &got {
                assert_eq!(r.canonical, c, "{raw:?}");
                // Routed by the canonical path (or the page a data request names).
                assert!(
                    r.decided() == c || c.starts_with("/_next/data/"),
                    "{raw:?} routed as {:?}",
                    r.decided()
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    admit(raw);
    let Ok(c) = canonicalize(raw) else {
        return;
    };
    assert!(c.starts_with('/'), "{c:?}");
    assert_eq!(
        canonicalize(&c).as_deref(),
        Ok(c.as_str()),
        "not a fixed point: {raw:?}"
    );
    assert!(!c.contains("//"), "{c:?}");
    for bad in ['\\', ';', '#', '\0'] {
        assert!(!c.contains(bad), "{c:?}");
    }
    let lower = c.to_ascii_lowercase();
    for esc in ["%2e", "%2f", "%5c", "%3b", "%00"] {
        assert!(!lower.contains(esc), "{c:?} keeps {esc}");
    }
    // A literal `%` stays `%25`, but never in front of two hex digits (double encoding).
    let b = c.as_bytes();
    for (i, w) in b.windows(5).enumerate() {
        if w[..3].eq_ignore_ascii_case(b"%25") {
            assert!(
                !(w[3].is_ascii_hexdigit() && w[4].is_ascii_hexdigit()),
                "{c:?} at {i}"
            );
        }
    }
    for s in segments(&c) {
        assert!(s != "." && s != "..", "{c:?}");
    }
});
