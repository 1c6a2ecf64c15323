//! The upstream request of an allowed request: what is removed (spoofable identity headers,
//! Next.js internal headers, forwarding headers a client made up, Clerk credentials unless
//! the upstream takes them) and what is added (the caller's identity headers, and forwarding
//! headers that say what Portier saw). The proxy and `portier explain` both call this.

use std::net::IpAddr;

use pingora::http::RequestHeader;

use crate::auth::Identity;
use crate::config::{Cidr, Credentials};
use crate::headers::{strip_clerk_cookies, HeaderGuard};

/// Who sent the request, as Portier saw it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forwarding<'a> {
    /// The TCP peer (the client, or a load balancer).
    pub peer: Option<IpAddr>,
    /// The client address ([`super::client_ip`]): the peer, or what a trusted proxy says.
    pub client: Option<IpAddr>,
    /// Proxies whose forwarding headers are believed.
    pub trusted: &'a [Cidr],
}

/// Headers that describe the hop before Portier; believed only from a trusted proxy.
const HOP_HEADERS: [&str; 5] = [
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
];

/// Rewrites an allowed request's headers for its upstream.
pub fn prepare_upstream_headers(
    req: &mut RequestHeader,
    guard: &HeaderGuard,
    credentials: Credentials,
    identity: Option<&Identity>,
    fwd: Forwarding<'_>,
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
        let kept = strip_clerk_cookies(
            req.headers
                .get_all(http::header::COOKIE)
                .iter()
                .map(|v| v.as_bytes()),
        );
        // Always removed and re-added from the kept pairs, whatever bytes the header held.
        req.remove_header(&http::header::COOKIE);
        if let Some(kept) = kept {
            req.insert_header(http::header::COOKIE, kept)?;
        }
    }
    forwarding_headers(req, fwd)?;
    if let Some(id) = identity {
        for (name, value) in guard.identity_headers(id) {
            req.insert_header(name.clone(), value.clone())?;
        }
    }
    Ok(())
}

/// `X-Forwarded-*` and `X-Real-IP` from what Portier saw. A trusted proxy's values are kept
/// and the chain extended; anyone else's are replaced (a client could name any host, scheme
/// or address).
fn forwarding_headers(req: &mut RequestHeader, fwd: Forwarding<'_>) -> pingora::Result<()> {
    let trusted = fwd
        .peer
        .is_some_and(|p| fwd.trusted.iter().any(|c| c.contains(p)));
    if !trusted {
        for h in HOP_HEADERS {
            req.remove_header(h);
        }
    }
    if let Some(peer) = fwd.peer {
        let xff = match req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if trusted => format!("{prev}, {peer}"),
            _ => peer.to_string(),
        };
        req.insert_header("x-forwarded-for", xff)?;
        if !req.headers.contains_key("x-forwarded-proto") {
            // Portier's listener speaks plain HTTP; TLS ends at a (trusted) load balancer.
            req.insert_header("x-forwarded-proto", "http")?;
        }
        if !req.headers.contains_key("x-forwarded-host") {
            if let Some(host) = req.headers.get(http::header::HOST).cloned() {
                req.insert_header("x-forwarded-host", host)?;
            }
        }
    }
    if let Some(client) = fwd.client {
        req.insert_header("x-real-ip", client.to_string())?;
    }
    Ok(())
}
