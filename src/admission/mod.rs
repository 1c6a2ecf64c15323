//! Admission: what the proxy decides about a request before anything is forwarded, as plain
//! functions over request data (headers, method, addresses) that return data or a
//! [`Reason`]. The Pingora glue (`crate::proxy`) calls them in a fixed order; `portier
//! explain` calls the same functions, never a copy of their logic.
//!
//! The order, whatever the route's kind: size of the head, canonical path, route, announced
//! body size, authentication (session token, or none on webhook routes), policy
//! ([`crate::policy::evaluate`]), rate limit, then the kind's own checks (webhook signature,
//! S3 operation, presign request) and finally the upstream request.

pub mod pages;
pub mod s3;
pub mod upstream;

use std::net::IpAddr;

use http::HeaderMap;

use crate::auth::{extract_token, Identity, Verifier};
use crate::config::Cidr;
use crate::error::Reason;
use crate::policy::{Authn, PolicySet, Route, RouteKind, RouteMatch, Step, Trace};

/// A refusal decided before authentication; `allow` is the `Allow` header of a 405, and
/// `canonical` the canonical path when it was reached (what the decision log records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Early {
    pub reason: Reason,
    pub allow: Option<String>,
    pub canonical: Option<String>,
}

impl From<Reason> for Early {
    fn from(reason: Reason) -> Early {
        Early {
            reason,
            allow: None,
            canonical: None,
        }
    }
}

impl Early {
    fn at(reason: Reason, canonical: String) -> Early {
        Early {
            reason,
            allow: None,
            canonical: Some(canonical),
        }
    }
}

/// What the steps before authentication found.
pub enum Front<'p> {
    /// Portier answers itself: the assertion keys at `[assertion] public_jwks_path`.
    Jwks,
    /// A route decides the request.
    Routed(Routed<'p>),
}

/// A request matched to its route.
pub struct Routed<'p> {
    /// The canonical path: what is matched, logged and forwarded.
    pub canonical: String,
    /// The page a Pages Router data request belongs to: its route decides.
    pub page: Option<String>,
    pub m: RouteMatch<'p>,
    /// The body limit of the route.
    pub body_limit: u64,
}

impl Routed<'_> {
    /// The path the route was looked up with: the data request's page, else the canonical path.
    pub fn decided(&self) -> &str {
        self.page.as_deref().unwrap_or(&self.canonical)
    }
}

/// The settings [`front`] decides with.
#[derive(Clone, Copy)]
pub struct FrontConfig<'a> {
    pub policies: &'a PolicySet,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    /// `[assertion] public_jwks_path`, when set.
    pub jwks_path: Option<&'a str>,
}

