//! Deciding a request: the pure [`evaluate`] (no I/O, no clock) over a matched route, the
//! caller's authentication and a few request facts. It can record each check it makes into a
//! [`Trace`]; `portier explain` prints exactly that record, so what it shows is what the proxy
//! did, S3 object rules included. The proxy passes [`NoTrace`], which costs nothing.

use std::sync::Arc;

use super::compile::{Access, ObjectRoute, Requirement, Route, RouteKind};
use super::router::Span;
use super::schema::Mode;
use super::{PolicySet, RouteMatch};
use crate::auth::{Identity, TokenSource};
use crate::error::Reason;

/// What authentication concluded before policy runs.
#[derive(Debug, Clone)]
pub enum Authn {
    SignedIn(Arc<Identity>),
    /// No valid session: `reason` is `TokenMissing` or why the token failed.
    SignedOut {
        reason: Reason,
        source: Option<TokenSource>,
    },
}

/// Request facts policy may look at, besides the path.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// A person's navigation ([`crate::admission::pages::is_navigation`]).
    pub navigation: bool,
    /// Clerk's middleware would handshake this document request (or is completing one):
    /// on a page route it passes to the app signed out ([`crate::admission::pages`]).
    pub handshake: Option<Handshake>,
}

/// Why Clerk's middleware would redirect a document request to its handshake (or is
/// completing one); the names are Clerk's `__clerk_hs_reason` values where it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// `__clerk_handshake` / `__clerk_handshake_nonce` in the query or a cookie: the way back
    /// from the Frontend API, resolved by the middleware.
    Completing,
    /// `__clerk_db_jwt` in the query (development instances).
    DevBrowserSync,
    /// `dev-browser-missing`: no `__clerk_db_jwt` cookie or query (development instances).
    DevBrowserMissing,
    /// `session-token-but-no-client-uat`.
    SessionWithoutClientUat,
    /// `client-uat-but-no-session-token`.
    ClientUatWithoutSession,
    /// `session-token-iat-before-client-uat`: the token predates the client's last change
    /// (a sign-in, an account switch), even when it is still valid.
    IatBeforeClientUat,
    /// `session-token-expired-refresh-*`.
    Expired,
    /// `session-token-nbf`.
    NotYetValid,
    /// `session-token-iat-in-the-future`.
    IatInFuture,
}

impl Handshake {
    pub fn describe(self) -> &'static str {
        match self {
            Handshake::Completing => "completing a handshake (__clerk_handshake)",
            Handshake::DevBrowserSync => "dev-browser-sync",
            Handshake::DevBrowserMissing => "dev-browser-missing",
            Handshake::IatBeforeClientUat => "session-token-iat-before-client-uat",
            Handshake::SessionWithoutClientUat => "session-token-but-no-client-uat",
            Handshake::ClientUatWithoutSession => "client-uat-but-no-session-token",
            Handshake::Expired => "session-token-expired",
            Handshake::NotYetValid => "session-token-nbf",
            Handshake::IatInFuture => "session-token-iat-in-the-future",
        }
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Forward. `identity` is `None` for anonymous public access or a signed-out page
    /// pass-through; `shadow` is the reason a shadow rule would have refused.
    Allow {
        identity: Option<Arc<Identity>>,
        /// A page request passed to the app signed out because Clerk's middleware would
        /// handshake it: the refusal it would otherwise get, which replaces any answer that
        /// is neither a redirect nor a page for a session holding the policy.
        signed_out_page: Option<Reason>,
        shadow: Option<Reason>,
    },
    Deny(Reason),
}

impl Decision {
    pub fn allow(identity: Option<Arc<Identity>>) -> Decision {
        Decision::Allow {
            identity,
            signed_out_page: None,
            shadow: None,
        }
    }

    /// The refusal reason, or the shadow reason of an allowed request.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Decision::Deny(r) => Some(*r),
            Decision::Allow { shadow, .. } => *shadow,
        }
    }
}

/// One check of a decision, as `explain` prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    pub check: String,
    pub mode: &'static str,
    pub passed: bool,
    pub reason: Option<&'static str>,
}

impl Step {
    pub fn new(check: impl Into<String>, passed: bool, reason: Option<Reason>) -> Step {
        Step {
            check: check.into(),
            mode: "enforce",
            passed,
            reason: if passed {
                None
            } else {
                reason.map(Reason::code)
            },
        }
    }

    pub fn shadow(mut self, shadow: bool) -> Step {
        if shadow {
            self.mode = "shadow";
        }
        self
    }
}

/// Where [`evaluate`] records its checks. Steps are built lazily, so [`NoTrace`] pays nothing.
pub trait Trace {
    fn step(&mut self, f: impl FnOnce() -> Step);
}

