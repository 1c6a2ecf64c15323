//! The one canonical path. A request path is normalised exactly once, before routing; the same
//! string is matched, logged and forwarded. Encodings that different servers read differently
//! are refused (400 `bad_path`) rather than guessed at, because every known path-bypass CVE in
//! proxies (Envoy `%2F`, `..;`, Traefik `%2e%2e`) comes from the proxy and the upstream
//! disagreeing about what a path means.

use thiserror::Error;

/// Why a path was refused. All of these map to 400 `bad_path`; the variant is for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("path is empty or does not start with '/'")]
    NotAbsolute,
    #[error("path contains a NUL or control character")]
    ControlChar,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path contains ';' (matrix parameters are ambiguous across servers)")]
    Semicolon,
    #[error("path contains '#' (a fragment is never sent by a client)")]
    Fragment,
    #[error("path contains a non-ASCII byte")]
    NonAscii,
    #[error("path has a malformed percent-escape")]
    BadEscape,
    #[error(
        "path percent-encodes a character that changes its structure (%2e, %2f, %5c, %3b, %00)"
    )]
    EncodedDelimiter,
    #[error("path is percent-encoded twice")]
    DoubleEncoded,
    #[error("path has a '.' or '..' segment")]
    DotSegment,
    #[error("path is too long")]
    TooLong,
    #[error("path decodes to bytes that are not UTF-8 (an overlong or broken sequence)")]
    NotUtf8,
}

/// Longest path accepted; real routes are far shorter and the limit bounds router work.
pub const MAX_PATH_LEN: usize = 8192;

/// The value of one hex digit (either case).
pub fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~')
}

/// Canonicalises the path part of a request target (no query string).
///
/// - percent-escapes of unreserved characters are decoded (`%41` -> `A`), every other escape
///   is kept with upper-case hex, so two spellings of one path become one string;
/// - `%2e`, `%2f`, `%5c`, `%3b`, `%00` and any control character, `;`, `\`, `#`, NUL, a `.` or
///   `..` segment, and double encoding (`%25` followed by two hex digits) are refused;
/// - runs of `/` collapse to one (the upstream frameworks do the same, so they agree);
/// - a trailing `/` is kept, because upstreams may route `/a` and `/a/` differently.
pub fn canonicalize(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if bytes.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    // Start of the current segment in `out`, to spot `.` and `..` after decoding.
    let mut seg_start = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'/' => {
                check_segment(&out[seg_start..])?;
                if !out.ends_with('/') {
                    out.push('/');
                }
                seg_start = out.len();
                i += 1;
                continue;
            }
            b'%' => {
                let (h, l) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => (h, l),
                    _ => return Err(PathError::BadEscape),
                };
                let v = match (hex(h), hex(l)) {
                    (Some(h), Some(l)) => h * 16 + l,
                    _ => return Err(PathError::BadEscape),
                };
                match v {
                    b'.' | b'/' | b'\\' | b';' | b'#' | b'?' | 0 => {
                        return Err(PathError::EncodedDelimiter)
                    }
                    b'%' => {
                        let next_is_escape = matches!(
                            (
                                bytes.get(i + 3).copied().and_then(hex),
                                bytes.get(i + 4).copied().and_then(hex)
                            ),
                            (Some(_), Some(_))
                        );
                        if next_is_escape {
                            return Err(PathError::DoubleEncoded);
                        }
                        out.push_str("%25");
                    }
                    c if c < 0x20 || c == 0x7f => return Err(PathError::ControlChar),
                    c if is_unreserved(c) => out.push(c as char),
                    c => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        out.push('%');
                        out.push(HEX[(c >> 4) as usize] as char);
                        out.push(HEX[(c & 15) as usize] as char);
                    }
                }
                i += 3;
                continue;
            }
            0..=0x1f | 0x7f => return Err(PathError::ControlChar),
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Semicolon),
            b'#' => return Err(PathError::Fragment),
            0x80..=0xff => return Err(PathError::NonAscii),
            _ => out.push(b as char),
        }
        i += 1;
    }
    check_segment(&out[seg_start..])?;
    // Decoding `%41` after a literal `%25` can itself produce `%25` + two hex digits
    // (`%25%41%41` -> `%25AA`), a double encoding the per-escape check above cannot see.
    let b = out.as_bytes();
    if b.windows(5)
        .any(|w| &w[..3] == b"%25" && hex(w[3]).is_some() && hex(w[4]).is_some())
    {
        return Err(PathError::DoubleEncoded);
    }
    // The kept escapes must decode to UTF-8: an overlong form such as `%C0%AE` is a `.` to
    // some decoders and an error to others.
    if out.contains('%') && !decodes_to_utf8(b) {
        return Err(PathError::NotUtf8);
    }
    Ok(out)
}

/// Whether a canonical path's escapes decode to valid UTF-8 (the rest is ASCII).
fn decodes_to_utf8(b: &[u8]) -> bool {
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => bytes.push(h * 16 + l),
                _ => return false,
            }
            i += 3;
        } else {
            bytes.push(b[i]);
            i += 1;
        }
    }
    std::str::from_utf8(&bytes).is_ok()
}

fn check_segment(seg: &str) -> Result<(), PathError> {
    if seg == "." || seg == ".." {
        Err(PathError::DotSegment)
    } else {
        Ok(())
    }
}