/// The steps before authentication, in their fixed order, for the proxy and `portier explain`
/// alike: the size of the head, the canonical path (ambiguous ones refused), Portier's own
/// JWKS path, a Pages Router data request mapped to its page (never decided by an asset
/// route), the route (405 with `Allow` when only the method is wrong), and an announced body
/// over the route's limit (object and file API routes size per kind, once the key is known).
pub fn front<'p>(
    cfg: FrontConfig<'p>,
    method: &str,
    uri: &http::Uri,
    headers: &HeaderMap,
    trace: &mut impl Trace,
) -> Result<Front<'p>, Early> {
    let target = uri.path_and_query().map_or("", |pq| pq.as_str());
    let head = header_bytes(headers, target);
    if head > cfg.max_header_bytes {
        trace.step(|| {
            Step::new(
                format!("request head: {head} bytes, over {}", cfg.max_header_bytes),
                false,
                Some(Reason::HeadersTooLarge),
            )
        });
        return Err(Reason::HeadersTooLarge.into());
    }
    let canonical = match crate::path::canonicalize(uri.path()) {
        Ok(c) => c,
        Err(e) => {
            log::info!("bad path refused: {e}");
            trace.step(|| Step::new(format!("canonical path: {e}"), false, Some(Reason::BadPath)));
            return Err(Reason::BadPath.into());
        }
    };
    trace.step(|| Step::new(format!("canonical path {canonical}"), true, None));
    if cfg.jwks_path == Some(canonical.as_str()) && matches!(method, "GET" | "HEAD") {
        trace.step(|| Step::new("Portier's assertion keys (public_jwks_path)", true, None));
        return Ok(Front::Jwks);
    }
    let data_page = match pages::data_request(&canonical) {
        None => None,
        Some(pages::DataRequest::Page(p)) => Some(p),
        Some(pages::DataRequest::Unclear) => {
            trace.step(|| {
                Step::new(
                    "Pages Router data request with an interception-route marker: refused",
                    false,
                    Some(Reason::NoRoute),
                )
            });
            return Err(Early::at(Reason::NoRoute, canonical));
        }
    };
    let decided = data_page.as_deref().unwrap_or(&canonical);
    let m = match cfg.policies.lookup(method, decided) {
        Ok(m) => m,
        Err(reason) => {
            trace.step(|| Step::new(format!("route for {method} {decided}"), false, Some(reason)));
            let allow = (reason == Reason::MethodNotAllowed)
                .then(|| cfg.policies.allowed_methods(decided).join(", "));
            return Err(Early {
                allow,
                ..Early::at(reason, canonical)
            });
        }
    };
    if let Some(page) = &data_page {
        let is_page = m.route.is_page();
        trace.step(|| {
            Step::new(
                format!("Pages Router data request: decided by the page {page}"),
                is_page,
                (!is_page).then_some(Reason::NoRoute),
            )
        });
        if !is_page {
            return Err(Early::at(Reason::NoRoute, canonical));
        }
    }
    let route = m.route;
    trace.step(|| {
        Step::new(
            format!(
                "route {} ({}:{})",
                route.name,
                route.file.display(),
                route.line
            ),
            true,
            None,
        )
    });
    let limit = body_limit(route, cfg.max_body_bytes);
    if !matches!(route.kind, RouteKind::S3Object(_) | RouteKind::S3Api { .. }) {
        if let Some(n) = content_length(headers) {
            let fits = n <= limit;
            trace.step(|| {
                Step::new(
                    format!("announced body: {n} bytes (limit {limit})"),
                    fits,
                    Some(Reason::BodyTooLarge),
                )
            });
            if !fits {
                return Err(Early::at(Reason::BodyTooLarge, canonical));
            }
        }
    }
    Ok(Front::Routed(Routed {
        canonical,
        page: data_page,
        m,
        body_limit: limit,
    }))
}

/// A protocol upgrade, decided after the policy: `Ok(true)` for an upgrade the route accepts
/// (a WebSocket on a `websocket = true` route), `Ok(false)` for no upgrade. An upgrade never
/// rides a signed-out page pass-through (`signed_out_page`, with the reason the request would
/// otherwise have had): after a 101 no answer is left to check.
pub fn upgrade(
    route: &Route,
    headers: &HeaderMap,
    signed_out_page: Option<Reason>,
    trace: &mut impl Trace,
) -> Result<bool, Reason> {
    if !is_upgrade(headers) {
        return Ok(false);
    }
    let refused = match signed_out_page {
        Some(reason) => Some(reason),
        None if !route.allows_upgrade() || !is_websocket_upgrade(headers) => {
            Some(Reason::UpgradeNotAllowed)
        }
        None => None,
    };
    trace.step(|| {
        Step::new(
            "protocol upgrade (WebSocket, on a route that allows it, never signed out)",
            refused.is_none(),
            refused,
        )
    });
    match refused {
        Some(reason) => Err(reason),
        None => Ok(true),
    }
}

/// Authenticates a request from its headers: the identity, or why there is none.
pub async fn authenticate(verifier: &Verifier, headers: &HeaderMap) -> Authn {
    let settings = verifier.settings();
    let found = extract_token(
        headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes()),
        settings.cookie_suffix.as_deref(),
    );
    let (token, source) = match found {
        Ok(Some(found)) => found,
        Ok(None) => {
            return Authn::SignedOut {
                reason: Reason::TokenMissing,
                source: None,
            }
        }
        Err(_) => {
            log::info!("two different session cookies of one name: refused");
            return Authn::SignedOut {
                reason: Reason::SessionCookieConflict,
                source: Some(crate::auth::TokenSource::Cookie),
            };
        }
    };
    match verifier.verify(token).await {
        Ok(id) => Authn::SignedIn(id),
        Err(e) => {
            log::debug!("token refused ({source:?}): {e}");
            Authn::SignedOut {
                reason: e.reason(),
                source: Some(source),
            }
        }
    }
}

