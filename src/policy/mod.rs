//! Route policies: the TOML files in `policies/`, compiled into an immutable [`PolicySet`]
//! (a segment trie plus route table), and the pure [`evaluate`] that decides a request.
//!
//! Deny by default: a path no route matches is refused, a route is signed-in unless it says
//! `access = "public"`, and every requirement a route lists must hold.

pub mod router;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use crate::auth::{Identity, TokenSource};
use crate::diag::{from_toml_error, Diagnostic, Diagnostics};
use crate::error::Reason;
use crate::path::canonicalize;
use router::{PatSeg, Router, Span};

// === schema (what platform teams write) ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Spanned<String>,
    path: Spanned<String>,
    methods: Spanned<Vec<String>>,
    upstream: Spanned<String>,
    #[serde(default)]
    access: Option<Access>,
    #[serde(default)]
    plan: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    feature: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    org_role: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    org_permission: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    owner: Option<Spanned<String>>,
    #[serde(default)]
    page: bool,
    #[serde(default)]
    claims: Option<Spanned<BTreeMap<String, toml::Value>>>,
}

/// Who may use a route at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Anyone; a valid token still yields identity headers, an invalid one is ignored.
    Public,
    /// A verified session token is required (the default).
    SignedIn,
}

// === compiled form ===

/// HTTP methods a route accepts, as a bit set over the methods Portier proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MethodSet(u8);

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

impl MethodSet {
    pub const ALL: MethodSet = MethodSet(0x7f);

    pub fn bit(method: &str) -> Option<u8> {
        METHODS.iter().position(|m| *m == method).map(|i| 1 << i)
    }
    pub fn contains(self, method: &str) -> bool {
        Self::bit(method).is_some_and(|b| self.0 & b != 0)
    }
    pub fn overlaps(self, other: MethodSet) -> bool {
        self.0 & other.0 != 0
    }
    pub fn names(self) -> Vec<&'static str> {
        METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, m)| *m)
            .collect()
    }
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub file: PathBuf,
    pub line: usize,
    pub pattern: String,
    pub methods: MethodSet,
    pub upstream: String,
    pub access: Access,
    pub plans: Vec<String>,
    pub features: Vec<String>,
    pub org_roles: Vec<String>,
    pub org_permissions: Vec<String>,
    /// Index into the route's parameters of the one that must be the caller's user id.
    pub owner: Option<usize>,
    /// Whether the owner parameter is a tail (`user_x/...` prefix) rather than one segment.
    pub owner_is_tail: bool,
    pub page: bool,
    pub claims: Vec<(String, Value)>,
    pub params: Vec<String>,
}

/// Every route of every policy file, and the router over them. Immutable once built; a reload
/// builds a new one and swaps it in whole.
#[derive(Debug, Default)]
pub struct PolicySet {
    pub routes: Vec<Route>,
    router: Router,
}

/// A route found for a request, with its parameter values.
#[derive(Debug)]
pub struct RouteMatch<'a> {
    pub index: usize,
    pub route: &'a Route,
    pub params: Vec<Span>,
}

