//! Next.js pages as Clerk's own middleware sees them. Three plain decisions:
//!
//! - [`clerk_would_handshake`]: a document request that Clerk's middleware (`@clerk/backend`
//!   `authenticateRequest`) would answer with its 307 "handshake" to the Frontend API, or that
//!   completes one. Those pass to Next.js signed out so the session can refresh; the proxy then
//!   checks the answer (a redirect passes, a page passes only for a session that holds the
//!   route's policy), so a pass-through never serves what the policy refuses.
//! - [`is_navigation`]: a person's navigation, which gets a redirect to the sign-in or upgrade
//!   page instead of a JSON refusal; fetches, RSC requests and server actions keep JSON.
//! - [`next_data_page`]: the page a Pages Router `/_next/data/<build>/<page>.json` belongs to,
//!   whose policy decides it (never a public asset route's).
//!
//! The handshake rules follow `@clerk/backend` 3.25 `src/tokens/request.ts`
//! (`authenticateRequestWithTokenInCookie`, `handleSessionTokenError`,
//! `authenticateRequestWithTokenInHeader`) and `src/tokens/handshake.ts`
//! (`isRequestEligibleForHandshake`); `tests/nextjs_app/README.md` lists them with what the
//! real middleware answered.

use http::{HeaderMap, Method};

use crate::auth::token::cookie_pairs;
use crate::auth::TokenSource;
use crate::config::PagesConfig;
use crate::error::Reason;
pub use crate::policy::Handshake;
use crate::policy::{Authn, Requirement, Route};

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get(name).map(|v| v.as_bytes())
}

/// Clerk's `isRequestEligibleForHandshake`: GET, and `Sec-Fetch-Dest` `document` or `iframe`,
/// or no `Sec-Fetch-Dest` and an `Accept` that starts with `text/html`.
pub fn eligible_for_handshake(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::GET {
        return false;
    }
    match header(headers, "sec-fetch-dest") {
        Some(d) => d == b"document" || d == b"iframe",
        None => header(headers, "accept").is_some_and(|a| a.starts_with(b"text/html")),
    }
}

/// A person's navigation: GET/HEAD for a document (`Sec-Fetch-Dest: document|iframe`,
/// `Sec-Fetch-Mode: navigate`, or an HTML `Accept` without fetch metadata), and not an RSC
/// fetch or a server action.
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    if headers.contains_key("rsc") || headers.contains_key("next-action") {
        return false;
    }
    match (
        header(headers, "sec-fetch-dest"),
        header(headers, "sec-fetch-mode"),
    ) {
        (Some(d), _) if d == b"document" || d == b"iframe" => true,
        (_, Some(m)) if m == b"navigate" => true,
        (None, None) => header(headers, "accept")
            .is_some_and(|a| a.windows(9).any(|w| w.eq_ignore_ascii_case(b"text/html"))),
        _ => false,
    }
}

/// The Clerk cookies and query parameters the handshake rules read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ClerkState {
    session: bool,
    /// The largest `__client_uat` (plain or suffixed), 0 when absent.
    client_uat: u64,
    handshake: bool,
    redirect_count: u32,
    dev_browser_sync: bool,
}