/// Whether to look for a session at all: always on signed-in routes, on public routes only
/// when the request carries a credential (saves a lookup on public assets), never on webhook
/// routes (their signature is their only check).
pub fn needs_authentication(route: &Route, headers: &HeaderMap) -> bool {
    match route.access() {
        None => false,
        Some(crate::policy::Access::SignedIn) => true,
        Some(crate::policy::Access::Public) => {
            headers.contains_key(http::header::AUTHORIZATION)
                || headers.contains_key(http::header::COOKIE)
        }
    }
}

/// The client address: the peer, or, when the peer is a trusted proxy, the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy. Every `X-Forwarded-For` line
/// counts, in order (a proxy may add its own line rather than extend the client's), and
/// entries are read as bytes: a line that is not UTF-8 cannot hide the hops after it.
/// IPv4 clients of a dual-stack listener (`::ffff:a.b.c.d`) are their IPv4 address.
pub fn client_ip<'a, I>(peer: Option<IpAddr>, xff: I, trusted: &[Cidr]) -> Option<IpAddr>
where
    I: IntoIterator<Item = &'a [u8]>,
    I::IntoIter: DoubleEndedIterator,
{
    let peer = peer?.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let mut last = peer;
    for line in xff.into_iter().rev() {
        for hop in line.rsplit(|&b| b == b',') {
            let parsed = std::str::from_utf8(hop.trim_ascii())
                .ok()
                .and_then(|h| h.parse::<IpAddr>().ok())
                .map(|ip| ip.to_canonical());
            match parsed {
                Some(ip) if is_trusted(ip) => last = ip,
                Some(ip) => return Some(ip),
                None => return Some(last),
            }
        }
    }
    Some(last)
}

/// The TCP peer's address, IPv4-mapped addresses as IPv4.
pub fn peer_ip(addr: Option<&pingora::protocols::l4::socket::SocketAddr>) -> Option<IpAddr> {
    addr.and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical())
}

/// The rate-limit counter a request counts against: on signed-in routes the verified user;
/// on public and webhook routes the client address whether or not a token came along (any
/// valid token of any account would otherwise open a fresh budget). IPv6 clients are counted
/// by their /64, the block one subscriber gets.
pub fn rate_key(route: &Route, identity: Option<&Identity>, client: Option<IpAddr>) -> String {
    let by_user = route.access() == Some(crate::policy::Access::SignedIn);
    let who = match (identity, client) {
        (Some(id), _) if by_user => format!("u:{}", id.user_id),
        (_, Some(IpAddr::V6(v6))) => {
            let s = v6.segments();
            format!("ip6:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        (_, Some(ip)) => format!("ip:{ip}"),
        (_, None) => "ip:unknown".to_string(),
    };
    format!("{}:{who}", route.name)
}

/// A protocol upgrade request (WebSocket, h2c): after a 101 the connection is a tunnel.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::UPGRADE)
}

/// Whether an upgrade is one a `websocket = true` route accepts: exactly one `Upgrade:
/// websocket`. Anything else (h2c, several protocols) would open a tunnel of a kind the route
/// never asked for.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(http::header::UPGRADE).iter();
    matches!(
        (values.next(), values.next()),
        (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket")
    )
}

/// Bytes of the request head as Portier counts them for `limits.max_header_bytes`.
pub fn header_bytes(headers: &HeaderMap, path_and_query: &str) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + path_and_query.len()
}