impl PolicySet {
    /// Loads and compiles every `*.toml` in `dir`. `upstreams` are the names declared in the
    /// config; a route naming another is an error. All problems are reported at once.
    pub fn load_dir(dir: &Path, upstreams: &[&str]) -> Result<PolicySet, Diagnostics> {
        let mut diags = Diagnostics::default();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect(),
            Err(e) => {
                diags.push(Diagnostic::file(
                    dir,
                    "policies.dir",
                    format!("cannot read: {e}"),
                ));
                return Err(diags);
            }
        };
        files.sort();
        let mut sources = Vec::new();
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(s) => sources.push((f, s)),
                Err(e) => diags.push(Diagnostic::file(&f, "file", format!("cannot read: {e}"))),
            }
        }
        match Self::compile(&sources, upstreams) {
            Ok(set) if !diags.has_errors() => Ok(set),
            Ok(_) => Err(diags),
            Err(more) => {
                diags.extend(more);
                Err(diags.sorted())
            }
        }
    }

    /// Compiles policy sources (`(file name, text)`), collecting every error.
    pub fn compile(
        sources: &[(PathBuf, String)],
        upstreams: &[&str],
    ) -> Result<PolicySet, Diagnostics> {
        let mut diags = Diagnostics::default();
        let mut set = PolicySet::default();
        let mut names: HashMap<String, (PathBuf, usize)> = HashMap::new();
        for (file, src) in sources {
            let raw: RawFile = match toml::from_str(src) {
                Ok(r) => r,
                Err(e) => {
                    diags.push(from_toml_error(file, src, &e));
                    continue;
                }
            };
            for r in raw.route {
                if let Some(route) = compile_route(file, src, r, upstreams, &mut diags) {
                    let (route, segs, path_span) = route;
                    if let Some((f, l)) = names.get(&route.name) {
                        diags.push(Diagnostic::at(
                            file,
                            src,
                            path_span.0,
                            "route.name",
                            format!(
                                "duplicate route name {:?} (first at {}:{})",
                                route.name,
                                f.display(),
                                l
                            ),
                        ));
                        continue;
                    }
                    names.insert(route.name.clone(), (file.clone(), route.line));
                    let idx = set.routes.len();
                    let slot = set.router.slot(&segs);
                    if let Some(&other) = slot
                        .iter()
                        .find(|&&o| set.routes[o].methods.overlaps(route.methods))
                    {
                        let o = &set.routes[other];
                        diags.push(Diagnostic::at(
                            file,
                            src,
                            path_span.1,
                            "route.path",
                            format!(
                                "ambiguous: {:?} matches the same paths and methods as route {:?} ({}:{})",
                                route.pattern,
                                o.name,
                                o.file.display(),
                                o.line
                            ),
                        ));
                        continue;
                    }
                    slot.push(idx);
                    set.routes.push(route);
                }
            }
        }
        if diags.has_errors() {
            Err(diags.sorted())
        } else {
            Ok(set)
        }
    }

    /// The most specific route for a canonical path, regardless of method.
    pub fn lookup<'a>(&'a self, method: &str, path: &str) -> Result<RouteMatch<'a>, Reason> {
        let mut params = Vec::new();
        let slot = self
            .router
            .lookup(path, &mut params)
            .ok_or(Reason::NoRoute)?;
        let index = slot
            .iter()
            .copied()
            .find(|&i| self.routes[i].methods.contains(method))
            .ok_or(Reason::MethodNotAllowed)?;
        Ok(RouteMatch {
            index,
            route: &self.routes[index],
            params,
        })
    }

    /// Methods allowed on the most specific pattern matching `path` (for `Allow` on 405).
    pub fn allowed_methods(&self, path: &str) -> Vec<&'static str> {
        let mut params = Vec::new();
        let mut set = MethodSet::default();
        if let Some(slot) = self.router.lookup(path, &mut params) {
            for &i in slot {
                set.0 |= self.routes[i].methods.0;
            }
        }
        set.names()
    }
}

type Compiled = (Route, Vec<PatSeg>, (usize, usize));

