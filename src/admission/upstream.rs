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
/// or address). Spellings that fold onto a forwarding header (`X_Forwarded_Host`) are never
/// passed on, even from a trusted proxy: WSGI servers read them as the real one, and a load
/// balancer only ever sets the canonical spelling.
fn forwarding_headers(req: &mut RequestHeader, fwd: Forwarding<'_>) -> pingora::Result<()> {
    let trusted = fwd
        .peer
        .is_some_and(|p| fwd.trusted.iter().any(|c| c.contains(p)));
    let aliases: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|n| {
            // Compared in place: this runs for every header of every request.
            let n = n.as_str();
            HOP_HEADERS.iter().any(|h| {
                n != *h
                    && n.len() == h.len()
                    && n.bytes().zip(h.bytes()).all(|(a, b)| {
                        let a = if a == b'_' || a == b'.' { b'-' } else { a };
                        a.to_ascii_lowercase() == b
                    })
            })
        })
        .cloned()
        .collect();
    for name in aliases {
        req.remove_header(&name);
    }
    if !trusted {
        for h in HOP_HEADERS {
            req.remove_header(h);
        }
    }
    if let Some(peer) = fwd.peer {
        // Every line a trusted proxy sent, in order, as bytes (one line could be a client's
        // and not UTF-8), then the hop Portier saw.
        let mut xff: Vec<u8> = Vec::new();
        if trusted {
            for line in req.headers.get_all("x-forwarded-for") {
                xff.extend_from_slice(line.as_bytes());
                xff.extend_from_slice(b", ");
            }
        }
        xff.extend_from_slice(peer.to_string().as_bytes());
        let xff = http::HeaderValue::from_bytes(&xff).map_err(|e| {
            pingora::Error::because(pingora::ErrorType::InternalError, "x-forwarded-for", e)
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdentityHeaders;

    fn forwarded(headers: &[(&str, &[u8])], peer: &str, trusted: &[Cidr]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/x", None).expect("request");
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).expect("header");
        }
        let peer: IpAddr = peer.parse().expect("ip");
        let guard = HeaderGuard::new(&IdentityHeaders::default());
        let fwd = Forwarding {
            peer: Some(peer),
            client: super::super::client_ip(
                Some(peer),
                req.headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .map(|v| v.as_bytes()),
                trusted,
            ),
            trusted,
        };
        prepare_upstream_headers(&mut req, &guard, Credentials::Strip, None, fwd).expect("ok");
        req
    }

    fn values(req: &RequestHeader, name: &str) -> Vec<Vec<u8>> {
        req.headers
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect()
    }

    #[test]
    fn a_clients_forwarding_headers_are_replaced_and_aliases_never_pass() {
        let req = forwarded(
            &[
                ("x-forwarded-for", b"6.6.6.6"),
                ("x-forwarded-host", b"evil.test"),
                ("x_forwarded_host", b"evil.test"),
                ("x.forwarded.proto", b"https"),
                ("host", b"app.test"),
            ],
            "203.0.113.5",
            &[],
        );
        assert_eq!(
            values(&req, "x-forwarded-for"),
            vec![b"203.0.113.5".to_vec()]
        );
        assert_eq!(values(&req, "x-forwarded-host"), vec![b"app.test".to_vec()]);
        assert_eq!(values(&req, "x-forwarded-proto"), vec![b"http".to_vec()]);
        assert!(req.headers.get("x_forwarded_host").is_none());
        assert!(req.headers.get("x.forwarded.proto").is_none());
        assert_eq!(values(&req, "x-real-ip"), vec![b"203.0.113.5".to_vec()]);
    }

    #[test]
    fn a_trusted_proxys_lines_are_all_kept_in_order() {
        let lb = [Cidr::parse("10.0.0.0/8").expect("cidr")];
        let req = forwarded(
            &[
                ("x-forwarded-for", b"caf\xe9"),
                ("x-forwarded-for", b"203.0.113.9"),
                ("x_forwarded_for", b"6.6.6.6"),
                ("x-forwarded-proto", b"https"),
            ],
            "10.0.0.2",
            &lb,
        );
        assert_eq!(
            values(&req, "x-forwarded-for"),
            vec![b"caf\xe9, 203.0.113.9, 10.0.0.2".to_vec()]
        );
        assert!(req.headers.get("x_forwarded_for").is_none());
        assert_eq!(values(&req, "x-forwarded-proto"), vec![b"https".to_vec()]);
        assert_eq!(values(&req, "x-real-ip"), vec![b"203.0.113.9".to_vec()]);
    }
}
