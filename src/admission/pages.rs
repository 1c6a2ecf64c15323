//! Next.js pages as Clerk's own middleware sees them. Four plain decisions:
//!
//! - [`clerk_would_handshake`]: a document request that Clerk's middleware (`@clerk/backend`
//!   `authenticateRequest`) would answer with its 307 "handshake" to the Frontend API, or that
//!   completes one. Those pass to Next.js signed out so the session can refresh; the proxy then
//!   checks the answer (a redirect passes, a page passes only for a session that holds the
//!   route's policy), so a pass-through never serves what the policy refuses.
//! - [`is_navigation`]: a person's navigation, which gets a redirect to the sign-in or upgrade
//!   page instead of a JSON refusal; fetches, RSC requests and server actions keep JSON.
//! - [`data_request`]: the page a Pages Router `/_next/data/<build>/<page>.json` renders, whose
//!   policy decides it (never a public asset route's), mapped exactly as Next.js maps it.
//! - [`refusal_redirect`]: where a refused navigation goes, with a `redirect_url` back that
//!   always stays on this site.
//!
//! The handshake rules follow `@clerk/backend` 3.25 `src/tokens/request.ts`
//! (`authenticateRequestWithTokenInCookie`, `handleSessionTokenError`,
//! `handleMaybeHandshakeStatus`, `authenticateRequestWithTokenInHeader`),
//! `src/tokens/authenticateContext.ts` (`usesSuffixedCookies`, `parseAuthorizationHeader`, the
//! cookie and query values it reads) and `src/tokens/handshake.ts`
//! (`isRequestEligibleForHandshake`, the redirect-loop counter); `tests/nextjs_app/README.md`
//! lists them with what the real middleware answered.

use std::borrow::Cow;

use http::{HeaderMap, Method};
use serde_json::{Map, Value};

use crate::auth::token::cookie_pairs;
use crate::auth::TokenSource;
use crate::config::PagesConfig;
use crate::error::Reason;
pub use crate::nextjs::{check_redirect_target, data_request, DataRequest};
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

/// What Portier knows about the Clerk instance the app's middleware serves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Instance<'a> {
    /// `__session_<suffix>` (from `clerk.publishable_key` or `clerk.cookie_suffix`).
    pub cookie_suffix: Option<&'a str>,
    /// `Some(true)` for a development instance (`pk_test_`), `Some(false)` for production;
    /// `None` without `clerk.publishable_key`: the development-only rules (`__clerk_db_jwt`,
    /// a missing dev browser) are then never applied, so no pass-through rests on a guess.
    pub development: Option<bool>,
    /// The Frontend API host (`clerk.example.com`): which instance a cookie token belongs to.
    pub frontend_api: Option<&'a str>,
}

impl<'a> Instance<'a> {
    /// The instance Portier verifies tokens of: the verifier's cookie suffix and issuer.
    pub fn of(settings: &'a crate::auth::VerifierSettings, pages: &'a PagesConfig) -> Self {
        Self::new(settings.cookie_suffix.as_deref(), pages, &settings.issuer)
    }

    /// From the configuration: the cookie suffix of the verifier and `[pages]`' instance,
    /// falling back to the issuer's host for the Frontend API.
    pub fn new(cookie_suffix: Option<&'a str>, pages: &'a PagesConfig, issuer: &'a str) -> Self {
        let from_issuer = issuer
            .split_once("://")
            .map_or(issuer, |(_, rest)| rest)
            .trim_end_matches('/');
        Instance {
            cookie_suffix,
            development: pages.instance.as_ref().map(|i| i.development),
            frontend_api: Some(
                pages
                    .instance
                    .as_ref()
                    .map_or(from_issuer, |i| i.frontend_api.as_str()),
            ),
        }
    }

    fn production(&self) -> bool {
        self.development != Some(true)
    }
}

/// Percent-decodes `s` (`decodeURIComponent`, and `+` as a space for a query): `None` when the
/// bytes are not UTF-8 once decoded.
fn percent_decode(s: &str, plus: bool) -> Option<Cow<'_, str>> {
    if !(s.contains('%') || plus && s.contains('+')) {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match (
                b.get(i + 1).copied().and_then(crate::path::hex),
                b.get(i + 2).copied().and_then(crate::path::hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// The request's cookies as Clerk reads them (the `cookie` package): the first of a name
/// wins, values are percent-decoded when they can be, an empty value is no cookie.
struct Jar<'a>(Vec<(&'a [u8], &'a [u8])>);

impl<'a> Jar<'a> {
    fn read(headers: &'a HeaderMap) -> Self {
        let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
        for h in headers.get_all(http::header::COOKIE) {
            for (name, value) in cookie_pairs(h.as_bytes()) {
                if !pairs.iter().any(|(n, _)| *n == name) {
                    pairs.push((name, value));
                }
            }
        }
        Jar(pairs)
    }

    fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        let (_, v) = self.0.iter().find(|(n, _)| *n == name.as_bytes())?;
        let v = std::str::from_utf8(v).ok()?;
        let v = percent_decode(v, false).unwrap_or(Cow::Borrowed(v));
        (!v.is_empty()).then_some(v)
    }
}

/// `URLSearchParams` over the raw query: names and values decoded, the first value of a name.
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    query?.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(n, true)? == name).then(|| percent_decode(v, true).unwrap_or_default())
    })
}