fn compile_route(
    file: &Path,
    src: &str,
    r: RawRoute,
    upstreams: &[&str],
    diags: &mut Diagnostics,
) -> Option<Compiled> {
    let before = diags.0.len();
    let err = |diags: &mut Diagnostics, at: usize, key: &str, msg: String| {
        diags.push(Diagnostic::at(file, src, at, key, msg));
    };
    let name_at = r.name.span().start;
    let name = r.name.into_inner();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        err(
            diags,
            name_at,
            "route.name",
            "must be non-empty letters, digits, '-' or '_'".into(),
        );
    }
    let path_at = r.path.span().start;
    let pattern = r.path.into_inner();
    let (segs, params) = match parse_pattern(&pattern) {
        Ok(v) => v,
        Err(m) => {
            err(diags, path_at, "route.path", m);
            (Vec::new(), Vec::new())
        }
    };
    let methods_at = r.methods.span().start;
    let mut methods = MethodSet::default();
    let raw_methods = r.methods.into_inner();
    if raw_methods.is_empty() {
        err(
            diags,
            methods_at,
            "route.methods",
            "list at least one method, or \"*\"".into(),
        );
    }
    for m in &raw_methods {
        if m == "*" {
            methods = MethodSet::ALL;
        } else if let Some(b) = MethodSet::bit(m) {
            methods.0 |= b;
        } else {
            err(
                diags,
                methods_at,
                "route.methods",
                format!(
                    "unknown method {m:?} (use upper case: {})",
                    METHODS.join(", ")
                ),
            );
        }
    }
    let up_at = r.upstream.span().start;
    let upstream = r.upstream.into_inner();
    if !upstreams.contains(&upstream.as_str()) {
        err(
            diags,
            up_at,
            "route.upstream",
            format!(
                "unknown upstream {upstream:?} (config declares: {})",
                upstreams.join(", ")
            ),
        );
    }
    let access = r.access.unwrap_or(Access::SignedIn);
    let list =
        |diags: &mut Diagnostics, v: Option<Spanned<Vec<String>>>, key: &str| -> Vec<String> {
            let Some(v) = v else { return Vec::new() };
            let at = v.span().start;
            let v = v.into_inner();
            if v.is_empty() || v.iter().any(|s| s.trim().is_empty()) {
                diags.push(Diagnostic::at(
                    file,
                    src,
                    at,
                    key,
                    "must list one or more non-empty names",
                ));
            }
            if access == Access::Public {
                diags.push(Diagnostic::at(
                    file,
                    src,
                    at,
                    key,
                    "a public route cannot have requirements",
                ));
            }
            v
        };
    let plans = list(diags, r.plan, "route.plan");
    let features = list(diags, r.feature, "route.feature");
    let org_roles = list(diags, r.org_role, "route.org_role");
    let org_permissions = list(diags, r.org_permission, "route.org_permission");
    let mut owner = None;
    let mut owner_is_tail = false;
    if let Some(o) = r.owner {
        let at = o.span().start;
        let o = o.into_inner();
        match params.iter().position(|p| *p == o) {
            Some(i) => {
                owner = Some(i);
                owner_is_tail = matches!(segs.last(), Some(PatSeg::Tail(t)) if *t == o);
            }
            None => err(
                diags,
                at,
                "route.owner",
                format!("{o:?} is not a parameter of {pattern:?}"),
            ),
        }
        if access == Access::Public {
            err(
                diags,
                at,
                "route.owner",
                "a public route cannot have requirements".into(),
            );
        }
    }
    let mut claims = Vec::new();
    if let Some(c) = r.claims {
        let at = c.span().start;
        for (k, v) in c.into_inner() {
            let v = match v {
                toml::Value::String(s) => Value::String(s),
                toml::Value::Integer(i) => Value::from(i),
                toml::Value::Boolean(b) => Value::Bool(b),
                _ => {
                    err(
                        diags,
                        at,
                        "route.claims",
                        format!("claim {k:?}: only strings, integers and booleans can be compared"),
                    );
                    continue;
                }
            };
            if k.is_empty() || k.split('.').any(str::is_empty) {
                err(
                    diags,
                    at,
                    "route.claims",
                    format!("claim path {k:?} is not a dotted path"),
                );
            }
            claims.push((k, v));
        }
        if access == Access::Public {
            err(
                diags,
                at,
                "route.claims",
                "a public route cannot have requirements".into(),
            );
        }
    }
    if diags.0.len() > before {
        return None;
    }
    let (line, _) = crate::diag::line_col(src, name_at);
    Some((
        Route {
            name,
            file: file.to_path_buf(),
            line,
            pattern,
            methods,
            upstream,
            access,
            plans,
            features,
            org_roles,
            org_permissions,
            owner,
            owner_is_tail,
            page: r.page,
            claims,
            params,
        },
        segs,
        (name_at, path_at),
    ))
}

fn is_param_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_lowercase() || f == '_')
        && c.all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
}

/// Parses `/api/books/{id}` or `/static/{rest..}` into segments and parameter names.
pub fn parse_pattern(p: &str) -> Result<(Vec<PatSeg>, Vec<String>), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with '/'"));
    }
    if p == "/" {
        return Ok((Vec::new(), Vec::new()));
    }
    if p.ends_with('/') {
        return Err(format!(
            "{p:?}: remove the trailing '/' (matching ignores one)"
        ));
    }
    let mut segs = Vec::new();
    let mut params: Vec<String> = Vec::new();
    let parts: Vec<&str> = p[1..].split('/').collect();
    for (i, s) in parts.iter().enumerate() {
        if s.is_empty() {
            return Err(format!("{p:?} has an empty segment"));
        }
        if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            let (name, tail) = match inner.strip_suffix("..") {
                Some(n) => (n, true),
                None => (inner, false),
            };
            if !is_param_name(name) {
                return Err(format!(
                    "{p:?}: parameter name {name:?} must be lower_snake_case"
                ));
            }
            if params.iter().any(|q| q == name) {
                return Err(format!("{p:?}: parameter {name:?} appears twice"));
            }
            if tail && i + 1 != parts.len() {
                return Err(format!(
                    "{p:?}: a tail wildcard {{{name}..}} must be the last segment"
                ));
            }
            params.push(name.to_string());
            segs.push(if tail {
                PatSeg::Tail(name.into())
            } else {
                PatSeg::Param(name.into())
            });
        } else {
            if s.contains(['{', '}']) {
                return Err(format!("{p:?}: a parameter must be a whole segment"));
            }
            match canonicalize(&format!("/{s}")) {
                Ok(c) if c[1..] == **s => {}
                _ => return Err(format!("{p:?}: segment {s:?} is not in canonical form")),
            }
            segs.push(PatSeg::Static((*s).to_string()));
        }
    }
    Ok((segs, params))
}

