//! Finding the session token in a request, as Clerk's SDK does, minus its ambiguities: the
//! `Authorization` header wins outright (cookies are then not looked at); otherwise the
//! session cookie. Which cookie is the session is decided without guessing:
//!
//! - with this instance's suffix known (`clerk.publishable_key` or `clerk.cookie_suffix`),
//!   `__session_<suffix>` is read first, as Clerk reads its own suffixed name first, and plain
//!   `__session` only when the suffixed one is absent;
//! - without it, only plain `__session` is read: a suffixed cookie could belong to any Clerk
//!   app on the domain, and preferring it let a cookie tossed from a sibling subdomain make a
//!   victim act as the attacker. But Clerk's SDK behind Portier (Next.js, with
//!   `credentials = "forward"`) does read its suffixed cookie first, so a `__session_*` cookie
//!   whose value differs from the plain one is a conflict: Portier and the app would
//!   otherwise decide about two different users;
//! - the chosen name present twice with different values (a cookie set for a parent domain
//!   next to the app's own) is refused as a conflict rather than resolved by order.
//!
//! Cookies are parsed as bytes: a header that is not UTF-8 is still read (its cookie values
//! are), so the extractor and the credential stripper never disagree about what is there.

/// Where the token was found; page pass-through applies to cookies only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Cookie,
}

/// The request carries two different session cookies of the chosen name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request carries conflicting session cookies")]
pub struct CookieConflict;

/// One `name=value` pair of a `Cookie` header, as bytes, trimmed.
pub fn cookie_pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    header.split(|&b| b == b';').filter_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (&pair[..eq], &pair[eq + 1..]);
        Some((name.trim_ascii(), value.trim_ascii()))
    })
}

fn unquote(v: &[u8]) -> &[u8] {
    v.strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(v)
}

/// The token and where it came from, `Ok(None)` when the request carries none, or a conflict.
pub fn extract_token<'a>(
    authorization: Option<&'a [u8]>,
    cookie_headers: impl Iterator<Item = &'a [u8]>,
    cookie_suffix: Option<&str>,
) -> Result<Option<(&'a str, TokenSource)>, CookieConflict> {
    if let Some(value) = authorization {
        let Ok(value) = std::str::from_utf8(value) else {
            return Ok(None);
        };
        let value = value.trim();
        if value.eq_ignore_ascii_case("bearer") {
            return Ok(None);
        }
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            Some(_) => return Ok(None),
            None => value,
        };
        return Ok((!token.is_empty()).then_some((token, TokenSource::Header)));
    }
    let suffixed = cookie_suffix.map(|s| format!("__session_{s}"));
    let mut plain: Option<&'a [u8]> = None;
    let mut own: Option<&'a [u8]> = None;
    let mut any_suffixed: Option<&'a [u8]> = None;
    for header in cookie_headers {
        for (name, value) in cookie_pairs(header) {
            let value = unquote(value);
            if value.is_empty() {
                continue;
            }
            let slot = if name == b"__session" {
                &mut plain
            } else if let Some(s) = suffixed.as_deref() {
                if name != s.as_bytes() {
                    // Another app's cookie: Clerk reads its own name, so does Portier.
                    continue;
                }
                &mut own
            } else if name.starts_with(b"__session_") {
                // Suffix unknown: which suffixed cookie the app's SDK reads cannot be told,
                // so every one of them must agree with the plain cookie.
                &mut any_suffixed
            } else {
                continue;
            };
            match slot {
                Some(prev) if *prev != value => return Err(CookieConflict),
                _ => *slot = Some(value),
            }
        }
    }
    if let (Some(p), Some(s)) = (plain, any_suffixed) {
        if p != s {
            return Err(CookieConflict);
        }
    }
    let Some(chosen) = own.or(plain) else {
        return Ok(None);
    };
    // A token is ASCII; anything else cannot verify and is treated as no token.
    Ok(std::str::from_utf8(chosen)
        .ok()
        .map(|t| (t, TokenSource::Cookie)))
}

/// The `__session_<suffix>` suffix Clerk derives from a publishable key: the first 8
/// characters of the URL-safe base64 of its SHA-1 (`@clerk/shared` `getCookieSuffix`).
pub fn cookie_suffix_of(publishable_key: &str) -> String {
    use base64::Engine;
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        publishable_key.as_bytes(),
    );
    let b64 = base64::engine::general_purpose::URL_SAFE.encode(digest.as_ref());
    b64.chars().take(8).collect()
}