/// A token's JOSE header and payload, read without checking its signature, as Clerk's
/// `decodeJwt` does for the claims it looks at before verifying.
struct Decoded {
    header: Map<String, Value>,
    payload: Map<String, Value>,
}

impl Decoded {
    fn read(token: &str) -> Option<Decoded> {
        use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode};
        use base64::Engine;
        const B64: GeneralPurpose = GeneralPurpose::new(
            &base64::alphabet::URL_SAFE,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let json = |s: &str| {
            B64.decode(s)
                .ok()
                .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
        };
        Some(Decoded {
            header: json(h)?,
            payload: json(p)?,
        })
    }

    fn num(&self, claim: &str) -> Option<f64> {
        self.payload.get(claim).and_then(Value::as_f64)
    }

    fn str(&self, claim: &str) -> Option<&str> {
        self.payload.get(claim).and_then(Value::as_str)
    }

    /// A machine JWT (OAuth access token `typ`, or an M2M `sub`) or a token whose `cat` is
    /// another class than a session: Clerk signs such a cookie out (`token-type-mismatch`).
    fn not_a_session(&self) -> bool {
        let typ = self.header.get("typ").and_then(Value::as_str);
        let cat = self.header.get("cat").and_then(Value::as_str);
        matches!(typ, Some("at+jwt" | "application/at+jwt"))
            || self.str("sub").is_some_and(|s| s.starts_with("mch_"))
            || cat.is_some_and(|c| c != "cl_B7d4PD111AAA" && c != "cl_I7d4PD111III")
    }
}

/// `Number.parseInt(v) || 0`: leading digits (after optional space and sign, `0x` for hex).
fn js_parse_int(v: &str) -> i64 {
    let v = v.trim_start();
    let (neg, v) = match v.as_bytes().first() {
        Some(b'-') => (true, &v[1..]),
        Some(b'+') => (false, &v[1..]),
        _ => (false, v),
    };
    let (radix, v) = match v.get(..2) {
        Some("0x" | "0X") => (16, &v[2..]),
        _ => (10, v),
    };
    let end = v
        .bytes()
        .position(|b| !(b as char).is_digit(radix))
        .unwrap_or(v.len());
    let n = i64::from_str_radix(&v[..end], radix).unwrap_or(0);
    if neg {
        -n
    } else {
        n
    }
}

/// `Number(v) || 0`, for the redirect counter.
fn js_number(v: &str) -> f64 {
    let v = v.trim();
    let n = match v.get(..2) {
        Some("0x" | "0X") => u64::from_str_radix(&v[2..], 16).ok().map(|n| n as f64),
        Some("0o" | "0O") => u64::from_str_radix(&v[2..], 8).ok().map(|n| n as f64),
        Some("0b" | "0B") => u64::from_str_radix(&v[2..], 2).ok().map(|n| n as f64),
        _ if v.is_empty() => Some(0.0),
        _ => v.parse::<f64>().ok(),
    };
    n.filter(|n| n.is_finite()).unwrap_or(0.0)
}

/// Clerk's `parseAuthorizationHeader`: whether the request takes the header path (then
/// cookies, `__client_uat` and handshake parameters are never read).
fn header_token(headers: &HeaderMap) -> bool {
    let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    else {
        return false;
    };
    let mut parts = v.split(' ');
    let scheme = parts.next().unwrap_or("");
    match parts.next() {
        None | Some("") => !scheme.is_empty(),
        Some(_) => scheme == "Bearer",
    }
}

/// `iss.replace(/https?:\/\//gi, '')`: every `http://` or `https://`, any case, removed in one
/// pass.
fn without_schemes(iss: &str) -> String {
    let lower = iss.to_ascii_lowercase();
    let mut out = String::with_capacity(iss.len());
    let mut chars = iss.char_indices();
    while let Some((i, c)) = chars.next() {
        let skip = ["https://", "http://"]
            .into_iter()
            .find(|p| lower[i..].starts_with(p))
            .map_or(0, str::len);
        if skip == 0 {
            out.push(c);
        } else {
            // The scheme is ASCII: its first character is `c`, the rest follow.
            for _ in 1..skip {
                chars.next();
            }
        }
    }
    out
}

