//! Identity headers the upstream can trust. Inbound headers that could be read as ours are
//! removed first: WSGI/CGI backends (Flask) map `-`, `_` and `.` in header names to the same
//! environ key (CVE-2026-88011), so every inbound name is compared after folding case and
//! `_`/`.` to `-`. `x-middleware-subrequest` is always removed (Next.js CVE-2025-29927).

use std::collections::HashSet;

use crate::auth::Identity;
use crate::config::{fold_header_name as fold, IdentityHeaders};

/// Always removed, whatever the configured names.
const ALWAYS_STRIPPED: &[&str] = &["x-middleware-subrequest"];

/// Cookies that carry Clerk credentials; removed for upstreams with `credentials = "strip"`.
fn is_clerk_cookie(name: &str) -> bool {
    name.starts_with("__session") || name.starts_with("__client_uat") || name.starts_with("__clerk")
}

/// Which inbound header names are forbidden, precomputed once per configuration.
#[derive(Debug, Clone)]
pub struct HeaderGuard {
    /// Folded protected names; a short list, compared without allocating.
    protected: Vec<String>,
    longest: usize,
    names: IdentityHeaders,
    /// The configured names, parsed once, in `Identity::header_values` order.
    parsed: Vec<Option<http::HeaderName>>,
}

fn fold_byte(b: u8) -> u8 {
    match b {
        b'_' | b'.' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

impl HeaderGuard {
    pub fn new(names: &IdentityHeaders) -> HeaderGuard {
        let mut protected: Vec<String> = names
            .all()
            .iter()
            .map(|n| fold(n))
            .chain(ALWAYS_STRIPPED.iter().map(|n| fold(n)))
            .collect::<HashSet<String>>()
            .into_iter()
            .collect();
        protected.sort();
        let longest = protected.iter().map(String::len).max().unwrap_or(0);
        let parsed = names
            .all()
            .iter()
            .map(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        HeaderGuard {
            protected,
            longest,
            names: names.clone(),
            parsed,
        }
    }

    pub fn names(&self) -> &IdentityHeaders {
        &self.names
    }

    /// True when an inbound header of this name must not reach an upstream.
    pub fn is_protected(&self, name: &str) -> bool {
        // Runs for every inbound header of every request: compare folded bytes in place.
        name.len() <= self.longest
            && self.protected.iter().any(|p| {
                p.len() == name.len() && p.bytes().zip(name.bytes()).all(|(a, b)| a == fold_byte(b))
            })
    }

    /// The identity headers for an allowed, signed-in request: (name, value) pairs, built from
    /// values prepared when the token was verified. Values that are not valid header text
    /// (control characters) were left out then rather than mangled.
    pub fn identity_headers<'a>(
        &'a self,
        id: &'a Identity,
    ) -> impl Iterator<Item = (&'a http::HeaderName, &'a http::HeaderValue)> + 'a {
        self.parsed
            .iter()
            .zip(id.header_values.iter())
            .filter_map(|(n, v)| Some((n.as_ref()?, v.as_ref()?)))
    }
}

/// A `Cookie` header value without Clerk's credential cookies; `None` when nothing is left.
pub fn strip_clerk_cookies(cookie: &str) -> Option<String> {
    let kept: Vec<&str> = cookie
        .split(';')
        .map(str::trim)
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n).trim();
            !pair.is_empty() && !is_clerk_cookie(name)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_an_identity_header_is_protected() {
        let g = HeaderGuard::new(&IdentityHeaders::default());
        for n in [
            "X-Portier-User-Id",
            "x-portier-user-id",
            "x_portier_user_id",
            "X.Portier.User.Id",
            "X-PORTIER_USER.ID",
            "x-middleware-subrequest",
            "X_Middleware_Subrequest",
            "x-portier-plans",
        ] {
            assert!(g.is_protected(n), "{n}");
        }
        for n in [
            "x-portier-user-idx",
            "user-id",
            "authorization",
            "x-portier",
        ] {
            assert!(!g.is_protected(n), "{n}");
        }
    }

    #[test]
    fn clerk_cookies_are_stripped_and_others_kept() {
        assert_eq!(
            strip_clerk_cookies(
                "a=1; __session=t; __client_uat=5; __session_ab12cd34=x; b=2; __clerk_db_jwt=y"
            )
            .as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(strip_clerk_cookies("__session=t"), None);
    }
}
