//! Compiling one route: the raw fields ([`super::schema`]) become a [`Route`] whose
//! [`RouteKind`] says what it does (forward, verify a webhook, serve S3 objects, presign), so
//! options that contradict each other (a webhook route that serves the bucket, a shadow-mode
//! S3 route, a public S3 route) are refused here and cannot be represented afterwards.
//! Every problem of a route is reported, not only the first.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use toml::Spanned;

use super::content::ContentType;
use super::router::{PatSeg, Span};
use super::schema::{Mode, RawAccess, RawRequirements, RawRoute, S3Mode};
use super::{Known, MAX_WEBHOOK_BODY};
use crate::auth::Identity;
use crate::diag::{Diagnostic, Diagnostics, LineIndex};
use crate::error::Reason;
use crate::guards::ratelimit::RateSpec;
use crate::path::canonicalize;

/// HTTP methods a route accepts, as a bit set over the methods Portier proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MethodSet(pub(crate) u8);

pub(crate) const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

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
    /// True when the set has a method that changes state.
    pub fn has_writes(self) -> bool {
        ["POST", "PUT", "PATCH", "DELETE"]
            .iter()
            .any(|m| self.contains(m))
    }
}

/// One rule a signed-in caller must satisfy.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    /// The parameter at this index must be the caller's user id (a tail: start with it + `/`).
    Owner { param: usize, tail: bool },
    /// Any of these plans (Clerk `has({ plan })`).
    Plan(Vec<String>),
    /// Any of these features.
    Feature(Vec<String>),
    /// Any of these org roles.
    OrgRole(Vec<String>),
    /// Any of these org permissions.
    OrgPermission(Vec<String>),
    /// A claim (dotted path) equal to a value.
    Claim(String, Value),
}

impl Requirement {
    /// The reason a caller who fails this requirement gets.
    pub fn reason(&self) -> Reason {
        match self {
            Requirement::Owner { .. } => Reason::NotOwner,
            Requirement::Plan(_) => Reason::PlanRequired,
            Requirement::Feature(_) => Reason::FeatureRequired,
            Requirement::OrgRole(_) => Reason::OrgRoleRequired,
            Requirement::OrgPermission(_) => Reason::OrgPermissionRequired,
            Requirement::Claim(..) => Reason::ClaimMismatch,
        }
    }

    /// Whether `id` satisfies this requirement for the matched path.
    pub fn holds(&self, id: &Identity, path: &str, params: &[Span]) -> bool {
        match self {
            Requirement::Owner { param, tail } => {
                let (s, e) = params.get(*param).copied().unwrap_or((0, 0));
                let value = path.get(s..e).unwrap_or("");
                let uid = id.user_id.as_str();
                if *tail {
                    value
                        .strip_prefix(uid)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                } else {
                    value == uid
                }
            }
            Requirement::Plan(p) => p.iter().any(|p| id.has_plan(p)),
            Requirement::Feature(f) => f.iter().any(|f| id.has_feature(f)),
            Requirement::OrgRole(r) => r.iter().any(|r| id.has_role(r)),
            Requirement::OrgPermission(p) => p.iter().any(|p| id.has_permission(p)),
            Requirement::Claim(k, v) => id.claim(k) == Some(v),
        }
    }

    /// A one-line description for `explain` and lints.
    pub fn describe(&self, params: &[String]) -> String {
        match self {
            Requirement::Owner { param, .. } => format!(
                "owner: {{{}}} is the caller's user id",
                params.get(*param).map(String::as_str).unwrap_or("?")
            ),
            Requirement::Plan(p) => format!("plan: any of {}", p.join(", ")),
            Requirement::Feature(f) => format!("feature: any of {}", f.join(", ")),
            Requirement::OrgRole(r) => format!("org_role: any of {}", r.join(", ")),
            Requirement::OrgPermission(p) => format!("org_permission: any of {}", p.join(", ")),
            Requirement::Claim(k, v) => format!("claim: {k} = {v}"),
        }
    }
}

/// Who may use a session route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone; a valid token still yields identity headers, an invalid one is ignored.
    Public,
    /// A verified session token is required (the default).
    SignedIn,
}

/// The rules of one kind folder of an S3 object route.
#[derive(Debug, Clone, PartialEq)]
pub struct KindRule {
    pub requires: Vec<Requirement>,
    pub max_body_bytes: Option<u64>,
    pub content_types: Vec<ContentType>,
}