/// Clerk's `usesSuffixedCookies`: whether the instance's suffixed cookies are the ones read.
fn uses_suffixed(jar: &Jar<'_>, inst: &Instance<'_>, now: i64) -> bool {
    let Some(suffix) = inst.cookie_suffix else {
        return false;
    };
    let suffixed_uat = jar.get(&format!("__client_uat_{suffix}"));
    let uat = jar.get("__client_uat");
    let suffixed_session = jar.get(&format!("__session_{suffix}"));
    let session = jar.get("__session");
    let plain = session.as_deref().map(Decoded::read);
    if let Some(plain) = &plain {
        let iss = plain.as_ref().and_then(|d| d.str("iss"));
        if iss.is_none_or(str::is_empty) {
            return false;
        }
        let belongs = match (iss, inst.frontend_api) {
            (Some(iss), Some(api)) => without_schemes(iss) == api,
            // Without the Frontend API the token's instance cannot be told: Clerk's own.
            _ => true,
        };
        if !belongs {
            return true;
        }
    }
    if suffixed_uat.is_none() && suffixed_session.is_none() {
        return false;
    }
    let iat = |d: Option<Decoded>| d.and_then(|d| d.num("iat")).unwrap_or(0.0);
    let suffixed = suffixed_session.as_deref().and_then(Decoded::read);
    let suffixed_exp = suffixed.as_ref().and_then(|d| d.num("exp"));
    let suffixed_iat = iat(suffixed);
    let zero = |v: &Option<Cow<'_, str>>| v.as_deref() == Some("0");
    if !zero(&suffixed_uat) && !zero(&uat) && iat(plain.flatten()) > suffixed_iat {
        return false;
    }
    if zero(&suffixed_uat) && !zero(&uat) {
        return false;
    }
    if !inst.production()
        && !zero(&suffixed_uat)
        && zero(&uat)
        && suffixed_exp.is_some_and(|exp| exp <= now as f64)
    {
        return false;
    }
    if suffixed_uat.is_none() && suffixed_session.is_some() {
        return false;
    }
    true
}

/// What Clerk's timing checks (`verifyToken`, 5 s skew) say of a token: the handshake they
/// lead to, or `None` when the times are fine.
fn timing(d: &Decoded, now: i64) -> Option<Handshake> {
    const SKEW: f64 = 5.0;
    let now = now as f64;
    if d.num("exp").is_some_and(|exp| exp <= now - SKEW) {
        return Some(Handshake::Expired);
    }
    if d.num("nbf").is_some_and(|nbf| nbf > now + SKEW) {
        return Some(Handshake::NotYetValid);
    }
    if d.num("iat").is_some_and(|iat| iat > now + SKEW) {
        return Some(Handshake::IatInFuture);
    }
    None
}

/// The handshake a failed verification leads to (`handleSessionTokenError`).
fn after_verification(reason: Reason) -> Option<Handshake> {
    match reason {
        Reason::TokenExpired => Some(Handshake::Expired),
        Reason::TokenNotYetValid => Some(Handshake::NotYetValid),
        Reason::TokenIatInFuture => Some(Handshake::IatInFuture),
        _ => None,
    }
}

/// Whether Clerk's middleware would answer this request with its handshake, or is completing
/// one, given Portier's own verification of the request's token (`authn`) and the clock
/// (`now`, Unix seconds). Asked for every request to a page route: a session Portier accepts
/// can still be one Clerk refreshes first (its token older than `__client_uat`, or no
/// `__client_uat` at all).
///
/// Clerk's order (`authenticateRequestWithTokenInCookie`): a handshake token or nonce is
/// resolved first (whatever the redirect counter says); then, on development instances,
/// `__clerk_db_jwt` in the query and a missing dev browser; then the session and
/// `__client_uat` cookies; then an `iat` older than `__client_uat` (read before the
/// signature); then verification. Every outcome but resolving a handshake becomes a 307 only
/// for a document GET and while `__clerk_redirect_count` is not 3. Not followed: satellite
/// domains, organization sync and the cross-origin-`Referer` sync of a valid session (Portier
/// decides those by policy; the app's middleware still runs for what Portier forwards).
pub fn clerk_would_handshake(
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
    inst: &Instance<'_>,
    authn: &Authn,
    now: i64,
) -> Option<Handshake> {
    // Portier only lets document GETs through signed out, so a completed handshake on any
    // other request is decided by policy too.
    if !eligible_for_handshake(method, headers) {
        return None;
    }
    // Two session cookies of one name: refused outright (cookie tossing), never passed.
    if let Authn::SignedOut {
        reason: Reason::SessionCookieConflict,
        ..
    } = authn
    {
        return None;
    }
    let jar = Jar::read(headers);
    let looping = jar
        .get("__clerk_redirect_count")
        .is_some_and(|c| js_number(&c) == 3.0);
    let outcome = if header_token(headers) {
        // The header path verifies the Bearer token and reads nothing else.
        match authn {
            Authn::SignedOut {
                reason,
                source: Some(TokenSource::Header),
            } => after_verification(*reason),
            _ => None,
        }
    } else {
        let handshake = |name: &str| query_param(query, name).is_some_and(|v| !v.is_empty());
        if handshake("__clerk_handshake")
            || handshake("__clerk_handshake_nonce")
            || jar.get("__clerk_handshake").is_some()
            || jar.get("__clerk_handshake_nonce").is_some()
        {
            // Resolved before the loop guard is consulted: the way back always reaches it.
            return Some(Handshake::Completing);
        }
        let portier_token = crate::auth::extract_token(
            header(headers, "authorization"),
            headers
                .get_all(http::header::COOKIE)
                .iter()
                .map(|v| v.as_bytes()),
            inst.cookie_suffix,
        )
        .ok()
        .flatten()
        .map(|(t, _)| t);
        cookie_rules(&jar, query, inst, (authn, portier_token), now)
    };
    outcome.filter(|_| !looping)
}