fn clerk_state(headers: &HeaderMap, query: Option<&str>, suffix: Option<&str>) -> ClerkState {
    let mut s = ClerkState::default();
    let named = |name: &[u8], base: &str| {
        name == base.as_bytes()
            || suffix.is_some_and(|x| {
                name.len() == base.len() + 1 + x.len()
                    && name.starts_with(base.as_bytes())
                    && name[base.len()] == b'_'
                    && name.ends_with(x.as_bytes())
            })
    };
    for h in headers.get_all(http::header::COOKIE) {
        for (name, value) in cookie_pairs(h.as_bytes()) {
            if value.is_empty() {
                continue;
            }
            if named(name, "__session") {
                s.session = true;
            } else if named(name, "__client_uat") {
                let v = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                s.client_uat = s.client_uat.max(v.unwrap_or(0));
            } else if name == b"__clerk_handshake" || name == b"__clerk_handshake_nonce" {
                s.handshake = true;
            } else if name == b"__clerk_redirect_count" {
                s.redirect_count = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    for pair in query.unwrap_or("").split('&') {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        match name {
            "__clerk_handshake" | "__clerk_handshake_nonce" => s.handshake = true,
            "__clerk_db_jwt" => s.dev_browser_sync = true,
            _ => {}
        }
    }
    s
}

/// Whether Clerk's middleware would handshake this request (or is completing one), given
/// what Portier's own verification of the same token found. Only asked for requests Portier
/// did not authenticate: a session Portier accepts is decided by policy as usual.
pub fn clerk_would_handshake(
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    cookie_suffix: Option<&str>,
    authn: &Authn,
) -> Option<Handshake> {
    if !eligible_for_handshake(method, headers) {
        return None;
    }
    let Authn::SignedOut { reason, source } = authn else {
        return None;
    };
    let timing = match reason {
        Reason::TokenExpired => Some(Handshake::Expired),
        Reason::TokenNotYetValid => Some(Handshake::NotYetValid),
        Reason::TokenIatInFuture => Some(Handshake::IatInFuture),
        _ => None,
    };
    let state = clerk_state(headers, query, cookie_suffix);
    // Three handshakes within the redirect counter's 2 s lifetime: Clerk stops (signed out).
    if state.redirect_count == 3 {
        return None;
    }
    if *source == Some(TokenSource::Header) {
        // The header path never reads cookies or handshake parameters.
        return timing;
    }
    if state.handshake {
        return Some(Handshake::Completing);
    }
    if state.dev_browser_sync {
        return Some(Handshake::DevBrowserSync);
    }
    match (state.session, state.client_uat > 0) {
        (false, false) => None,
        (true, false) => Some(Handshake::SessionWithoutClientUat),
        (false, true) => Some(Handshake::ClientUatWithoutSession),
        (true, true) => timing,
    }
}

/// The page path of a Pages Router data request: `/_next/data/<build>/<page>.json` ->
/// `/<page>` (`index.json` -> `/`, `a/index.json` -> `/a`). `None` for anything else.
pub fn next_data_page(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/_next/data/")?;
    let (build, page) = rest.split_once('/')?;
    if build.is_empty() {
        return None;
    }
    let page = page.strip_suffix(".json")?;
    if page.is_empty() {
        return None;
    }
    let page = page.strip_suffix("/index").unwrap_or(page);
    if page == "index" {
        return Some("/".into());
    }
    Some(format!("/{page}"))
}

/// Where a refused navigation is sent: `target` (a path or an https URL from the config) with
/// `redirect_url` back to the page, built from `origin` (the configured public origin) or, by
/// default, as a path: never from the request's `Host`, so it is no open redirect.
pub fn redirect_location(
    target: &str,
    origin: Option<&str>,
    path_and_query: &str,
    extra: &[(&str, &str)],
) -> String {
    let back = match origin {
        Some(o) => format!("{}{path_and_query}", o.trim_end_matches('/')),
        None => path_and_query.to_owned(),
    };
    let mut out = String::from(target);
    let mut sep = if target.contains('?') { '&' } else { '?' };
    for (k, v) in extra
        .iter()
        .copied()
        .chain([("redirect_url", back.as_str())])
    {
        out.push(sep);
        sep = '&';
        out.push_str(k);
        out.push('=');
        out.push_str(&encode_component(v));
    }
    out
}

/// Where a person's refused navigation on a page route goes instead of a JSON refusal:
/// signed out -> `sign_in_url`; lacking a plan or feature -> `upgrade_url` with the route's
/// `required` names. `None` keeps the JSON refusal (no URL configured, or another reason).
pub fn refusal_redirect(
    pages: &PagesConfig,
    route: &Route,
    reason: Reason,
    path_and_query: &str,
) -> Option<String> {
    let origin = pages.public_origin.as_deref();
    if reason.is_unauthenticated() {
        let to = pages.sign_in_url.as_deref()?;
        return Some(redirect_location(to, origin, path_and_query, &[]));
    }
    let names = route.requires.iter().find_map(|r| match (r, reason) {
        (Requirement::Plan(p), Reason::PlanRequired) => Some(p),
        (Requirement::Feature(f), Reason::FeatureRequired) => Some(f),
        _ => None,
    })?;
    let to = pages.upgrade_url.as_deref()?;
    let required = names.join(",");
    Some(redirect_location(
        to,
        origin,
        path_and_query,
        &[("required", &required)],
    ))
}

/// The session token an answer sets (`Set-Cookie: __session=...`, or the instance's suffixed
/// name, which wins): what Clerk's middleware issued while completing a handshake. A cookie
/// being deleted (`Max-Age=0`, empty value) sets nothing.
pub fn session_set_cookie<'a>(
    set_cookies: impl Iterator<Item = &'a [u8]>,
    suffix: Option<&str>,
) -> Option<String> {
    let suffixed = suffix.map(|s| format!("__session_{s}"));
    let (mut plain, mut own) = (None, None);
    for line in set_cookies {
        let mut parts = line.split(|&b| b == b';');
        let Some(first) = parts.next() else { continue };
        let Some(eq) = first.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (name, value) = (first[..eq].trim_ascii(), first[eq + 1..].trim_ascii());
        let deleted = parts.any(|a| {
            let a = a.trim_ascii();
            a.len() > 8
                && a[..8].eq_ignore_ascii_case(b"max-age=")
                && std::str::from_utf8(&a[8..])
                    .ok()
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .is_some_and(|v| v <= 0)
        });
        if value.is_empty() || deleted {
            continue;
        }
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        if name == b"__session" {
            plain = Some(value.to_owned());
        } else if suffixed.as_deref().is_some_and(|s| name == s.as_bytes()) {
            own = Some(value.to_owned());
        }
    }
    own.or(plain)
}

/// `encodeURIComponent`.
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
            )
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        m
    }

    const DOC: (&str, &str) = ("sec-fetch-dest", "document");

    fn out(reason: Reason, source: Option<TokenSource>) -> Authn {
        Authn::SignedOut { reason, source }
    }

    #[test]
    fn the_cookie_rules_clerk_applies_to_a_document_request() {
        let cookie = Some(TokenSource::Cookie);
        let ask = |hs: &[(&str, &str)], q: Option<&str>, a: &Authn| {
            clerk_would_handshake(&Method::GET, &h(hs), q, Some("m3jNlIl7"), a)
        };
        let expired = out(Reason::TokenExpired, cookie);
        let both = ("cookie", "__session=x; __client_uat=1700000000");
        assert_eq!(ask(&[DOC, both], None, &expired), Some(Handshake::Expired));
        assert_eq!(
            ask(&[DOC, both], None, &out(Reason::TokenNotYetValid, cookie)),
            Some(Handshake::NotYetValid)
        );
        assert_eq!(
            ask(&[DOC, both], None, &out(Reason::TokenIatInFuture, cookie)),
            Some(Handshake::IatInFuture)
        );
        // A bad signature is signed out for Clerk too: no handshake, policy decides.
        assert_eq!(
            ask(&[DOC, both], None, &out(Reason::TokenInvalid, cookie)),
            None
        );
        let missing = out(Reason::TokenMissing, None);
        assert_eq!(
            ask(
                &[DOC, ("cookie", "__client_uat=1700000000")],
                None,
                &missing
            ),
            Some(Handshake::ClientUatWithoutSession)
        );
        assert_eq!(
            ask(
                &[DOC, ("cookie", "__client_uat_m3jNlIl7=1700000000")],
                None,
                &missing
            ),
            Some(Handshake::ClientUatWithoutSession),
            "the instance's suffixed cookie counts"
        );
        assert_eq!(
            ask(
                &[DOC, ("cookie", "__client_uat_other123=17")],
                None,
                &missing
            ),
            None
        );
        assert_eq!(
            ask(&[DOC, ("cookie", "__client_uat=0")], None, &missing),
            None
        );
        assert_eq!(ask(&[DOC], None, &missing), None, "no cookies: signed out");
        assert_eq!(
            ask(&[DOC, ("cookie", "__session=x")], None, &expired),
            Some(Handshake::SessionWithoutClientUat)
        );
        assert_eq!(
            ask(&[DOC], Some("a=1&__clerk_handshake=eyJ"), &missing),
            Some(Handshake::Completing)
        );
        assert_eq!(
            ask(
                &[DOC, ("cookie", "__clerk_handshake_nonce=n1")],
                None,
                &missing
            ),
            Some(Handshake::Completing)
        );
        assert_eq!(
            ask(&[DOC], Some("__clerk_db_jwt=x"), &missing),
            Some(Handshake::DevBrowserSync)
        );
        let looping = (
            "cookie",
            "__session=x; __client_uat=17; __clerk_redirect_count=3",
        );
        assert_eq!(
            ask(&[DOC, looping], None, &expired),
            None,
            "Clerk's loop guard"
        );
        // Portier authenticated it: policy decides, never a pass-through.
        let id = crate::auth::Identity::from_claims(
            serde_json::json!({"sub": "user_1", "sid": "sess_1", "exp": 4_000_000_000_i64})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )
        .expect("identity");
        assert_eq!(ask(&[DOC, both], None, &Authn::SignedIn(id.into())), None);
    }

    #[test]
    fn only_document_gets_are_handshaken_and_the_header_path_ignores_cookies() {
        let expired = out(Reason::TokenExpired, Some(TokenSource::Cookie));
        let both = ("cookie", "__session=x; __client_uat=17");
        let ask = |m: Method, hs: &[(&str, &str)], a: &Authn| {
            clerk_would_handshake(&m, &h(hs), Some("__clerk_handshake=x"), None, a)
        };
        assert_eq!(
            ask(Method::POST, &[DOC, both], &expired),
            None,
            "server actions, forms"
        );
        assert_eq!(ask(Method::HEAD, &[DOC, both], &expired), None);
        assert_eq!(
            ask(Method::GET, &[("sec-fetch-dest", "empty"), both], &expired),
            None,
            "fetch, RSC"
        );
        assert_eq!(
            ask(Method::GET, &[("accept", "text/html,*/*"), both], &expired),
            Some(Handshake::Completing),
            "no fetch metadata, HTML accepted"
        );
        assert_eq!(ask(Method::GET, &[("accept", "*/*"), both], &expired), None);
        let bearer = out(Reason::TokenExpired, Some(TokenSource::Header));
        assert_eq!(
            ask(Method::GET, &[DOC], &bearer),
            Some(Handshake::Expired),
            "query ignored"
        );
        assert_eq!(
            ask(
                Method::GET,
                &[DOC],
                &out(Reason::TokenInvalid, Some(TokenSource::Header))
            ),
            None
        );
    }

    #[test]
    fn navigations_get_redirects_and_fetches_keep_json() {
        assert!(is_navigation(&Method::GET, &h(&[DOC])));
        assert!(is_navigation(
            &Method::HEAD,
            &h(&[("sec-fetch-mode", "navigate")])
        ));
        assert!(is_navigation(&Method::GET, &h(&[("accept", "text/html")])));
        assert!(!is_navigation(&Method::GET, &h(&[DOC, ("rsc", "1")])));
        assert!(!is_navigation(
            &Method::GET,
            &h(&[("sec-fetch-dest", "empty"), ("accept", "text/html")])
        ));
        assert!(!is_navigation(&Method::POST, &h(&[DOC])));
        assert!(!is_navigation(
            &Method::GET,
            &h(&[("accept", "application/json")])
        ));
    }

    #[test]
    fn next_data_requests_belong_to_their_page() {
        assert_eq!(
            next_data_page("/_next/data/b1/dashboard.json").as_deref(),
            Some("/dashboard")
        );
        assert_eq!(
            next_data_page("/_next/data/b1/index.json").as_deref(),
            Some("/")
        );
        assert_eq!(
            next_data_page("/_next/data/b1/blog/index.json").as_deref(),
            Some("/blog")
        );
        assert_eq!(
            next_data_page("/_next/data/b1/a/b.json").as_deref(),
            Some("/a/b")
        );
        assert_eq!(next_data_page("/_next/data/b1/.json"), None);
        assert_eq!(next_data_page("/_next/data//x.json"), None);
        assert_eq!(next_data_page("/_next/static/x.js"), None);
        assert_eq!(next_data_page("/_next/data/b1/x.js"), None);
    }

    #[test]
    fn refusals_become_sign_in_or_upgrade_redirects_only_where_configured() {
        let src = r#"
[[route]]
name = "pro"
path = "/images/generate"
methods = ["GET"]
upstream = "nextjs"
page = true
plan = ["pro", "business"]
"#;
        let set = crate::policy::PolicySet::compile(
            &[(std::path::PathBuf::from("p.toml"), src.to_owned())],
            &["nextjs"],
        )
        .expect("policy");
        let route = &set.routes[0];
        let pages = PagesConfig {
            sign_in_url: Some("/sign-in".into()),
            upgrade_url: Some("/pricing".into()),
            public_origin: None,
        };
        let at = "/images/generate?x=1";
        assert_eq!(
            refusal_redirect(&pages, route, Reason::TokenMissing, at).as_deref(),
            Some("/sign-in?redirect_url=%2Fimages%2Fgenerate%3Fx%3D1")
        );
        assert_eq!(
            refusal_redirect(&pages, route, Reason::PlanRequired, at).as_deref(),
            Some("/pricing?required=pro%2Cbusiness&redirect_url=%2Fimages%2Fgenerate%3Fx%3D1")
        );
        assert_eq!(refusal_redirect(&pages, route, Reason::NotOwner, at), None);
        assert_eq!(
            refusal_redirect(&pages, route, Reason::FeatureRequired, at),
            None,
            "no feature rule"
        );
        assert_eq!(
            refusal_redirect(&PagesConfig::default(), route, Reason::TokenMissing, at),
            None,
            "without [pages] the refusal stays JSON"
        );
    }

    #[test]
    fn the_session_an_answer_sets() {
        let lines: [&[u8]; 4] = [
            b"__clerk_handshake=; Max-Age=0; Path=/",
            b"__session=plain.jwt.x; Path=/; SameSite=Lax",
            b"__session_m3jNlIl7=own.jwt.y; Path=/",
            b"__client_uat=1700000000; Path=/",
        ];
        assert_eq!(
            session_set_cookie(lines.iter().copied(), Some("m3jNlIl7")).as_deref(),
            Some("own.jwt.y")
        );
        assert_eq!(
            session_set_cookie(lines.iter().copied(), None).as_deref(),
            Some("plain.jwt.x")
        );
        let deleted: [&[u8]; 2] = [b"__session=; Max-Age=0", b"__session=x; max-age=0; Path=/"];
        assert_eq!(session_set_cookie(deleted.iter().copied(), None), None);
        assert_eq!(session_set_cookie(std::iter::empty(), None), None);
    }

    #[test]
    fn redirects_go_back_to_the_page_never_to_a_host_from_the_request() {
        assert_eq!(
            redirect_location("/sign-in", None, "/dashboard?tab=a&b=1", &[]),
            "/sign-in?redirect_url=%2Fdashboard%3Ftab%3Da%26b%3D1"
        );
        assert_eq!(
            redirect_location("/pricing?from=portier", Some("https://app.example.com/"), "/images/generate", &[("required", "pro")]),
            "/pricing?from=portier&required=pro&redirect_url=https%3A%2F%2Fapp.example.com%2Fimages%2Fgenerate"
        );
    }
}