/// The segments a router matches: the canonical path without its leading `/` and without a
/// single trailing `/` (so `/a/` and `/a` match the same route; each is forwarded as written).
pub fn segments(canonical: &str) -> impl Iterator<Item = &str> {
    let trimmed = canonical.strip_prefix('/').unwrap_or(canonical);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    trimmed.split('/').filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_pass_unchanged() {
        for p in [
            "/",
            "/api/books",
            "/api/books/",
            "/a-b_c~d/E.png",
            "/x/y.z/w",
        ] {
            assert_eq!(canonicalize(p).as_deref(), Ok(p));
        }
    }

    #[test]
    fn unreserved_escapes_decode_and_others_uppercase() {
        assert_eq!(canonicalize("/%61pi/%7euser").as_deref(), Ok("/api/~user"));
        assert_eq!(canonicalize("/a%20b%c3%a9").as_deref(), Ok("/a%20b%C3%A9"));
    }

    #[test]
    fn slashes_collapse() {
        assert_eq!(
            canonicalize("//api///books//1").as_deref(),
            Ok("/api/books/1")
        );
    }

    #[test]
    fn ambiguous_forms_are_refused() {
        let cases: &[(&str, PathError)] = &[
            ("", PathError::NotAbsolute),
            ("api", PathError::NotAbsolute),
            ("/api/../admin", PathError::DotSegment),
            ("/api/./x", PathError::DotSegment),
            ("/api/..", PathError::DotSegment),
            ("/api/%2e%2e/admin", PathError::EncodedDelimiter),
            ("/api/%2E./admin", PathError::EncodedDelimiter),
            ("/api%2fadmin", PathError::EncodedDelimiter),
            ("/api%5cadmin", PathError::EncodedDelimiter),
            ("/api/..;/admin", PathError::Semicolon),
            ("/api;jsessionid=1", PathError::Semicolon),
            ("/api%3bx", PathError::EncodedDelimiter),
            ("/api\\admin", PathError::Backslash),
            ("/api#frag", PathError::Fragment),
            ("/api\0", PathError::ControlChar),
            ("/api%00", PathError::EncodedDelimiter),
            ("/api%0a", PathError::ControlChar),
            ("/api%252e%252e/x", PathError::DoubleEncoded),
            ("/api%2", PathError::BadEscape),
            ("/api%zz", PathError::BadEscape),
            ("/caf\u{e9}", PathError::NonAscii),
        ];
        for (input, want) in cases {
            assert_eq!(canonicalize(input), Err(*want), "{input:?}");
        }
    }

    #[test]
    fn regression_double_encoding_assembled_by_decoding() {
        // Found by the randomised test: the output must not become `%25AA`.
        assert_eq!(canonicalize("/%25%41%41x"), Err(PathError::DoubleEncoded));
        assert_eq!(canonicalize("/%25A%41"), Err(PathError::DoubleEncoded));
    }

    #[test]
    fn escapes_must_decode_to_utf8() {
        // Overlong `.` (`%C0%AE`): a traversal to lenient decoders, garbage to strict ones.
        assert_eq!(
            canonicalize("/api/%C0%AE%C0%AE/admin"),
            Err(PathError::NotUtf8)
        );
        assert_eq!(canonicalize("/a%ff"), Err(PathError::NotUtf8));
        assert_eq!(canonicalize("/a%c3"), Err(PathError::NotUtf8));
        assert_eq!(canonicalize("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
    }

    #[test]
    fn lone_percent_25_is_kept_literal() {
        assert_eq!(canonicalize("/100%25").as_deref(), Ok("/100%25"));
    }

    #[test]
    fn canonical_form_is_a_fixed_point() {
        for p in ["/%61//b/", "/a%20b", "/x/%7E/y"] {
            let once = canonicalize(p).unwrap();
            assert_eq!(canonicalize(&once).unwrap(), once);
        }
    }

    #[test]
    fn segments_ignore_leading_and_trailing_slash() {
        assert_eq!(segments("/a/b/").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(segments("/").count(), 0);
    }
}

/// Randomised checks (a bounded, seeded stand-in for a fuzzer: the stable toolchain here has
/// no cargo-fuzz sanitizers). Inputs mix the characters that matter to path parsing.
#[cfg(test)]
mod prop {
    use super::*;
    use rand::{Rng, SeedableRng};

    const ALPHABET: &[&str] = &[
        "/", "//", ".", "..", "%", "%2e", "%2E", "%2f", "%5c", "%25", "%00", "%41", "%c3%a9", ";",
        "\\", "#", "a", "Z", "~", "-", "_", "user_1", "\0", "\u{e9}", " ", "%zz",
    ];

    #[test]
    fn canonical_paths_are_fixed_points_without_dot_segments() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for _ in 0..200_000 {
            let n = rng.random_range(0..12);
            let mut s = String::from("/");
            for _ in 0..n {
                s.push_str(ALPHABET[rng.random_range(0..ALPHABET.len())]);
            }
            if let Ok(c) = canonicalize(&s) {
                assert_eq!(canonicalize(&c).as_deref(), Ok(c.as_str()), "{s:?}");
                assert!(!c.contains("//"), "{s:?} -> {c:?}");
                for seg in c.split('/') {
                    assert!(seg != "." && seg != "..", "{s:?} -> {c:?}");
                }
                for bad in [";", "\\", "#", "%2E", "%2F", "%5C", "%00"] {
                    assert!(!c.contains(bad), "{s:?} -> {c:?}");
                }
            }
        }
    }
}