/// Clerk's cookie path after the handshake parameters.
fn cookie_rules(
    jar: &Jar<'_>,
    query: Option<&str>,
    inst: &Instance<'_>,
    (authn, portier_token): (&Authn, Option<&str>),
    now: i64,
) -> Option<Handshake> {
    let suffixed = uses_suffixed(jar, inst, now);
    let cookie = |base: &str| match (suffixed, inst.cookie_suffix) {
        (true, Some(s)) => jar.get(&format!("{base}_{s}")),
        _ => jar.get(base),
    };
    if inst.development == Some(true) {
        if query.is_some_and(|q| {
            q.split('&').any(|pair| {
                let n = pair.split_once('=').map_or(pair, |(n, _)| n);
                percent_decode(n, true).is_some_and(|n| n == "__clerk_db_jwt")
            })
        }) {
            return Some(Handshake::DevBrowserSync);
        }
        let dev_browser = query_param(query, "__clerk_db_jwt").is_some_and(|v| !v.is_empty())
            || cookie("__clerk_db_jwt").is_some();
        if !dev_browser {
            return Some(Handshake::DevBrowserMissing);
        }
    }
    let session = cookie("__session");
    let client_uat = cookie("__client_uat").map_or(0, |v| js_parse_int(&v));
    let session = match (session, client_uat != 0) {
        (None, false) => return None,
        (Some(_), false) => return Some(Handshake::SessionWithoutClientUat),
        (None, true) => return Some(Handshake::ClientUatWithoutSession),
        (Some(s), true) => s,
    };
    let decoded = Decoded::read(&session)?;
    if decoded.not_a_session() {
        return None;
    }
    if decoded
        .num("iat")
        .is_some_and(|iat| iat < client_uat as f64)
    {
        return Some(Handshake::IatBeforeClientUat);
    }
    // Verification: Portier's own when it verified this very token; else the token's times
    // (Clerk checks the signature first, but a pass-through is only a chance for the app to
    // answer: what it answers is checked).
    match authn {
        _ if portier_token != Some(session.as_ref()) => timing(&decoded, now),
        Authn::SignedIn(_) => None,
        Authn::SignedOut { reason, .. } => after_verification(*reason),
    }
}

/// Where `redirect_url` points back to: the canonical path (one leading `/`, no `//`, no
/// backslash: [`crate::path::canonicalize`]) and the request's own query. Never the raw
/// target, whose `//evil.com` a browser reads as another site.
pub fn back_target(canonical: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{canonical}?{q}"),
        None => canonical.to_owned(),
    }
}

