//! Path canonicalisation: a canonical path is a fixed point, starts with `/`, and has no
//! segment or character that two servers could read differently.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portier::path::{canonicalize, segments};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
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