// === evaluation (pure: no I/O, no clock) ===

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
    /// A browser page navigation (GET/HEAD with `Sec-Fetch-Mode: navigate` or `Accept: text/html`).
    pub navigation: bool,
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Forward. `identity` is `None` for anonymous public access or a signed-out page pass-through.
    Allow {
        identity: Option<Arc<Identity>>,
        signed_out_page: bool,
    },
    Deny(Reason),
}

/// Decides a matched route for a caller. `path` is the canonical path the match came from.
pub fn evaluate(m: &RouteMatch<'_>, path: &str, req: &RequestFacts<'_>, authn: &Authn) -> Decision {
    let route = m.route;
    let identity = match (route.access, authn) {
        (Access::Public, Authn::SignedIn(id)) => {
            return Decision::Allow {
                identity: Some(id.clone()),
                signed_out_page: false,
            }
        }
        (Access::Public, Authn::SignedOut { .. }) => {
            return Decision::Allow {
                identity: None,
                signed_out_page: false,
            }
        }
        (Access::SignedIn, Authn::SignedIn(id)) => id,
        (Access::SignedIn, Authn::SignedOut { reason, source }) => {
            // Next.js pages: an expired session cookie on a navigation goes through signed out
            // so Clerk's middleware in the app can refresh it (tokens live 60 s).
            let pass = route.page
                && req.navigation
                && *reason == Reason::TokenExpired
                && *source == Some(TokenSource::Cookie);
            return if pass {
                Decision::Allow {
                    identity: None,
                    signed_out_page: true,
                }
            } else {
                Decision::Deny(*reason)
            };
        }
    };
    if let Some(i) = route.owner {
        let (s, e) = m.params.get(i).copied().unwrap_or((0, 0));
        let value = path.get(s..e).unwrap_or("");
        let uid = identity.user_id.as_str();
        let owned = if route.owner_is_tail {
            value
                .strip_prefix(uid)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        } else {
            value == uid
        };
        if !owned {
            return Decision::Deny(Reason::NotOwner);
        }
    }
    if !route.plans.is_empty() && !route.plans.iter().any(|p| identity.has_plan(p)) {
        return Decision::Deny(Reason::PlanRequired);
    }
    if !route.features.is_empty() && !route.features.iter().any(|f| identity.has_feature(f)) {
        return Decision::Deny(Reason::FeatureRequired);
    }
    if !route.org_roles.is_empty() && !route.org_roles.iter().any(|r| identity.has_role(r)) {
        return Decision::Deny(Reason::OrgRoleRequired);
    }
    if !route.org_permissions.is_empty()
        && !route
            .org_permissions
            .iter()
            .any(|p| identity.has_permission(p))
    {
        return Decision::Deny(Reason::OrgPermissionRequired);
    }
    if route
        .claims
        .iter()
        .any(|(k, v)| identity.claim(k) != Some(v))
    {
        return Decision::Deny(Reason::ClaimMismatch);
    }
    Decision::Allow {
        identity: Some(identity.clone()),
        signed_out_page: false,
    }
}

/// Lookup and evaluation in one call: what the proxy and `explain` both run.
pub fn decide(
    set: &PolicySet,
    path: &str,
    req: &RequestFacts<'_>,
    authn: &Authn,
) -> (Option<usize>, Decision) {
    match set.lookup(req.method, path) {
        Ok(m) => (Some(m.index), evaluate(&m, path, req, authn)),
        Err(reason) => (None, Decision::Deny(reason)),
    }
}

#[cfg(test)]
mod tests;