/// An S3 object route: `/prefix/{key..}` maps onto object keys.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRoute {
    /// The key must start with `<caller's user id>/` (`owner = "key"`).
    pub owner: bool,
    /// Rules per kind folder; when any are listed, other kinds are refused.
    pub kinds: BTreeMap<String, KindRule>,
}

/// What a route does once admitted. Each kind carries only the options that mean something
/// for it.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteKind {
    /// Forwarded to a configured upstream, decided by session policy.
    Proxy {
        access: Access,
        mode: Mode,
        /// A Next.js page: expired-cookie navigations pass through signed out.
        page: bool,
        /// WebSocket upgrades are accepted; after the 101 the connection is a tunnel.
        websocket: bool,
    },
    /// Forwarded after a Standard Webhooks signature check; no session is involved.
    Webhook { webhook: String },
    /// S3 object operations on the configured bucket, always signed in and enforced.
    S3Object(ObjectRoute),
    /// Presigned URLs, decided by the policy of the object route `object_route`.
    S3Presign {
        object_route: String,
        /// Its index in the route table, resolved when the set is compiled.
        target: usize,
    },
    /// The file API (upload, delete, list), served by Portier on the bucket; every key is
    /// decided by the policy of the object route `object_route`.
    S3Api {
        api: FileApi,
        object_route: String,
        target: usize,
    },
}

/// What a file API route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileApi {
    Upload,
    Delete,
    List,
}

impl FileApi {
    /// The operation name for logs and metrics.
    pub fn operation(self) -> &'static str {
        match self {
            FileApi::Upload => "Upload",
            FileApi::Delete => "Delete",
            FileApi::List => "List",
        }
    }
}

/// A page route's own redirect targets for refused navigations; `[pages]` when unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRedirects {
    pub sign_in_url: Option<String>,
    pub upgrade_url: Option<String>,
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub file: std::path::PathBuf,
    pub line: usize,
    pub pattern: String,
    pub methods: MethodSet,
    pub upstream: String,
    pub kind: RouteKind,
    /// Enforced requirements, in evaluation order.
    pub requires: Vec<Requirement>,
    /// Requirements only evaluated and logged.
    pub shadow: Vec<Requirement>,
    pub rate_limit: Option<RateSpec>,
    pub max_body_bytes: Option<u64>,
    pub timeout: Option<Duration>,
    /// Page routes: where refused navigations go, when the route says so.
    pub redirects: PageRedirects,
    pub params: Vec<String>,
    pub(crate) segs: Vec<PatSeg>,
}

impl Route {
    /// Whether a session may be looked at: public routes, S3 routes and session routes do;
    /// webhook routes never do.
    pub fn access(&self) -> Option<Access> {
        match &self.kind {
            RouteKind::Proxy { access, .. } => Some(*access),
            RouteKind::Webhook { .. } => None,
            RouteKind::S3Object(_) | RouteKind::S3Presign { .. } | RouteKind::S3Api { .. } => {
                Some(Access::SignedIn)
            }
        }
    }

    pub fn mode(&self) -> Mode {
        match &self.kind {
            RouteKind::Proxy { mode, .. } => *mode,
            _ => Mode::Enforce,
        }
    }

    pub fn is_page(&self) -> bool {
        matches!(self.kind, RouteKind::Proxy { page: true, .. })
    }

    /// Whether a protocol upgrade may be forwarded on this route.
    pub fn allows_upgrade(&self) -> bool {
        matches!(
            self.kind,
            RouteKind::Proxy {
                websocket: true,
                ..
            }
        )
    }

    pub fn is_public(&self) -> bool {
        self.access() == Some(Access::Public)
    }

    pub fn is_s3(&self) -> bool {
        matches!(
            self.kind,
            RouteKind::S3Object(_) | RouteKind::S3Presign { .. } | RouteKind::S3Api { .. }
        )
    }

    pub fn webhook(&self) -> Option<&str> {
        match &self.kind {
            RouteKind::Webhook { webhook } => Some(webhook),
            _ => None,
        }
    }
}

/// A route's name and the offset where it is written.
pub(super) type NameAt = (String, usize);

/// Where a compiled route's path was written (for the ambiguity check).
pub(super) struct Written {
    pub path_at: usize,
}