/// The proxy's trace: records nothing.
pub struct NoTrace;

impl Trace for NoTrace {
    #[inline(always)]
    fn step(&mut self, _f: impl FnOnce() -> Step) {}
}

impl Trace for Vec<Step> {
    fn step(&mut self, f: impl FnOnce() -> Step) {
        self.push(f());
    }
}

/// Decides a matched route for a caller. `path` is the canonical path the match came from.
pub fn evaluate(
    m: &RouteMatch<'_>,
    path: &str,
    req: &RequestFacts<'_>,
    authn: &Authn,
    trace: &mut impl Trace,
) -> Decision {
    let route = m.route;
    let Some(access) = route.access() else {
        // Webhook routes: the signature was verified before policy runs; no session is
        // involved.
        trace.step(|| {
            Step::new(
                format!(
                    "access: webhook signature ({}; checked on the body before policy)",
                    route.webhook().unwrap_or("?")
                ),
                true,
                None,
            )
        });
        return Decision::allow(None);
    };
    let shadow_mode = route.mode() == Mode::Shadow;
    let identity = match (access, authn) {
        (_, Authn::SignedIn(id)) => {
            trace.step(|| {
                let a = if access == Access::Public {
                    "access: public"
                } else {
                    "access: signed in"
                };
                Step::new(format!("{a} (caller {})", id.user_id), true, None)
            });
            id
        }
        (Access::Public, Authn::SignedOut { reason, .. }) => {
            trace.step(|| {
                Step::new(
                    format!("access: public (signed out: {})", reason.code()),
                    true,
                    None,
                )
            });
            return Decision::allow(None);
        }
        (Access::SignedIn, Authn::SignedOut { reason, .. }) => {
            trace.step(|| {
                Step::new(
                    format!("access: signed in (signed out: {})", reason.code()),
                    false,
                    Some(*reason),
                )
                .shadow(shadow_mode)
            });
            // A page Clerk's middleware would handshake goes to the app signed out.
            if let Some(pass) = handshake_pass(route, req, *reason, trace) {
                return pass;
            }
            if shadow_mode {
                return Decision::Allow {
                    identity: None,
                    signed_out_page: None,
                    shadow: Some(*reason),
                };
            }
            return Decision::Deny(*reason);
        }
    };
    if let RouteKind::S3Object(obj) = &route.kind {
        // S3 routes are always enforced (compile refuses shadow mode on them).
        if let Some(reason) = object_rules(route, obj, path, &m.params, identity, trace) {
            return Decision::Deny(reason);
        }
    }
    let mut shadow = None;
    for r in &route.requires {
        // On an object route ownership is decided on the decoded key (`object_rules`); an
        // empty key is a listing, scoped to the caller's prefix by the proxy.
        if matches!(route.kind, RouteKind::S3Object(_)) && matches!(r, Requirement::Owner { .. }) {
            continue;
        }
        let ok = r.holds(identity, path, &m.params);
        trace.step(|| {
            Step::new(r.describe(&route.params), ok, Some(r.reason())).shadow(shadow_mode)
        });
        if !ok {
            if !shadow_mode {
                // A valid session Clerk's middleware would still refresh first (its token
                // predates `__client_uat`: an account switch, a new plan): the app answers.
                if let Some(pass) = handshake_pass(route, req, r.reason(), trace) {
                    return pass;
                }
                return Decision::Deny(r.reason());
            }
            shadow.get_or_insert(r.reason());
        }
    }
    for r in &route.shadow {
        let ok = r.holds(identity, path, &m.params);
        trace.step(|| Step::new(r.describe(&route.params), ok, Some(r.reason())).shadow(true));
        if !ok {
            shadow.get_or_insert(r.reason());
        }
    }
    Decision::Allow {
        identity: Some(identity.clone()),
        signed_out_page: None,
        shadow,
    }
}

/// Next.js pages: what Clerk's middleware would answer with its handshake (an expired 60 s
/// token, a first visit after sign-in, a token older than `__client_uat`, the way back from
/// the Frontend API) goes to the app signed out instead of the refusal `reason`, so the
/// session can refresh. The proxy lets only a redirect, or a page for a session that holds
/// this policy, back out; anything else becomes the refusal `reason`.
fn handshake_pass(
    route: &Route,
    req: &RequestFacts<'_>,
    reason: Reason,
    trace: &mut impl Trace,
) -> Option<Decision> {
    let why = req.handshake.filter(|_| route.is_page())?;
    trace.step(|| {
        Step::new(
            format!(
                "page: Clerk's middleware would handshake ({}): passes signed out, its answer \
                 is checked (otherwise {})",
                why.describe(),
                reason.code()
            ),
            true,
            None,
        )
    });
    Some(Decision::Allow {
        identity: None,
        signed_out_page: Some(reason),
        shadow: None,
    })
}