/// Where a refused navigation is sent: `target` (a path or an https URL from the config) with
/// `redirect_url` back to the page, built from `origin` (the configured public origin) or, by
/// default, as a path: never from the request's `Host`, so it is no open redirect.
/// `path_and_query` comes from [`back_target`].
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
/// `required` names. The route's own URLs win over `[pages]`. `None` keeps the JSON refusal
/// (no URL configured, or another reason).
pub fn refusal_redirect(
    pages: &PagesConfig,
    route: &Route,
    reason: Reason,
    path_and_query: &str,
) -> Option<String> {
    let origin = pages.public_origin.as_deref();
    if reason.is_unauthenticated() {
        let to = route
            .redirects
            .sign_in_url
            .as_deref()
            .or(pages.sign_in_url.as_deref())?;
        return Some(redirect_location(to, origin, path_and_query, &[]));
    }
    let names = route.requires.iter().find_map(|r| match (r, reason) {
        (Requirement::Plan(p), Reason::PlanRequired) => Some(p),
        (Requirement::Feature(f), Reason::FeatureRequired) => Some(f),
        _ => None,
    })?;
    let to = route
        .redirects
        .upgrade_url
        .as_deref()
        .or(pages.upgrade_url.as_deref())?;
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
    use base64::Engine;
    use serde_json::json;

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
    const NOW: i64 = 1_800_000_000;
    const SUFFIX: &str = "m3jNlIl7";

    fn prod() -> Instance<'static> {
        Instance {
            cookie_suffix: Some(SUFFIX),
            development: Some(false),
            frontend_api: Some("clerk.portier.test"),
        }
    }

    fn out(reason: Reason, source: Option<TokenSource>) -> Authn {
        Authn::SignedOut { reason, source }
    }

    fn jwt(header: serde_json::Value, payload: serde_json::Value) -> String {
        let b = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!("{}.{}.c2ln", b(&header), b(&payload))
    }

    /// An unsigned session token issued at `iat` (the rules read it without verifying).
    fn session(iat: i64) -> String {
        jwt(
            json!({"alg": "RS256", "typ": "JWT", "kid": "ins_1"}),
            json!({"iss": "https://clerk.portier.test", "sub": "user_1", "sid": "sess_1",
                   "iat": iat, "nbf": iat - 10, "exp": iat + 60}),
        )
    }

    fn signed_in() -> Authn {
        let id = crate::auth::Identity::from_claims(
            json!({"sub": "user_1", "sid": "sess_1", "exp": 4_000_000_000_i64})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )
        .expect("identity");
        Authn::SignedIn(id.into())
    }

    fn ask(
        inst: &Instance<'_>,
        hs: &[(&str, &str)],
        q: Option<&str>,
        a: &Authn,
    ) -> Option<Handshake> {
        clerk_would_handshake(&Method::GET, &h(hs), q, inst, a, NOW)
    }

    #[test]
    fn the_cookie_rules_clerk_applies_to_a_document_request() {
        let p = prod();
        let cookie = Some(TokenSource::Cookie);
        let old = session(NOW - 120);
        let both = format!("__session={old}; __client_uat={}", NOW - 200);
        let both = ("cookie", both.as_str());
        let expired = out(Reason::TokenExpired, cookie);
        assert_eq!(
            ask(&p, &[DOC, both], None, &expired),
            Some(Handshake::Expired)
        );
        assert_eq!(
            ask(
                &p,
                &[DOC, both],
                None,
                &out(Reason::TokenNotYetValid, cookie)
            ),
            Some(Handshake::NotYetValid)
        );
        assert_eq!(
            ask(
                &p,
                &[DOC, both],
                None,
                &out(Reason::TokenIatInFuture, cookie)
            ),
            Some(Handshake::IatInFuture)
        );
        // A bad signature is signed out for Clerk too: no handshake, policy decides.
        assert_eq!(
            ask(&p, &[DOC, both], None, &out(Reason::TokenInvalid, cookie)),
            None
        );
        // Not a JWT at all: Clerk's decode fails, signed out.
        let garbage = ("cookie", "__session=x; __client_uat=1700000000");
        assert_eq!(
            ask(
                &p,
                &[DOC, garbage],
                None,
                &out(Reason::TokenInvalid, cookie)
            ),
            None
        );
        // A machine token or a JWT template in the cookie: signed out (token-type-mismatch).
        for t in [
            jwt(
                json!({"typ": "JWT", "cat": "cl_B7d4PD222AAA"}),
                json!({"iat": NOW - 120, "exp": NOW - 60}),
            ),
            jwt(
                json!({"typ": "at+jwt"}),
                json!({"iat": NOW - 120, "exp": NOW - 60}),
            ),
            jwt(
                json!({"typ": "JWT"}),
                json!({"sub": "mch_1", "iat": NOW - 120, "exp": NOW - 60}),
            ),
        ] {
            let c = format!("__session={t}; __client_uat={NOW}");
            assert_eq!(ask(&p, &[DOC, ("cookie", &c)], None, &expired), None, "{t}");
        }
        let missing = out(Reason::TokenMissing, None);
        let uat = format!("__client_uat={NOW}");
        assert_eq!(
            ask(&p, &[DOC, ("cookie", &uat)], None, &missing),
            Some(Handshake::ClientUatWithoutSession)
        );
        let suffixed_uat = format!("__client_uat_{SUFFIX}={NOW}");
        assert_eq!(
            ask(&p, &[DOC, ("cookie", &suffixed_uat)], None, &missing),
            Some(Handshake::ClientUatWithoutSession),
            "the instance's suffixed cookie counts"
        );
        assert_eq!(
            ask(
                &p,
                &[DOC, ("cookie", "__client_uat_other123=17")],
                None,
                &missing
            ),
            None
        );
        assert_eq!(
            ask(&p, &[DOC, ("cookie", "__client_uat=0")], None, &missing),
            None
        );
        assert_eq!(
            ask(&p, &[DOC, ("cookie", "__client_uat=17abc")], None, &missing),
            Some(Handshake::ClientUatWithoutSession),
            "parseInt reads the leading digits"
        );
        assert_eq!(
            ask(&p, &[DOC], None, &missing),
            None,
            "no cookies: signed out"
        );
        let only_session = format!("__session={old}");
        assert_eq!(
            ask(&p, &[DOC, ("cookie", &only_session)], None, &expired),
            Some(Handshake::SessionWithoutClientUat)
        );
        assert_eq!(
            ask(&p, &[DOC], Some("a=1&__clerk_handshake=eyJ"), &missing),
            Some(Handshake::Completing)
        );
        assert_eq!(
            ask(&p, &[DOC], Some("__clerk%5Fhandshake=eyJ"), &missing),
            Some(Handshake::Completing),
            "URLSearchParams decodes names"
        );
        assert_eq!(
            ask(&p, &[DOC], Some("__clerk_handshake="), &missing),
            None,
            "empty value"
        );
        assert_eq!(
            ask(
                &p,
                &[DOC, ("cookie", "__clerk_handshake_nonce=n1")],
                None,
                &missing
            ),
            Some(Handshake::Completing)
        );
        // Cookie tossing: two session cookies of one name are refused, never passed.
        let conflict = out(Reason::SessionCookieConflict, cookie);
        assert_eq!(ask(&p, &[DOC, ("cookie", &uat)], None, &conflict), None);
    }

    #[test]
    fn a_valid_session_clerk_would_still_refresh_passes_the_cookie_path_only() {
        let p = prod();
        // Issued before the client's last change (an account switch, an upgrade): Clerk
        // handshakes before it even checks the signature.
        let stale = session(NOW - 10);
        let c = format!("__session={stale}; __client_uat={NOW}");
        assert_eq!(
            ask(&p, &[DOC, ("cookie", &c)], None, &signed_in()),
            Some(Handshake::IatBeforeClientUat)
        );
        let invalid = out(Reason::TokenInvalidSignature, Some(TokenSource::Cookie));
        assert_eq!(
            ask(&p, &[DOC, ("cookie", &c)], None, &invalid),
            Some(Handshake::IatBeforeClientUat),
            "read before verification"
        );
        // The same token with __client_uat older than it: Clerk signs it in.
        let fine = format!("__session={stale}; __client_uat={}", NOW - 20);
        assert_eq!(ask(&p, &[DOC, ("cookie", &fine)], None, &signed_in()), None);
        // A valid session cookie without __client_uat.
        let no_uat = format!("__session={stale}");
        assert_eq!(
            ask(&p, &[DOC, ("cookie", &no_uat)], None, &signed_in()),
            Some(Handshake::SessionWithoutClientUat)
        );
        // The header path never reads __client_uat: a valid Bearer token is signed in.
        let bearer = format!("Bearer {stale}");
        assert_eq!(
            ask(
                &p,
                &[DOC, ("authorization", &bearer), ("cookie", &c)],
                None,
                &signed_in()
            ),
            None
        );
        // Another scheme is no header token for Clerk: it reads the cookies.
        assert_eq!(
            ask(
                &p,
                &[DOC, ("authorization", "Basic dXNlcg=="), ("cookie", &c)],
                None,
                &out(Reason::TokenMissing, None)
            ),
            Some(Handshake::IatBeforeClientUat)
        );
        // Not a document request: decided by policy.
        assert_eq!(
            clerk_would_handshake(
                &Method::GET,
                &h(&[("sec-fetch-dest", "empty"), ("cookie", &c)]),
                None,
                &p,
                &signed_in(),
                NOW
            ),
            None
        );
    }

    #[test]
    fn the_loop_guard_comes_after_a_handshake_is_resolved() {
        let p = prod();
        let old = session(NOW - 120);
        let looping = format!(
            "__session={old}; __client_uat={}; __clerk_redirect_count=3",
            NOW - 200
        );
        let expired = out(Reason::TokenExpired, Some(TokenSource::Cookie));
        assert_eq!(
            ask(&p, &[DOC, ("cookie", &looping)], None, &expired),
            None,
            "Clerk's loop guard"
        );
        assert_eq!(
            ask(
                &p,
                &[DOC, ("cookie", &looping)],
                Some("__clerk_handshake=eyJ"),
                &expired
            ),
            Some(Handshake::Completing),
            "the way back is resolved first"
        );
        let twice = looping.replace("count=3", "count=2");
        assert_eq!(
            ask(&p, &[DOC, ("cookie", &twice)], None, &expired),
            Some(Handshake::Expired)
        );
        let spelled = looping.replace("count=3", "count=3.0");
        assert_eq!(
            ask(&p, &[DOC, ("cookie", &spelled)], None, &expired),
            None,
            "Number(\"3.0\") is 3"
        );
    }

    #[test]
    fn development_rules_apply_only_to_a_development_instance() {
        let dev = Instance {
            development: Some(true),
            ..prod()
        };
        let missing = out(Reason::TokenMissing, None);
        assert_eq!(
            ask(&dev, &[DOC], Some("__clerk_db_jwt=x"), &missing),
            Some(Handshake::DevBrowserSync)
        );
        assert_eq!(
            ask(&dev, &[DOC], Some("__clerk_db_jwt"), &missing),
            Some(Handshake::DevBrowserSync),
            "has()"
        );
        assert_eq!(
            ask(&dev, &[DOC], None, &missing),
            Some(Handshake::DevBrowserMissing)
        );
        assert_eq!(
            ask(
                &dev,
                &[DOC, ("cookie", "__clerk_db_jwt=dvb_1")],
                None,
                &missing
            ),
            None,
            "with a dev browser, the production rules"
        );
        // Production, or an instance Portier does not know: the parameter means nothing.
        assert_eq!(
            ask(&prod(), &[DOC], Some("__clerk_db_jwt=x"), &missing),
            None
        );
        assert_eq!(ask(&prod(), &[DOC], None, &missing), None);
        let unknown = Instance {
            development: None,
            ..prod()
        };
        assert_eq!(
            ask(&unknown, &[DOC], Some("__clerk_db_jwt=x"), &missing),
            None
        );
        assert_eq!(ask(&unknown, &[DOC], None, &missing), None);
    }

    #[test]
    fn which_cookies_clerk_reads_plain_or_suffixed() {
        let p = prod();
        let fresh = session(NOW - 5);
        let stale = session(NOW - 100);
        // Both sets signed in, the plain token newer: Clerk reads the plain set.
        let c = format!("__session={fresh}; __client_uat={}; __session_{SUFFIX}={stale}; __client_uat_{SUFFIX}={NOW}", NOW - 50);
        assert_eq!(ask(&p, &[DOC, ("cookie", &c)], None, &signed_in()), None);
        // The plain token belongs to another instance: the suffixed set, whose token predates
        // its __client_uat.
        let foreign = jwt(
            json!({"typ": "JWT"}),
            json!({"iss": "https://clerk.other.test", "iat": NOW}),
        );
        let c =
            format!("__session={foreign}; __session_{SUFFIX}={stale}; __client_uat_{SUFFIX}={NOW}");
        assert_eq!(
            ask(&p, &[DOC, ("cookie", &c)], None, &signed_in()),
            Some(Handshake::IatBeforeClientUat)
        );
        // A plain token without iss: the plain set (here without __client_uat).
        let no_iss = jwt(json!({"typ": "JWT"}), json!({"iat": NOW}));
        let c =
            format!("__session={no_iss}; __session_{SUFFIX}={stale}; __client_uat_{SUFFIX}={NOW}");
        assert_eq!(
            ask(&p, &[DOC, ("cookie", &c)], None, &signed_in()),
            Some(Handshake::SessionWithoutClientUat)
        );
        // The suffixed uat says signed out, the plain one signed in: plain.
        let c = format!(
            "__session={fresh}; __client_uat={}; __client_uat_{SUFFIX}=0",
            NOW - 50
        );
        assert_eq!(ask(&p, &[DOC, ("cookie", &c)], None, &signed_in()), None);
        // Without a suffix, only the plain names exist.
        let plain_only = Instance {
            cookie_suffix: None,
            ..prod()
        };
        let c = format!("__session_{SUFFIX}={stale}; __client_uat_{SUFFIX}={NOW}");
        assert_eq!(
            ask(
                &plain_only,
                &[DOC, ("cookie", &c)],
                None,
                &out(Reason::TokenMissing, None)
            ),
            None
        );
    }

    #[test]
    fn clerks_number_and_issuer_readings() {
        assert_eq!(
            without_schemes("https://clerk.portier.test"),
            "clerk.portier.test"
        );
        assert_eq!(without_schemes("HTTP://a.b/HTTPS://c"), "a.b/c");
        assert_eq!(
            without_schemes("htthttps://ps://x"),
            "https://x",
            "one pass"
        );
        assert_eq!(js_parse_int(" 17abc"), 17);
        assert_eq!(js_parse_int("0x10"), 16);
        assert_eq!(js_parse_int("-5"), -5);
        assert_eq!(js_parse_int("abc"), 0);
        assert_eq!(js_number(" 3 "), 3.0);
        assert_eq!(js_number("0x3"), 3.0);
        assert_eq!(js_number("3abc"), 0.0);
        assert_eq!(js_number("Infinity"), 0.0);
    }

    #[test]
    fn a_token_portier_did_not_verify_is_judged_by_its_times() {
        let p = prod();
        // Portier verified the suffixed token; Clerk reads the plain one, which expired.
        let expired = session(NOW - 120);
        let fresh = session(NOW - 5);
        let c = format!("__session={expired}; __client_uat={}; __session_{SUFFIX}={fresh}; __client_uat_{SUFFIX}=0", NOW - 200);
        assert_eq!(
            ask(&p, &[DOC, ("cookie", &c)], None, &signed_in()),
            Some(Handshake::Expired)
        );
    }

    #[test]
    fn only_document_gets_are_handshaken_and_the_header_path_ignores_cookies() {
        let p = prod();
        let old = session(NOW - 120);
        let c = format!("__session={old}; __client_uat={}", NOW - 200);
        let both = ("cookie", c.as_str());
        let expired = out(Reason::TokenExpired, Some(TokenSource::Cookie));
        let ask = |m: Method, hs: &[(&str, &str)], a: &Authn| {
            clerk_would_handshake(&m, &h(hs), Some("__clerk_handshake=x"), &p, a, NOW)
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
        let bearer = format!("Bearer {old}");
        let header = out(Reason::TokenExpired, Some(TokenSource::Header));
        assert_eq!(
            ask(Method::GET, &[DOC, ("authorization", &bearer)], &header),
            Some(Handshake::Expired),
            "query ignored"
        );
        assert_eq!(
            ask(
                Method::GET,
                &[DOC, ("authorization", &bearer)],
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
    fn next_data_requests_belong_to_the_page_nextjs_renders() {
        let page = |p: &str| match data_request(p) {
            Some(DataRequest::Page(p)) => Some(p),
            _ => None,
        };
        // Next.js 16 `NextDataPathnameNormalizer` + `denormalizePagePath`.
        for (path, want) in [
            ("/_next/data/b1/dashboard.json", "/dashboard"),
            ("/_next/data/b1/a/b.json", "/a/b"),
            ("/_next/data/b1/index.json", "/"),
            ("/_next/data/b1/.json", "/"),
            ("/_next/data/b1/index/.json", "/"),
            ("/_next/data/b1/blog/index.json", "/blog/index"),
            (
                "/_next/data/b1/index/images/generate.json",
                "/images/generate",
            ),
            ("/_next/data/b1/index/index.json", "/index"),
            ("/_next/data/b1/index/[slug].json", "/index/[slug]"),
            ("/_next/data/b1/indexes.json", "/indexes"),
            ("/_next/data/b1/a.json.json", "/a.json"),
        ] {
            assert_eq!(page(path).as_deref(), Some(want), "{path}");
        }
        assert_eq!(
            data_request("/_next/data/b1/(.)photo/x.json"),
            Some(DataRequest::Unclear)
        );
        assert_eq!(data_request("/_next/data//x.json"), None);
        assert_eq!(data_request("/_next/data/b1.json"), None);
        assert_eq!(data_request("/_next/static/x.js"), None);
        assert_eq!(data_request("/_next/data/b1/x.js"), None);
    }

    fn compiled(src: &str) -> crate::policy::PolicySet {
        crate::policy::PolicySet::compile(
            &[(std::path::PathBuf::from("p.toml"), src.to_owned())],
            &["nextjs"],
        )
        .expect("policy")
    }

    #[test]
    fn refusals_become_sign_in_or_upgrade_redirects_only_where_configured() {
        let set = compiled(
            r#"
[[route]]
name = "pro"
path = "/images/generate"
methods = ["GET"]
upstream = "nextjs"
page = true
plan = ["pro", "business"]
"#,
        );
        let route = &set.routes[0];
        let pages = PagesConfig {
            sign_in_url: Some("/sign-in".into()),
            upgrade_url: Some("/pricing".into()),
            ..PagesConfig::default()
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
    fn a_page_route_can_name_its_own_redirects() {
        let set = compiled(
            r#"
[[route]]
name = "studio"
path = "/studio/{rest..}"
methods = ["GET"]
upstream = "nextjs"
page = true
plan = ["studio"]
sign_in_url = "https://accounts.example.com/sign-in"
upgrade_url = "/studio/plans?from=portier"
"#,
        );
        let route = &set.routes[0];
        let pages = PagesConfig {
            sign_in_url: Some("/sign-in".into()),
            upgrade_url: Some("/pricing".into()),
            public_origin: Some("https://app.example.com".into()),
            ..PagesConfig::default()
        };
        assert_eq!(
            refusal_redirect(&pages, route, Reason::TokenExpired, "/studio/a").as_deref(),
            Some("https://accounts.example.com/sign-in?redirect_url=https%3A%2F%2Fapp.example.com%2Fstudio%2Fa")
        );
        assert_eq!(
            refusal_redirect(&pages, route, Reason::PlanRequired, "/studio/a").as_deref(),
            Some("/studio/plans?from=portier&required=studio&redirect_url=https%3A%2F%2Fapp.example.com%2Fstudio%2Fa")
        );
        // Without [pages] at all, the route's own URLs still apply.
        assert!(refusal_redirect(
            &PagesConfig::default(),
            route,
            Reason::TokenMissing,
            "/studio/a"
        )
        .is_some_and(|l| l.starts_with("https://accounts.example.com/sign-in?")));
    }

    #[test]
    fn bad_redirect_targets_are_refused_with_their_place() {
        for bad in [
            "//evil.com/x",
            "/\\evil.com",
            "http://evil.com/x",
            "evil.com",
            "javascript:alert(1)",
            "/sign in",
        ] {
            assert!(check_redirect_target(bad).is_err(), "{bad}");
        }
        for good in [
            "/sign-in",
            "/pricing?from=portier",
            "https://accounts.example.com/sign-in",
        ] {
            assert!(check_redirect_target(good).is_ok(), "{good}");
        }
        let err = crate::policy::PolicySet::compile(
            &[(
                std::path::PathBuf::from("p.toml"),
                r#"
[[route]]
name = "a"
path = "/a"
methods = ["GET"]
upstream = "nextjs"
page = true
sign_in_url = "//evil.com"

[[route]]
name = "b"
path = "/b"
methods = ["GET"]
upstream = "nextjs"
upgrade_url = "/pricing"
"#
                .to_owned(),
            )],
            &["nextjs"],
        )
        .expect_err("bad URLs")
        .to_string();
        assert!(
            err.contains("p.toml:8:15: route.sign_in_url: \"//evil.com\": a path on this site"),
            "{err}"
        );
        assert!(
            err.contains("p.toml:15:15: route.upgrade_url: only used with page = true"),
            "{err}"
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
        // The way back is the canonical path: `//evil.com` collapses to `/evil.com`.
        for raw in ["//evil.com", "///evil.com/x", "//dashboard"] {
            let canonical = crate::path::canonicalize(raw).expect("canonical");
            let back = back_target(&canonical, Some("a=1"));
            assert!(
                back.starts_with('/') && !back.starts_with("//"),
                "{raw} -> {back}"
            );
        }
        assert_eq!(back_target("/a", None), "/a");
    }
}
