//! Object keys and who owns them. A key taken from a request path is decoded exactly once and
//! checked here, and the ownership rule (`<sub>/...`) is decided on that decoded form only;
//! the same decoded key is then re-encoded for the S3 request, so what Portier authorises and
//! what the store stores are one string. Everything here is a pure function.

use thiserror::Error;

/// S3's limit on the UTF-8 length of an object key.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a key was refused. All of these are client errors (400); the variant is for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("object key is empty")]
    Empty,
    #[error("object key has a malformed percent-escape")]
    BadEscape,
    #[error("object key is not valid UTF-8 once decoded")]
    InvalidUtf8,
    #[error("object key is percent-encoded twice")]
    DoubleEncoded,
    #[error("object key contains a control character")]
    ControlChar,
    #[error("object key contains a backslash")]
    Backslash,
    #[error("object key has an empty segment")]
    EmptySegment,
    #[error("object key has a '.' or '..' segment")]
    DotSegment,
    #[error("object key has a segment ending in '.' or ' '")]
    TrailingDotOrSpace,
    #[error("object key is longer than 1024 bytes")]
    TooLong,
}

/// Decodes the key part of a canonical request path (see `crate::path::canonicalize`) into the
/// object key, and refuses every form that two systems could read as different keys.
///
/// Percent-escapes are decoded once. The result is refused if it is empty, longer than
/// [`MAX_KEY_BYTES`], not UTF-8, contains a control character (C0, DEL, C1) or a backslash, has
/// an empty segment (`a//b`, a leading or trailing `/`), a `.` or `..` segment, a segment ending
/// in `.` or space (Windows/SMB-backed stores strip those, so `x.` and `x` would alias), or
/// still contains `%` followed by two hex digits (double encoding: some later layer would
/// decode it again).
pub fn canonical_key(raw: &str) -> Result<String, KeyError> {
    if raw.is_empty() {
        return Err(KeyError::Empty);
    }
    // Every escape is 3 bytes for 1 decoded byte; anything longer cannot decode under the
    // limit, and refusing early bounds the work.
    if raw.len() > MAX_KEY_BYTES * 3 {
        return Err(KeyError::TooLong);
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(crate::path::hex);
            let lo = bytes.get(i + 2).copied().and_then(crate::path::hex);
            match (hi, lo) {
                (Some(hi), Some(lo)) => decoded.push(hi * 16 + lo),
                _ => return Err(KeyError::BadEscape),
            }
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    let key = String::from_utf8(decoded).map_err(|_| KeyError::InvalidUtf8)?;
    check_decoded(&key)?;
    Ok(key)
}

/// The structural rules on an already-decoded key (everything but the decoding itself).
fn check_decoded(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong);
    }
    let bytes = key.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%'
            && bytes
                .get(i + 1)
                .copied()
                .and_then(crate::path::hex)
                .is_some()
            && bytes
                .get(i + 2)
                .copied()
                .and_then(crate::path::hex)
                .is_some()
        {
            return Err(KeyError::DoubleEncoded);
        }
    }
    if key.chars().any(char::is_control) {
        return Err(KeyError::ControlChar);
    }
    if key.contains('\\') {
        return Err(KeyError::Backslash);
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return Err(KeyError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(KeyError::DotSegment);
        }
        if segment.ends_with('.') || segment.ends_with(' ') {
            return Err(KeyError::TrailingDotOrSpace);
        }
    }
    Ok(())
}

/// Whether `user_id` has the shape of a Clerk user id: `user_` then one or more ASCII
/// alphanumerics. Anything else (an empty `sub`, one with `/`, `.` or `*`) could widen the
/// prefix, so it owns nothing.
pub fn is_valid_user_id(user_id: &str) -> bool {
    user_id
        .strip_prefix("user_")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Whether the decoded key (from [`canonical_key`]) belongs to `user_id`: it is
/// `<user_id>/<something>`. Clerk ids already start with `user_`, so the prefix is the `sub`
/// itself, never `user_<sub>`. The structural key rules are checked again here so that a
/// caller who forgot [`canonical_key`] gets `false`, not a traversal.
pub fn owned_by(key: &str, user_id: &str) -> bool {
    if !is_valid_user_id(user_id) || check_decoded(key).is_err() {
        return false;
    }
    key.strip_prefix(user_id)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|rest| !rest.is_empty())
}

