//! Identity headers the upstream can trust. Inbound headers that could be read as ours are
//! removed first: WSGI/CGI backends (Flask) map `-`, `_` and `.` in header names to the same
//! environ key (CVE-2026-88011), so every inbound name is compared after folding case and
//! `_`/`.` to `-`. Next.js's internal headers are always removed: `x-middleware-subrequest`
//! (CVE-2025-29927) and the others its middleware and router exchange internally (rewrite,
//! redirect, set-cookie and request-override headers, `x-invoke-*`, `x-matched-path`...),
//! which no client has a reason to send; the ones its own client router sends
//! (`x-nextjs-data`, `x-middleware-prefetch`, `rsc`, `next-router-*`) pass.

use std::collections::HashSet;

use pingora::http::IntoCaseHeaderName;

use crate::auth::Identity;
use crate::config::{fold_header_name as fold, IdentityHeaders};

/// Always removed, whatever the configured names.
const ALWAYS_STRIPPED: &[&str] = &[
    "x-middleware-subrequest",
    "x-middleware-rewrite",
    "x-middleware-redirect",
    "x-middleware-set-cookie",
    "x-middleware-next",
    "x-middleware-invoke",
    "x-middleware-override-headers",
    "x-invoke-path",
    "x-invoke-query",
    "x-invoke-status",
    "x-invoke-error",
    "x-invoke-output",
    "x-matched-path",
    "x-now-route-matches",
    "x-nextjs-rewrite",
    "x-nextjs-redirect",
    "x-prerender-revalidate",
    "x-prerender-revalidate-if-generated",
    // Tag revalidation between Next.js's own processes (gated by a token there, but no
    // browser sends them).
    "x-next-revalidated-tags",
    "x-next-revalidate-tag-token",
    // Set by Portier itself from what it saw; a client's value is never passed on.
    "x-real-ip",
    "forwarded",
    "x-portier-assertion",
];

/// Name prefixes always removed: Next.js passes middleware request overrides as
/// `x-middleware-request-<name>`.
const ALWAYS_STRIPPED_PREFIXES: &[&str] = &["x-middleware-request-"];

/// Cookies that carry Clerk credentials; removed for upstreams with `credentials = "strip"`.
fn is_clerk_cookie(name: &[u8]) -> bool {
    name.starts_with(b"__session")
        || name.starts_with(b"__client_uat")
        || name.starts_with(b"__clerk")
        || name.starts_with(b"__refresh")
}

/// Which inbound header names are forbidden, precomputed once per configuration.
#[derive(Debug, Clone)]
pub struct HeaderGuard {
    /// Folded protected names; a short list, compared without allocating.
    protected: Vec<String>,
    longest: usize,
    names: IdentityHeaders,
    /// The configured names as written upstream (Pingora's spelling of the parsed name, the
    /// bytes shared: inserting one copies nothing), in `Identity::header_values` order.
    parsed: Vec<Option<bytes::Bytes>>,
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
            .map(|n| {
                let name = http::HeaderName::from_bytes(n.as_bytes()).ok()?;
                let wire =
                    bytes::Bytes::copy_from_slice((&name).into_case_header_name().as_slice());
                // A first clone makes the bytes shared, so the clone per request is a count.
                let _shared = wire.clone();
                Some(wire)
            })
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
        let folded_eq = |p: &str, n: &[u8]| {
            p.len() == n.len() && p.bytes().zip(n.iter()).all(|(a, &b)| a == fold_byte(b))
        };
        (name.len() <= self.longest && self.protected.iter().any(|p| folded_eq(p, name.as_bytes())))
            || ALWAYS_STRIPPED_PREFIXES
                .iter()
                .any(|p| name.len() > p.len() && folded_eq(p, &name.as_bytes()[..p.len()]))
    }

    /// The identity headers for an allowed, signed-in request: (name as written, value) pairs,
    /// built from values prepared when the token was verified. Values that are not valid
    /// header text (control characters) were left out then rather than mangled.
    pub fn identity_headers<'a>(
        &'a self,
        id: &'a Identity,
    ) -> impl Iterator<Item = (&'a bytes::Bytes, &'a http::HeaderValue)> + 'a {
        self.parsed
            .iter()
            .zip(id.header_values.iter())
            .filter_map(|(n, v)| Some((n.as_ref()?, v.as_ref()?)))
    }
}

/// The `Cookie` pairs of every `Cookie` header except Clerk's credential cookies, joined into
/// one header value; `None` when nothing is left. Works on bytes: a header that is not UTF-8
/// is filtered like any other, never passed on whole.
pub fn strip_clerk_cookies<'a>(headers: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut kept: Vec<u8> = Vec::new();
    for header in headers {
        for pair in header.split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            if pair.is_empty() {
                continue;
            }
            let name = pair
                .iter()
                .position(|&b| b == b'=')
                .map_or(pair, |eq| &pair[..eq])
                .trim_ascii();
            if is_clerk_cookie(name) {
                continue;
            }
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(pair);
        }
    }
    (!kept.is_empty()).then_some(kept)
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

    fn strip(headers: &[&[u8]]) -> Option<Vec<u8>> {
        strip_clerk_cookies(headers.iter().copied())
    }

    #[test]
    fn clerk_cookies_are_stripped_and_others_kept() {
        assert_eq!(
            strip(&[
                b"a=1; __session=t; __client_uat=5; __session_ab12cd34=x; b=2; __clerk_db_jwt=y"
            ])
            .as_deref(),
            Some(b"a=1; b=2".as_slice())
        );
        assert_eq!(strip(&[b"__session=t"]), None);
        // Several headers become one; a byte >= 0x80 does not make a header pass whole.
        assert_eq!(
            strip(&[b"theme=caf\xe9; __session=t", b"__refresh_x=r; z=9"]).as_deref(),
            Some(b"theme=caf\xe9; z=9".as_slice())
        );
    }

    #[test]
    fn next_internal_headers_are_protected_and_its_router_headers_are_not() {
        let g = HeaderGuard::new(&IdentityHeaders::default());
        for n in [
            "x-middleware-rewrite",
            "X-Middleware-Set-Cookie",
            "x-middleware-request-authorization",
            "x_invoke_path",
            "x-matched-path",
            "x-now-route-matches",
            "forwarded",
            "x-real-ip",
        ] {
            assert!(g.is_protected(n), "{n}");
        }
        for n in [
            "x-nextjs-data",
            "x-middleware-prefetch",
            "rsc",
            "next-router-state-tree",
            "x-middleware-request-",
        ] {
            assert!(!g.is_protected(n), "{n}");
        }
    }
}