/// The object key of an S3 object route match: the tail parameter, decoded once and checked.
/// `None` when the key is empty (a listing).
pub fn object_key(
    route: &Route,
    path: &str,
    params: &[Span],
) -> Option<Result<String, crate::s3::KeyError>> {
    let &(s, e) = params.get(route.params.len().checked_sub(1)?)?;
    let raw = path.get(s..e)?;
    if raw.is_empty() {
        return None;
    }
    Some(crate::s3::canonical_key(raw))
}

/// Object-route rules beyond the route's requirements: a well-formed key owned by the caller
/// (when the route has an owner), and the rules of its kind folder. An empty key is a list
/// of the caller's own prefix, decided by the proxy.
fn object_rules(
    route: &Route,
    obj: &ObjectRoute,
    path: &str,
    params: &[Span],
    id: &Identity,
    trace: &mut impl Trace,
) -> Option<Reason> {
    let key = match object_key(route, path, params) {
        None => {
            trace.step(|| {
                Step::new(
                    format!("key: none (a listing of {}/ only)", id.user_id),
                    true,
                    None,
                )
            });
            return None;
        }
        Some(Ok(k)) => k,
        Some(Err(e)) => {
            trace.step(|| Step::new(format!("key: {e}"), false, Some(Reason::BadKey)));
            return Some(Reason::BadKey);
        }
    };
    trace.step(|| Step::new(format!("key: {key}"), true, None));
    if obj.owner {
        let ok = crate::s3::owned_by(&key, &id.user_id);
        trace.step(|| {
            Step::new(
                format!("owner: key is under {}/", id.user_id),
                ok,
                Some(Reason::NotOwner),
            )
        });
        if !ok {
            return Some(Reason::NotOwner);
        }
    }
    if obj.kinds.is_empty() {
        return None;
    }
    let kind = crate::s3::kind_folder(&key);
    let Some(rule) = kind.and_then(|k| obj.kinds.get(k)) else {
        trace.step(|| {
            Step::new(
                format!(
                    "kind: {} is not one of {}",
                    kind.unwrap_or("(none)"),
                    obj.kinds.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                false,
                Some(Reason::KindNotAllowed),
            )
        });
        return Some(Reason::KindNotAllowed);
    };
    trace.step(|| Step::new(format!("kind: {}", kind.unwrap_or("")), true, None));
    for r in &rule.requires {
        let ok = r.holds(id, path, params);
        trace.step(|| {
            Step::new(
                format!("kind {}: {}", kind.unwrap_or(""), r.describe(&route.params)),
                ok,
                Some(r.reason()),
            )
        });
        if !ok {
            return Some(r.reason());
        }
    }
    None
}

/// Lookup and evaluation in one call, for `portier test` (the proxy and `explain` take the
/// admission steps of [`crate::admission::front`] first).
pub fn decide(
    set: &PolicySet,
    path: &str,
    req: &RequestFacts<'_>,
    authn: &Authn,
) -> (Option<usize>, Decision) {
    match set.lookup(req.method, path) {
        Ok(m) => (Some(m.index), evaluate(&m, path, req, authn, &mut NoTrace)),
        Err(reason) => (None, Decision::Deny(reason)),
    }
}

/// Why a request gets its decision: the checks [`evaluate`] made, in order, and the decision.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub route: Option<String>,
    pub route_index: Option<usize>,
    pub params: Vec<(String, String)>,
    pub steps: Vec<Step>,
    pub decision: Decision,
}

pub fn explain(set: &PolicySet, path: &str, req: &RequestFacts<'_>, authn: &Authn) -> Explanation {
    let m = match set.lookup(req.method, path) {
        Ok(m) => m,
        Err(reason) => {
            return Explanation {
                route: None,
                route_index: None,
                params: Vec::new(),
                steps: vec![Step::new(
                    format!("route for {} {path}", req.method),
                    false,
                    Some(reason),
                )],
                decision: Decision::Deny(reason),
            }
        }
    };
    let mut steps = Vec::new();
    let decision = evaluate(&m, path, req, authn, &mut steps);
    let route = m.route;
    let params = route
        .params
        .iter()
        .zip(&m.params)
        .map(|(n, &(s, e))| (n.clone(), path.get(s..e).unwrap_or("").to_string()))
        .collect();
    Explanation {
        route: Some(route.name.clone()),
        route_index: Some(m.index),
        params,
        steps,
        decision,
    }
}
