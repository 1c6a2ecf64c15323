//! The upstream request of an allowed request: what is removed (spoofable identity headers,
//! Next.js internal headers, Clerk credentials unless the upstream takes them) and what is
//! added (the caller's identity headers). The proxy and `portier explain` both call this.

use pingora::http::RequestHeader;

use crate::auth::Identity;
use crate::config::Credentials;
use crate::headers::{strip_clerk_cookies, HeaderGuard};

/// Rewrites an allowed request's headers for its upstream.
pub fn prepare_upstream_headers(
    req: &mut RequestHeader,
    guard: &HeaderGuard,
    credentials: Credentials,
    identity: Option<&Identity>,
) -> pingora::Result<()> {
    let spoofable: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|n| guard.is_protected(n.as_str()))
        .cloned()
        .collect();
    for name in spoofable {
        req.remove_header(&name);
    }
    if credentials == Credentials::Strip {
        req.remove_header(&http::header::AUTHORIZATION);
        let cookies: Vec<String> = req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        if !cookies.is_empty() {
            req.remove_header(&http::header::COOKIE);
            if let Some(kept) = strip_clerk_cookies(&cookies.join("; ")) {
                req.insert_header(http::header::COOKIE, kept)?;
            }
        }
    }
    if let Some(id) = identity {
        for (name, value) in guard.identity_headers(id) {
            req.insert_header(name.clone(), value.clone())?;
        }
    }
    Ok(())
}