/// The kind folder of a key: its second segment (`images` in `user_x/images/a.png`). A key
/// with fewer than three segments has no folder (`user_x/a.png` is a file at the top).
pub fn kind_folder(key: &str) -> Option<&str> {
    let mut segments = key.split('/');
    let _owner = segments.next()?;
    let folder = segments.next()?;
    segments.next()?;
    (!folder.is_empty()).then_some(folder)
}

fn percent_encode(input: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(input.len());
    percent_encode_into(&mut out, input, keep_slash);
    out
}

fn percent_encode_into(out: &mut String, input: &str, keep_slash: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in input.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else if b == b'/' && keep_slash {
            out.push('/');
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

/// The URI path form of a decoded key, as SigV4 and S3 expect it: unreserved characters
/// (`A-Za-z0-9-_.~`) and the `/` between segments kept, every other byte `%XX` upper-case.
/// Signing uses this string as-is (single encoding), so it must be the one sent.
pub fn encode_key_for_path(key: &str) -> String {
    percent_encode(key, true)
}

/// [`encode_key_for_path`] appended to `out`.
pub(crate) fn encode_key_for_path_into(out: &mut String, key: &str) {
    percent_encode_into(out, key, true);
}

/// The SigV4 encoding of one query-string name or value: like [`encode_key_for_path`] but `/`
/// is encoded too. Use it to build the `query` given to `S3Target::bucket_uri`.
pub fn encode_query_component(value: &str) -> String {
    percent_encode(value, false)
}

/// [`encode_query_component`] appended to `out` (the signer builds its canonical query in
/// one buffer).
pub(crate) fn encode_query_component_into(out: &mut String, value: &str) {
    percent_encode_into(out, value, false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_encoded_keys_decode_once() {
        assert_eq!(
            canonical_key("user_a/images/a.png").as_deref(),
            Ok("user_a/images/a.png")
        );
        assert_eq!(
            canonical_key("user_a/images/my%20photo%20%C3%A9.png").as_deref(),
            Ok("user_a/images/my photo \u{e9}.png")
        );
        // A single `%25` is a literal percent sign, allowed when not followed by hex.
        assert_eq!(
            canonical_key("user_a/100%25.txt").as_deref(),
            Ok("user_a/100%.txt")
        );
    }

    #[test]
    fn foreign_key_variants_are_refused_or_not_owned() {
        let cases: &[(&str, KeyError)] = &[
            ("user_a/../user_b/x", KeyError::DotSegment),
            ("user_a/%2e%2e/user_b/x", KeyError::DotSegment),
            ("user_a/%2E%2E/user_b/x", KeyError::DotSegment),
            ("user_a/.%2e/user_b/x", KeyError::DotSegment),
            ("user_a/%252e%252e/user_b/x", KeyError::DoubleEncoded),
            ("user_a/%252Fuser_b/x", KeyError::DoubleEncoded),
            ("user_a/..\\user_b/x", KeyError::Backslash),
            ("user_a/%5C..%5Cuser_b/x", KeyError::Backslash),
            ("user_a./x", KeyError::TrailingDotOrSpace),
            ("user_a/x.", KeyError::TrailingDotOrSpace),
            ("user_a/x%20", KeyError::TrailingDotOrSpace),
            ("user_a/./x", KeyError::DotSegment),
            ("user_a//x", KeyError::EmptySegment),
            ("user_a%2F%2Fx", KeyError::EmptySegment),
            ("/user_a/x", KeyError::EmptySegment),
            ("user_a/x/", KeyError::EmptySegment),
            ("user_a/x\0", KeyError::ControlChar),
            ("user_a/x%00", KeyError::ControlChar),
            ("user_a/x%7F", KeyError::ControlChar),
            ("user_a/x%0A", KeyError::ControlChar),
            ("user_a/x%C2%85", KeyError::ControlChar),
            ("user_a/x%FF", KeyError::InvalidUtf8),
            ("user_a/x%C3", KeyError::InvalidUtf8),
            ("user_a/x%2", KeyError::BadEscape),
            ("user_a/x%zz", KeyError::BadEscape),
            ("", KeyError::Empty),
        ];
        for (raw, want) in cases {
            assert_eq!(canonical_key(raw), Err(*want), "{raw:?}");
            // Even a caller who skips decoding gets `false`, except for a malformed escape,
            // which as a decoded key is just a literal `%` (`user_a/x%2` is user_a's key).
            if *want != KeyError::BadEscape {
                assert!(!owned_by(raw, "user_a"), "{raw:?}");
            }
        }
    }

    #[test]
    fn encoded_slash_decodes_to_a_real_segment_boundary() {
        // `%2F` is decoded to `/`: the key is `user_b/x`, owned by user_b, not user_a.
        let key = canonical_key("user_b%2Fx").unwrap();
        assert_eq!(key, "user_b/x");
        assert!(!owned_by(&key, "user_a"));
        assert!(owned_by(&key, "user_b"));
        let key = canonical_key("user_a%2F..%2Fuser_b%2Fx");
        assert_eq!(key, Err(KeyError::DotSegment));
    }

    #[test]
    fn length_limit_is_on_decoded_bytes() {
        let ok = format!("user_a/{}", "x".repeat(MAX_KEY_BYTES - 7));
        assert_eq!(canonical_key(&ok).map(|k| k.len()), Ok(MAX_KEY_BYTES));
        let long = format!("{ok}x");
        assert_eq!(canonical_key(&long), Err(KeyError::TooLong));
        // 342 escaped two-byte characters decode to 684 bytes: under the limit.
        let encoded = format!("user_a/{}", "%C3%A9".repeat(342));
        assert!(canonical_key(&encoded).is_ok());
        let huge = "a".repeat(MAX_KEY_BYTES * 3 + 1);
        assert_eq!(canonical_key(&huge), Err(KeyError::TooLong));
    }

    #[test]
    fn ownership_needs_the_exact_sub_and_a_slash() {
        assert!(owned_by("user_a/x", "user_a"));
        assert!(owned_by("user_a/images/x.png", "user_a"));
        assert!(!owned_by("user_a", "user_a"));
        assert!(!owned_by("user_a/", "user_a"));
        assert!(!owned_by("user_ab/x", "user_a"));
        assert!(!owned_by("user_user_a/x", "user_a"));
        assert!(!owned_by("user_b/x", "user_a"));
        assert!(!owned_by("USER_A/x", "user_a"));
        // Malformed subjects own nothing, even a key that starts with them.
        for sub in [
            "",
            "user_",
            "a",
            "user_a/",
            "user_a.b",
            "user_*",
            "user_a b",
            "user_\u{e9}",
        ] {
            assert!(!owned_by(&format!("{sub}/x"), sub), "{sub:?}");
        }
    }

    #[test]
    fn kind_folder_is_the_second_segment_of_a_nested_key() {
        assert_eq!(kind_folder("user_x/images/a.png"), Some("images"));
        assert_eq!(kind_folder("user_x/videos/2024/a.mp4"), Some("videos"));
        assert_eq!(kind_folder("user_x/a.png"), None);
        assert_eq!(kind_folder("user_x"), None);
        assert_eq!(kind_folder("user_x//a"), None);
    }

    #[test]
    fn path_encoding_follows_sigv4() {
        assert_eq!(
            encode_key_for_path("user_a/images/my photo \u{e9}.png"),
            "user_a/images/my%20photo%20%C3%A9.png"
        );
        assert_eq!(encode_key_for_path("a/b-c_d.e~f"), "a/b-c_d.e~f");
        assert_eq!(
            encode_key_for_path("a+b=c&d?e#f%"),
            "a%2Bb%3Dc%26d%3Fe%23f%25"
        );
        assert_eq!(encode_query_component("user_a/x y"), "user_a%2Fx%20y");
    }

    #[test]
    fn encode_then_decode_round_trips() {
        for key in [
            "user_a/x",
            "user_a/my photo \u{e9}.png",
            "user_a/100%",
            "user_a/a+b",
        ] {
            assert_eq!(canonical_key(&encode_key_for_path(key)).as_deref(), Ok(key));
        }
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn decoded_keys_never_escape_their_owner() {
        let parts = [
            "user_a", "user_b", "/", "..", ".", "%2e", "%2f", "%2F", "%25", "%00", "\\", "x",
            "%20", "images", "%c3%a9", " ",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..100_000 {
            let mut raw = String::from("user_a/");
            for _ in 0..rng.random_range(0..8) {
                raw.push_str(parts[rng.random_range(0..parts.len())]);
            }
            if let Ok(k) = canonical_key(&raw) {
                if owned_by(&k, "user_a") {
                    assert!(k.starts_with("user_a/"), "{raw:?} -> {k:?}");
                    assert!(
                        !k.split('/').any(|s| s == ".." || s == "." || s.is_empty()),
                        "{raw:?} -> {k:?}"
                    );
                }
                assert!(
                    !owned_by(&k, "user_b") || k.starts_with("user_b/"),
                    "{raw:?}"
                );
            }
        }
    }
}