pub(super) struct Compiler<'a> {
    pub file: &'a Path,
    pub src: &'a str,
    pub lines: &'a LineIndex,
    pub known: Known<'a>,
    /// The line of the route being compiled (where its name is), for route-level findings.
    pub line: std::cell::Cell<usize>,
}

impl Compiler<'_> {
    fn err(&self, diags: &mut Diagnostics, at: usize, key: &str, msg: impl Into<String>) {
        diags.push(Diagnostic::at(self.file, self.src, at, key, msg.into()));
    }

    fn list(
        &self,
        diags: &mut Diagnostics,
        v: Option<Spanned<Vec<String>>>,
        key: &str,
    ) -> Option<Vec<String>> {
        let v = v?;
        let at = v.span().start;
        let v = v.into_inner();
        if v.is_empty() || v.iter().any(|s| s.trim().is_empty()) {
            self.err(diags, at, key, "must list one or more non-empty names");
        }
        self.declared(diags, key, &v);
        Some(v)
    }

    /// Plans and features must be declared in config.toml when the config declares any.
    fn declared(&self, diags: &mut Diagnostics, key: &str, names: &[String]) {
        let Some(decl) = self.known.declared else {
            return;
        };
        let field = key.rsplit('.').next().unwrap_or(key);
        let (list, code) = match field {
            "plan" => (&decl.plans, "unknown_plan"),
            "feature" => (&decl.features, "unknown_feature"),
            _ => return,
        };
        if list.is_empty() {
            return;
        }
        for n in names {
            if !list.iter().any(|d| d == strip_scope(n)) {
                diags.push(
                    Diagnostic::line(
                        self.file,
                        self.line.get(),
                        key,
                        format!("{n:?} is not declared (declared: {})", list.join(", ")),
                    )
                    .code(code),
                );
            }
        }
    }

    /// Converts one set of requirement fields (the route's own, or its `shadow` table).
    fn requirements(
        &self,
        diags: &mut Diagnostics,
        prefix: &str,
        raw: RawRequirements,
        pattern: &str,
        params: &[String],
        segs: &[PatSeg],
    ) -> Vec<Requirement> {
        let RawRequirements {
            plan,
            feature,
            org_role,
            org_permission,
            owner,
            claims,
        } = raw;
        let mut out = Vec::new();
        if let Some(o) = owner {
            let at = o.span().start;
            let o = o.into_inner();
            match params.iter().position(|p| *p == o) {
                Some(i) => out.push(Requirement::Owner {
                    param: i,
                    tail: matches!(segs.last(), Some(PatSeg::Tail(t)) if *t == o),
                }),
                None => self.err(
                    diags,
                    at,
                    &format!("{prefix}owner"),
                    format!("{o:?} is not a parameter of {pattern:?}"),
                ),
            }
        }
        for (field, v, make) in [
            (
                "plan",
                plan,
                Requirement::Plan as fn(Vec<String>) -> Requirement,
            ),
            ("feature", feature, Requirement::Feature),
            ("org_role", org_role, Requirement::OrgRole),
            ("org_permission", org_permission, Requirement::OrgPermission),
        ] {
            if let Some(list) = self.list(diags, v, &format!("{prefix}{field}")) {
                out.push(make(list));
            }
        }
        if let Some(c) = claims {
            let at = c.span().start;
            for (k, v) in c.into_inner() {
                let v = match v {
                    toml::Value::String(s) => Value::String(s),
                    toml::Value::Integer(i) => Value::from(i),
                    toml::Value::Boolean(b) => Value::Bool(b),
                    _ => {
                        self.err(
                            diags,
                            at,
                            &format!("{prefix}claims"),
                            format!(
                                "claim {k:?}: only strings, integers and booleans can be compared"
                            ),
                        );
                        continue;
                    }
                };
                if k.is_empty() || k.split('.').any(str::is_empty) {
                    self.err(
                        diags,
                        at,
                        &format!("{prefix}claims"),
                        format!("claim path {k:?} is not a dotted path"),
                    );
                }
                out.push(Requirement::Claim(k, v));
            }
        }
        out
    }

    fn methods(
        &self,
        diags: &mut Diagnostics,
        raw: Option<Spanned<Vec<String>>>,
        at: usize,
    ) -> MethodSet {
        let Some(raw) = raw else {
            self.err(
                diags,
                at,
                "route.methods",
                "missing: list the methods, or \"*\"",
            );
            return MethodSet::default();
        };
        let methods_at = raw.span().start;
        let raw = raw.into_inner();
        let mut methods = MethodSet::default();
        if raw.is_empty() {
            self.err(
                diags,
                methods_at,
                "route.methods",
                "list at least one method, or \"*\"",
            );
        }
        for m in &raw {
            if m == "*" {
                methods = MethodSet::ALL;
            } else if let Some(b) = MethodSet::bit(m) {
                methods.0 |= b;
            } else {
                self.err(
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
        methods
    }

    /// Compiles one route. Returns its name and where it is written either way (so duplicate
    /// names are found even on routes with errors), and the route when it has no error.
    pub fn route(
        &self,
        r: RawRoute,
        diags: &mut Diagnostics,
    ) -> (Option<NameAt>, Option<(Route, Written)>) {
        let before = diags.errors();
        let at = r.at;
        let (name, name_at, given) = match r.name {
            Some(n) => {
                let name_at = n.span().start;
                (n.into_inner(), name_at, true)
            }
            None => {
                self.err(
                    diags,
                    at,
                    "route.name",
                    "missing: every route has a unique name",
                );
                (String::new(), at, false)
            }
        };
        self.line.set(self.lines.line(name_at));
        if given
            && (name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            self.err(
                diags,
                name_at,
                "route.name",
                "must be non-empty letters, digits, '-' or '_'",
            );
        }
        let (pattern, path_at) = match r.path {
            Some(p) => {
                let path_at = p.span().start;
                (p.into_inner(), path_at)
            }
            None => {
                self.err(
                    diags,
                    at,
                    "route.path",
                    "missing: the path pattern, e.g. \"/api/books/{id}\"",
                );
                (String::new(), at)
            }
        };
        let (segs, params) = if pattern.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            match parse_pattern(&pattern) {
                Ok(v) => v,
                Err(m) => {
                    self.err(diags, path_at, "route.path", m);
                    (Vec::new(), Vec::new())
                }
            }
        };
        let methods = self.methods(diags, r.methods, at);
        let (upstream, up_at) = match r.upstream {
            Some(u) => {
                let up_at = u.span().start;
                (u.into_inner(), up_at)
            }
            None => {
                self.err(
                    diags,
                    at,
                    "route.upstream",
                    "missing: the upstream this route goes to",
                );
                (String::new(), at)
            }
        };
        let upstreams = self.known.upstreams;
        if !upstream.is_empty() && !upstreams.contains(&upstream.as_str()) {
            diags.push(
                Diagnostic::at(
                    self.file,
                    self.src,
                    up_at,
                    "route.upstream",
                    format!(
                        "unknown upstream {upstream:?} (config declares: {})",
                        upstreams.join(", ")
                    ),
                )
                .code("unknown_upstream"),
            );
        }
        let req_at = r.requirements.first_at();
        let requires = self.requirements(diags, "route.", r.requirements, &pattern, &params, &segs);
        let shadow = r.shadow.map(|s| {
            let s_at = s.span().start;
            (
                s_at,
                self.requirements(
                    diags,
                    "route.shadow.",
                    s.into_inner(),
                    &pattern,
                    &params,
                    &segs,
                ),
            )
        });
        let rate_limit = r.rate_limit.and_then(|rl| {
            let at = rl.span().start;
            match rl.get_ref().parse::<RateSpec>() {
                Ok(spec) => Some(spec),
                Err(e) => {
                    self.err(
                        diags,
                        at,
                        "route.rate_limit",
                        format!("{:?}: {e} (write e.g. \"5/min\", \"100/s\")", rl.get_ref()),
                    );
                    None
                }
            }
        });
        let access = r.access.map(|a| (a.span().start, a.into_inner()));
        let kind = self.kind(
            diags,
            KindInput {
                name_at,
                up_at,
                path_at,
                upstream: &upstream,
                segs: &segs,
                access,
                mode: r.mode.map(|m| (m.span().start, m.into_inner())),
                page: r.page.map(|p| (p.span().start, p.into_inner())),
                websocket: r.websocket.map(|w| (w.span().start, w.into_inner())),
                webhook: r.webhook,
                s3: r.s3.map(|s| (s.span().start, s.into_inner())),
                presign_for: r.presign_for,
                objects: r.objects,
                kinds: r.kinds,
                timeout: r.timeout_ms.as_ref().map(|t| t.span().start),
                has_requirements: req_at,
                has_shadow: shadow.as_ref().map(|s| s.0),
                owner: requires
                    .iter()
                    .any(|q| matches!(q, Requirement::Owner { .. })),
            },
        );
        let max_body_bytes = r.max_body_bytes.map(|m| {
            let at = m.span().start;
            let m = m.into_inner();
            if matches!(kind, Some(RouteKind::Webhook { .. })) && m > MAX_WEBHOOK_BODY {
                self.err(diags, at, "route.max_body_bytes", format!("a webhook route buffers its body to check the signature: at most {MAX_WEBHOOK_BODY}"));
            }
            m
        });
        let is_page = matches!(kind, Some(RouteKind::Proxy { page: true, .. }));
        let mut redirect = |v: Option<Spanned<String>>, key: &str| {
            let v = v?;
            let at = v.span().start;
            let v = v.into_inner();
            if !is_page {
                self.err(diags, at, key, "only used with page = true");
                return None;
            }
            if let Err(e) = crate::nextjs::check_redirect_target(&v) {
                self.err(diags, at, key, format!("{v:?}: {e}"));
                return None;
            }
            Some(v)
        };
        let redirects = PageRedirects {
            sign_in_url: redirect(r.sign_in_url, "route.sign_in_url"),
            upgrade_url: redirect(r.upgrade_url, "route.upgrade_url"),
        };
        let written_name = (!name.is_empty()).then(|| (name.clone(), name_at));
        if diags.errors() > before {
            return (written_name, None);
        }
        let Some(kind) = kind else {
            return (written_name, None);
        };
        let line = self.lines.line(name_at);
        let route = Route {
            name,
            file: self.file.to_path_buf(),
            line,
            pattern,
            methods,
            upstream,
            kind,
            requires,
            shadow: shadow.map(|s| s.1).unwrap_or_default(),
            rate_limit,
            max_body_bytes,
            timeout: r.timeout_ms.map(|t| Duration::from_millis(t.into_inner())),
            redirects,
            params,
            segs,
        };
        (written_name, Some((route, Written { path_at })))
    }

    /// Decides the route's kind from its options, refusing combinations that contradict each
    /// other or would fail open.
    fn kind(&self, diags: &mut Diagnostics, k: KindInput<'_>) -> Option<RouteKind> {
        let s3_upstream = k.upstream == crate::S3_UPSTREAM;
        let access = k.access.map(|(_, a)| a).unwrap_or(RawAccess::SignedIn);
        let only = |diags: &mut Diagnostics, at: usize, key: &str, with: &str| {
            self.err(diags, at, key, format!("only used with {with}"));
        };
        if k.s3.is_some() && !s3_upstream {
            self.err(
                diags,
                k.up_at,
                "route.s3",
                format!("s3 routes use upstream = \"{}\"", crate::S3_UPSTREAM),
            );
        } else if k.s3.is_none() && s3_upstream {
            self.err(
                diags,
                k.up_at,
                "route.s3",
                "a route to the S3 upstream says s3 = \"object\", \"presign\", \"upload\", \"delete\" or \"list\"",
            );
        }
        if k.s3.is_none() {
            if let Some(p) = &k.presign_for {
                only(
                    diags,
                    p.span().start,
                    "route.presign_for",
                    "s3 = \"presign\"",
                );
            }
            if let Some(kinds) = &k.kinds {
                only(diags, kinds.span().start, "route.kinds", "s3 = \"object\"");
            }
        }
        if access != RawAccess::Webhook {
            if let Some(w) = &k.webhook {
                only(
                    diags,
                    w.span().start,
                    "route.webhook",
                    "access = \"webhook\"",
                );
            }
        }
        match (access, k.s3) {
            (RawAccess::Webhook, s3) => {
                if let Some((at, _)) = s3 {
                    // A webhook signature does not say whose keys may be touched.
                    self.err(
                        diags,
                        at,
                        "route.s3",
                        "a webhook route cannot serve the bucket: it has no caller whose keys it could own",
                    );
                }
                if let Some(at) = k.has_requirements {
                    self.err(
                        diags,
                        at,
                        "route.access",
                        "a webhook route cannot have session requirements",
                    );
                }
                if let Some(at) = k.has_shadow {
                    self.err(
                        diags,
                        at,
                        "route.shadow",
                        "a webhook route cannot have session requirements",
                    );
                }
                if let Some((at, Mode::Shadow)) = k.mode {
                    self.err(
                        diags,
                        at,
                        "route.mode",
                        "a webhook route is always enforced: its signature is its only check",
                    );
                }
                if let Some((at, _)) = k.page {
                    only(diags, at, "route.page", "session routes");
                }
                if let Some((at, _)) = k.websocket {
                    only(diags, at, "route.websocket", "session routes to an app");
                }
                let webhook = match k.webhook {
                    Some(w) => {
                        let at = w.span().start;
                        let w = w.into_inner();
                        if !self.known.webhooks.contains(&w.as_str()) {
                            diags.push(
                                Diagnostic::at(
                                    self.file,
                                    self.src,
                                    at,
                                    "route.webhook",
                                    format!(
                                        "unknown webhook {w:?} (config declares: {})",
                                        self.known.webhooks.join(", ")
                                    ),
                                )
                                .code("unknown_webhook"),
                            );
                        }
                        w
                    }
                    None => {
                        self.err(diags, k.name_at, "route.webhook", "access = \"webhook\" needs webhook = \"<name of a [webhooks.<name>] in config.toml>\"");
                        String::new()
                    }
                };
                Some(RouteKind::Webhook { webhook })
            }
            (access, None) => {
                if let (true, Some((at, Mode::Shadow))) = (k.owner, k.mode) {
                    // A dry run of ownership lets anyone reach another user's resources.
                    self.err(
                        diags,
                        at,
                        "route.mode",
                        "a route with owner is always enforced (use [route.shadow] to watch extra requirements)",
                    );
                }
                if let (RawAccess::Public, Some(at)) = (access, k.has_requirements) {
                    self.err(
                        diags,
                        at,
                        "route.access",
                        "a public route cannot have requirements (use [route.shadow] to watch them)",
                    );
                }
                let access = match access {
                    RawAccess::Public => Access::Public,
                    _ => Access::SignedIn,
                };
                Some(RouteKind::Proxy {
                    access,
                    mode: k.mode.map(|(_, m)| m).unwrap_or(Mode::Enforce),
                    page: k.page.is_some_and(|(_, p)| p),
                    websocket: k.websocket.is_some_and(|(_, w)| w),
                })
            }
            (_, Some((s3_at, mode))) => {
                if let Some((at, RawAccess::Public)) = k.access {
                    self.err(
                        diags,
                        at,
                        "route.access",
                        "an s3 route is always signed in: the key decides whose objects are touched",
                    );
                }
                if let Some((at, Mode::Shadow)) = k.mode {
                    // A dry run of ownership would serve other users' objects.
                    self.err(
                        diags,
                        at,
                        "route.mode",
                        "an s3 route is always enforced (use [route.shadow] to watch extra requirements)",
                    );
                }
                if let Some((at, _)) = k.page {
                    only(diags, at, "route.page", "session routes to an app");
                }
                if let Some((at, _)) = k.websocket {
                    only(diags, at, "route.websocket", "session routes to an app");
                }
                if let Some(at) = k.timeout {
                    self.err(
                        diags,
                        at,
                        "route.timeout_ms",
                        "s3 routes use [s3] read_timeout_ms",
                    );
                }
                match mode {
                    S3Mode::Object => {
                        if let Some(o) = &k.objects {
                            only(
                                diags,
                                o.span().start,
                                "route.objects",
                                "the file API's s3 routes",
                            );
                        }
                        self.object_kind(diags, &k, s3_at)
                    }
                    api => {
                        if let Some(kinds) = &k.kinds {
                            only(diags, kinds.span().start, "route.kinds", "s3 = \"object\"");
                        }
                        let target = match (k.presign_for, k.objects, api) {
                            (Some(p), None, S3Mode::Presign) | (None, Some(p), _) => {
                                Some(p.into_inner())
                            }
                            (Some(p), Some(_), _) => {
                                self.err(
                                    diags,
                                    p.span().start,
                                    "route.presign_for",
                                    "give objects or presign_for, not both",
                                );
                                None
                            }
                            (Some(p), None, _) => {
                                only(
                                    diags,
                                    p.span().start,
                                    "route.presign_for",
                                    "s3 = \"presign\" (write objects = ...)",
                                );
                                None
                            }
                            (None, None, _) => {
                                self.err(
                                    diags,
                                    k.name_at,
                                    "route.objects",
                                    "name the s3 object route whose policy decides each key (objects = \"files\")",
                                );
                                None
                            }
                        }?;
                        let api = match api {
                            S3Mode::Presign => {
                                return Some(RouteKind::S3Presign {
                                    object_route: target,
                                    target: usize::MAX,
                                })
                            }
                            S3Mode::Upload => FileApi::Upload,
                            S3Mode::Delete => FileApi::Delete,
                            _ => FileApi::List,
                        };
                        Some(RouteKind::S3Api {
                            api,
                            object_route: target,
                            target: usize::MAX,
                        })
                    }
                }
            }
        }
    }

    fn object_kind(
        &self,
        diags: &mut Diagnostics,
        k: &KindInput<'_>,
        _s3_at: usize,
    ) -> Option<RouteKind> {
        if !matches!(k.segs.last(), Some(PatSeg::Tail(_))) {
            self.err(
                diags,
                k.path_at,
                "route.path",
                "an s3 object route ends with the key: /prefix/{key..}",
            );
        }
        if k.segs
            .iter()
            .rev()
            .skip(1)
            .any(|s| !matches!(s, PatSeg::Static(_)))
        {
            self.err(
                diags,
                k.path_at,
                "route.path",
                "an s3 object route is a static prefix followed by {key..}",
            );
        }
        if let Some(p) = &k.presign_for {
            self.err(
                diags,
                p.span().start,
                "route.presign_for",
                "only used with s3 = \"presign\"",
            );
        }
        if !k.owner {
            // Left out, every signed-in caller would reach every user's objects (and the file
            // API routes that defer to this one would too).
            self.err(
                diags,
                k.name_at,
                "route.owner",
                "an s3 object route must own its keys: write owner = \"key\" (the key must start with the caller's user id)",
            );
        }
        let mut kinds = BTreeMap::new();
        if let Some(ks) = &k.kinds {
            for (name, kind) in ks.get_ref() {
                let at = kind.span().start;
                let kind = kind.get_ref();
                let mut requires = Vec::new();
                for (field, list, make) in [
                    (
                        "plan",
                        &kind.plan,
                        Requirement::Plan as fn(Vec<String>) -> Requirement,
                    ),
                    ("feature", &kind.feature, Requirement::Feature),
                ] {
                    if let Some(list) = list {
                        let key = format!("route.kinds.{name}.{field}");
                        if list.is_empty() || list.iter().any(|s| s.trim().is_empty()) {
                            self.err(diags, at, &key, "must list one or more non-empty names");
                        }
                        self.declared(diags, &key, list);
                        requires.push(make(list.clone()));
                    }
                }
                kinds.insert(
                    name.clone(),
                    KindRule {
                        requires,
                        max_body_bytes: kind.max_body_bytes,
                        content_types: kind.content_types.clone().unwrap_or_default(),
                    },
                );
            }
        }
        Some(RouteKind::S3Object(ObjectRoute {
            owner: k.owner,
            kinds,
        }))
    }
}

/// The options that decide a route's kind.
struct KindInput<'a> {
    name_at: usize,
    up_at: usize,
    path_at: usize,
    upstream: &'a str,
    segs: &'a [PatSeg],
    access: Option<(usize, RawAccess)>,
    mode: Option<(usize, Mode)>,
    page: Option<(usize, bool)>,
    websocket: Option<(usize, bool)>,
    webhook: Option<Spanned<String>>,
    s3: Option<(usize, S3Mode)>,
    presign_for: Option<Spanned<String>>,
    objects: Option<Spanned<String>>,
    kinds: Option<Spanned<BTreeMap<String, Spanned<super::schema::RawKind>>>>,
    timeout: Option<usize>,
    has_requirements: Option<usize>,
    has_shadow: Option<usize>,
    owner: bool,
}

/// A plan or feature name without its Clerk scope (`o:`, `org:`, `u:`, `user:`...).
pub(crate) fn strip_scope(name: &str) -> &str {
    for p in ["organization:", "org:", "o:", "user:", "u:"] {
        if let Some(rest) = name.strip_prefix(p) {
            return rest;
        }
    }
    name
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