/// The Frontend API host a publishable key names (`pk_live_` + base64 of `<host>$`).
pub fn frontend_api_of(publishable_key: &str) -> Option<String> {
    use base64::Engine;
    let b64 = publishable_key
        .strip_prefix("pk_live_")
        .or_else(|| publishable_key.strip_prefix("pk_test_"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let host = text.strip_suffix('$')?;
    (!host.is_empty()).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex<'a>(auth: Option<&'a str>, cookies: &[&'a str]) -> Option<(&'a str, TokenSource)> {
        extract_token(
            auth.map(str::as_bytes),
            cookies.iter().map(|c| c.as_bytes()),
            None,
        )
        .expect("no conflict")
    }

    #[test]
    fn header_wins_over_cookie() {
        assert_eq!(
            ex(Some("Bearer abc"), &["__session=xyz"]),
            Some(("abc", TokenSource::Header))
        );
        assert_eq!(
            ex(Some("bearer  abc "), &[]),
            Some(("abc", TokenSource::Header))
        );
        assert_eq!(ex(Some("abc"), &[]), Some(("abc", TokenSource::Header)));
    }

    #[test]
    fn other_schemes_mean_no_token_and_cookies_are_not_consulted() {
        assert_eq!(ex(Some("Basic dXNlcjpw"), &["__session=xyz"]), None);
        assert_eq!(ex(Some("Bearer "), &["__session=xyz"]), None);
    }

    #[test]
    fn cookies() {
        assert_eq!(
            ex(None, &["a=1; __session=tok; b=2"]),
            Some(("tok", TokenSource::Cookie))
        );
        // Without a configured suffix a suffixed cookie is not a session: it may be another
        // app's, or tossed from a sibling subdomain. Clerk writes both names with one value.
        assert_eq!(
            ex(None, &["__session=same", "__session_AbCd12_-=same"]),
            Some(("same", TokenSource::Cookie))
        );
        assert_eq!(ex(None, &["__session_AbCd12_-=suffixed"]), None);
        // Wrong names are not session cookies.
        for wrong in [
            "session=tok",
            "__Session=tok",
            "__sessionx=tok",
            "__session_toolongsuffix=tok",
            "x__session=tok",
            "__session=",
        ] {
            assert_eq!(ex(None, &[wrong]), None, "{wrong}");
        }
    }

    #[test]
    fn configured_suffix_is_exact_and_preferred() {
        let got = extract_token(
            None,
            [b"__session_AAAAAAAA=t".as_slice()].into_iter(),
            Some("BBBBBBBB"),
        );
        assert_eq!(got, Ok(None));
        let got = extract_token(
            None,
            [b"__session=plain; __session_BBBBBBBB=t".as_slice()].into_iter(),
            Some("BBBBBBBB"),
        );
        assert_eq!(got, Ok(Some(("t", TokenSource::Cookie))));
    }

    #[test]
    fn two_values_of_the_session_cookie_are_a_conflict() {
        let got = extract_token(
            None,
            [b"__session=mine".as_slice(), b"__session=tossed".as_slice()].into_iter(),
            None,
        );
        assert_eq!(got, Err(CookieConflict));
        let got = extract_token(
            None,
            [b"__session_BBBBBBBB=a; __session_BBBBBBBB=b".as_slice()].into_iter(),
            Some("BBBBBBBB"),
        );
        assert_eq!(got, Err(CookieConflict));
        // The same value twice (a cookie sent for two paths) is not a conflict.
        let got = extract_token(
            None,
            [b"__session=same; __session=same".as_slice()].into_iter(),
            None,
        );
        assert_eq!(got, Ok(Some(("same", TokenSource::Cookie))));
    }

    #[test]
    fn without_a_known_suffix_a_differing_suffixed_cookie_is_a_conflict() {
        // The app's SDK reads its suffixed cookie first: a tossed `__session_<sfx>` next to
        // the victim's `__session` would make Portier and the app see two users.
        for cookies in [
            &[b"__session_AbCd12_-=attacker; __session=victim".as_slice()][..],
            &[
                b"__session=victim".as_slice(),
                b"__session_zzzzzzzz=attacker".as_slice(),
            ][..],
        ] {
            let got = extract_token(None, cookies.iter().copied(), None);
            assert_eq!(got, Err(CookieConflict));
        }
        // With the suffix known, other apps' suffixed cookies are theirs, not a conflict.
        let got = extract_token(
            None,
            [b"__session_zzzzzzzz=other; __session=mine".as_slice()].into_iter(),
            Some("BBBBBBBB"),
        );
        assert_eq!(got, Ok(Some(("mine", TokenSource::Cookie))));
    }

    #[test]
    fn cookie_headers_that_are_not_utf8_are_still_read() {
        let header = b"theme=caf\xe9; __session=tok".as_slice();
        let got = extract_token(None, [header].into_iter(), None);
        assert_eq!(got, Ok(Some(("tok", TokenSource::Cookie))));
    }

    #[test]
    fn suffix_and_frontend_api_from_the_publishable_key() {
        // The vector observed from @clerk/shared 4.41 for this key.
        let pk = "pk_live_Y2xlcmsucG9ydGllci50ZXN0JA==";
        assert_eq!(cookie_suffix_of(pk), "m3jNlIl7");
        assert_eq!(frontend_api_of(pk).as_deref(), Some("clerk.portier.test"));
        assert_eq!(frontend_api_of("pk_live_bm90LWEta2V5"), None);
        assert_eq!(frontend_api_of("sk_live_x"), None);
    }
}
