//! Finding the session token in a request, exactly as Clerk's SDK does: the `Authorization`
//! header wins outright (cookies are then not looked at); otherwise the `__session` cookie or
//! its suffixed form `__session_<suffix>`.

/// Where the token was found; page pass-through applies to cookies only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Cookie,
}

/// The token and where it came from, or `None` when the request carries none.
///
/// `cookie_suffix` is the `__session_<suffix>` suffix of this Clerk instance when known; when
/// it is not, any 8-character base64url suffix is accepted. A suffixed cookie is preferred over
/// the plain one, because several Clerk apps on one domain each set their own.
pub fn extract_token<'a>(
    authorization: Option<&'a [u8]>,
    cookie_headers: impl Iterator<Item = &'a [u8]>,
    cookie_suffix: Option<&str>,
) -> Option<(&'a str, TokenSource)> {
    if let Some(value) = authorization {
        let value = std::str::from_utf8(value).ok()?.trim();
        if value.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            Some(_) => return None,
            None => value,
        };
        return (!token.is_empty()).then_some((token, TokenSource::Header));
    }
    let mut plain = None;
    for header in cookie_headers {
        let Ok(header) = std::str::from_utf8(header) else {
            continue;
        };
        for pair in header.split(';') {
            let Some((name, value)) = pair.trim().split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            if value.is_empty() {
                continue;
            }
            if name == "__session" {
                plain.get_or_insert(value);
            } else if let Some(suffix) = name.strip_prefix("__session_") {
                let accepted = match cookie_suffix {
                    Some(want) => suffix == want,
                    None => {
                        suffix.len() == 8
                            && suffix
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    }
                };
                if accepted {
                    return Some((value, TokenSource::Cookie));
                }
            }
        }
    }
    plain.map(|t| (t, TokenSource::Cookie))
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
        assert_eq!(
            ex(None, &["__session=plain", "__session_AbCd12_-=suffixed"]),
            Some(("suffixed", TokenSource::Cookie))
        );
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
    fn configured_suffix_is_exact() {
        let got = extract_token(
            None,
            [b"__session_AAAAAAAA=t".as_slice()].into_iter(),
            Some("BBBBBBBB"),
        );
        assert_eq!(got, None);
        let got = extract_token(
            None,
            [b"__session_BBBBBBBB=t".as_slice()].into_iter(),
            Some("BBBBBBBB"),
        );
        assert_eq!(got, Some(("t", TokenSource::Cookie)));
    }
}