/// The announced body length, when it is a number.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Whether the request has a body that an early answer would leave unread.
pub fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// The body limit of a route: its own, or the config's.
pub fn body_limit(route: &Route, default: u64) -> u64 {
    route.max_body_bytes.unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn cip(peer: &str, xff: &[&str], trusted: &[Cidr]) -> Option<IpAddr> {
        client_ip(Some(ip(peer)), xff.iter().map(|l| l.as_bytes()), trusted)
    }

    #[test]
    fn every_forwarded_for_line_counts_and_mapped_addresses_are_ipv4() {
        let lb = [Cidr::parse("10.0.0.0/8").expect("cidr")];
        // HAProxy adds its own line: the client's forged first line does not win.
        assert_eq!(
            cip("10.0.0.2", &["6.6.6.6", "203.0.113.9"], &lb),
            Some(ip("203.0.113.9"))
        );
        // A line that is not UTF-8 before the proxy's line does not hide it.
        assert_eq!(
            client_ip(
                Some(ip("10.0.0.2")),
                [b"caf\xe9".as_slice(), b"203.0.113.9".as_slice()],
                &lb
            ),
            Some(ip("203.0.113.9"))
        );
        // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
        assert_eq!(
            cip("::ffff:10.0.0.2", &["203.0.113.9"], &lb),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(cip("::ffff:203.0.113.5", &[], &lb), Some(ip("203.0.113.5")));
        assert_eq!(
            cip("10.0.0.2", &["::ffff:198.51.100.7"], &lb),
            Some(ip("198.51.100.7"))
        );
    }

    #[test]
    fn only_a_websocket_upgrade_is_a_websocket_upgrade() {
        let with = |vals: &[&str]| {
            let mut h = HeaderMap::new();
            for v in vals {
                h.append(http::header::UPGRADE, v.parse().expect("value"));
            }
            is_websocket_upgrade(&h)
        };
        assert!(with(&["websocket"]));
        assert!(with(&["WebSocket"]));
        assert!(!with(&["h2c"]));
        assert!(!with(&["websocket, h2c"]));
        assert!(!with(&["websocket", "h2c"]));
        assert!(!with(&[]));
    }

    #[test]
    fn forwarded_for_is_believed_only_through_trusted_proxies() {
        let lb = [Cidr::parse("10.0.0.0/8").expect("cidr")];
        // An untrusted peer's X-Forwarded-For is ignored: it could name anyone.
        assert_eq!(
            cip("203.0.113.5", &["198.51.100.7"], &lb),
            Some(ip("203.0.113.5"))
        );
        assert_eq!(
            cip("203.0.113.5", &["198.51.100.7"], &[]),
            Some(ip("203.0.113.5"))
        );
        // Through the load balancer: the right-most hop that is not a trusted proxy.
        assert_eq!(
            cip("10.0.0.2", &["198.51.100.7, 10.0.0.9"], &lb),
            Some(ip("198.51.100.7"))
        );
        // A client-forged left-most entry does not win over the hop the proxy appended.
        assert_eq!(
            cip("10.0.0.2", &["1.2.3.4, 198.51.100.7"], &lb),
            Some(ip("198.51.100.7"))
        );
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(cip("10.0.0.2", &["nonsense"], &lb), Some(ip("10.0.0.2")));
        assert_eq!(client_ip(None, [b"1.2.3.4".as_slice()], &lb), None);
    }

    fn route(src: &str) -> crate::policy::PolicySet {
        crate::policy::PolicySet::compile(
            &[(std::path::PathBuf::from("p.toml"), src.to_string())],
            &["app"],
        )
        .expect("compiles")
    }

    #[test]
    fn public_routes_count_by_address_even_with_a_token() {
        let set = route(
            "[[route]]\nname = \"pub\"\npath = \"/p\"\nmethods = [\"GET\"]\nupstream = \"app\"\naccess = \"public\"\n\n[[route]]\nname = \"me\"\npath = \"/m\"\nmethods = [\"GET\"]\nupstream = \"app\"\n",
        );
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "user_a".into());
        claims.insert("sid".into(), "sess_a".into());
        claims.insert("exp".into(), 4_000_000_000i64.into());
        let id = Identity::from_claims(claims).expect("identity");
        let v4 = Some(ip("203.0.113.5"));
        assert_eq!(
            rate_key(&set.routes[0], Some(&id), v4),
            "pub:ip:203.0.113.5"
        );
        assert_eq!(rate_key(&set.routes[1], Some(&id), v4), "me:u:user_a");
        // Every address of one /64 shares a budget.
        let a = rate_key(&set.routes[0], None, Some(ip("2001:db8:1:2::1")));
        let b = rate_key(&set.routes[0], None, Some(ip("2001:db8:1:2:ffff::9")));
        assert_eq!(a, b);
        assert_eq!(a, "pub:ip6:2001:db8:1:2::/64");
        assert_ne!(
            a,
            rate_key(&set.routes[0], None, Some(ip("2001:db8:1:3::1")))
        );
    }
}
