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
    let strip = credentials == Credentials::Strip;
    let trusted = fwd
        .peer
        .is_some_and(|p| fwd.trusted.iter().any(|c| c.contains(p)));
    // The cookies to keep are read before anything is removed (a protected `cookie` name
    // leaves none, as removing it first would).
    let kept = if strip && !guard.is_protected("cookie") {
        strip_clerk_cookies(
            req.headers
                .get_all(http::header::COOKIE)
                .iter()
                .map(|v| v.as_bytes()),
        )
    } else {
        None
    };
    // One pass over the names (this runs for every header of every request): spoofable
    // identity and Next.js headers, Clerk credentials, forwarding-header aliases, and the
    // forwarding headers of an untrusted peer. Only names present are removed.
    let gone: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            guard.is_protected(n)
                || (strip
                    && (*name == http::header::AUTHORIZATION || *name == http::header::COOKIE))
                || is_hop_alias(n)
                || (!trusted && HOP_HEADERS.contains(&n))
        })
        .cloned()
        .collect();
    for name in &gone {
        req.remove_header(name);
    }
    // Always re-added from the kept pairs, whatever bytes the header held.
    if let Some(kept) = kept {
        req.insert_header(http::header::COOKIE, kept)?;
    }
    forwarding_headers(req, fwd, trusted)?;
    if let Some(id) = identity {
        for (name, value) in guard.identity_headers(id) {
            req.insert_header(name.clone(), value.clone())?;
        }
    }
    Ok(())
}

/// A spelling that folds onto a forwarding header without being it (`X_Forwarded_Host`),
/// compared in place.
fn is_hop_alias(n: &str) -> bool {
    HOP_HEADERS.iter().any(|h| {
        n != *h
            && n.len() == h.len()
            && n.bytes().zip(h.bytes()).all(|(a, b)| {
                let a = if a == b'_' || a == b'.' { b'-' } else { a };
                a.to_ascii_lowercase() == b
            })
    })
}

/// An address as header text. IPv4 is written by hand: `Display` for addresses goes
/// through the formatting machinery and a `String`, per request, twice.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

fn header_value(bytes: &[u8], what: &'static str) -> pingora::Result<http::HeaderValue> {
    http::HeaderValue::from_bytes(bytes)
        .map_err(|e| pingora::Error::because(pingora::ErrorType::InternalError, what, e))
}

/// `X-Forwarded-*` and `X-Real-IP` from what Portier saw. A trusted proxy's values are kept
/// and the chain extended; anyone else's were removed (a client could name any host, scheme
/// or address). Spellings that fold onto a forwarding header (`X_Forwarded_Host`) are never
/// passed on, even from a trusted proxy: WSGI servers read them as the real one, and a load
/// balancer only ever sets the canonical spelling.
fn forwarding_headers(
    req: &mut RequestHeader,
    fwd: Forwarding<'_>,
    trusted: bool,
) -> pingora::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(64);
    if let Some(peer) = fwd.peer {
        // Every line a trusted proxy sent, in order, as bytes (one line could be a client's
        // and not UTF-8), then the hop Portier saw.
        if trusted {
            for line in req.headers.get_all("x-forwarded-for") {
                buf.extend_from_slice(line.as_bytes());
                buf.extend_from_slice(b", ");
            }
        }
        push_ip(&mut buf, peer);
        req.insert_header("x-forwarded-for", header_value(&buf, "x-forwarded-for")?)?;
        if !req.headers.contains_key("x-forwarded-proto") {
            // Portier's listener speaks plain HTTP; TLS ends at a (trusted) load balancer.
            req.insert_header("x-forwarded-proto", http::HeaderValue::from_static("http"))?;
        }
        if !req.headers.contains_key("x-forwarded-host") {
            if let Some(host) = req.headers.get(http::header::HOST).cloned() {
                req.insert_header("x-forwarded-host", host)?;
            }
        }
    }
    if let Some(client) = fwd.client {
        buf.clear();
        push_ip(&mut buf, client);
        req.insert_header("x-real-ip", header_value(&buf, "x-real-ip")?)?;
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
    fn identity_headers_replace_spoofed_ones_and_credentials_go() {
        let mut req = RequestHeader::build("GET", b"/x", None).expect("request");
        for (k, v) in [
            ("Authorization", "Bearer t"),
            ("Cookie", "a=1; __session=x"),
            ("X_Portier_User_Id", "user_evil"),
            ("X-Portier-Plans", "u:enterprise"),
            ("Host", "app.test"),
        ] {
            req.append_header(k.to_string(), v.as_bytes())
                .expect("header");
        }
        let claims = serde_json::json!({"sub": "user_2abc", "sid": "sess_1",
            "exp": 4_000_000_000_i64, "pla": "u:pro"});
        let id =
            Identity::from_claims(claims.as_object().cloned().expect("object")).expect("identity");
        let guard = HeaderGuard::new(&IdentityHeaders::default());
        let peer: IpAddr = "203.0.113.5".parse().expect("ip");
        let fwd = Forwarding {
            peer: Some(peer),
            client: Some(peer),
            trusted: &[],
        };
        prepare_upstream_headers(&mut req, &guard, Credentials::Strip, Some(&id), fwd).expect("ok");
        assert!(req.headers.get("authorization").is_none());
        assert_eq!(values(&req, "cookie"), vec![b"a=1".to_vec()]);
        assert!(req.headers.get("x_portier_user_id").is_none());
        assert_eq!(
            values(&req, "x-portier-user-id"),
            vec![b"user_2abc".to_vec()]
        );
        assert_eq!(values(&req, "x-portier-plans"), vec![b"u:pro".to_vec()]);
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).expect("text");
        assert!(wire.contains("x-portier-user-id: user_2abc\r\n"), "{wire}");
        assert!(
            !wire.contains("user_evil") && !wire.contains("enterprise"),
            "{wire}"
        );
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "203.0.113.5",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.0.0.2",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().into_bytes());
        }
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
