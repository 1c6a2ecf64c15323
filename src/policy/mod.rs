//! Route policies: the TOML files in `policies/`, compiled into an immutable [`PolicySet`]
//! (a segment trie plus route table), and the pure [`evaluate`] that decides a request.
//!
//! Deny by default: a path no route matches is refused, a route is signed-in unless it says
//! `access = "public"`, and every requirement a route lists must hold.

pub mod lint;
pub mod router;
pub mod testing;

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
    mode: Option<Mode>,
    #[serde(default)]
    page: bool,
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
    claims: Option<Spanned<BTreeMap<String, toml::Value>>>,
    /// Requirements evaluated and logged but not enforced.
    #[serde(default)]
    shadow: Option<Spanned<RawRequirements>>,
    /// `access = "webhook"`: the name of a `[webhooks.<name>]` in config.toml.
    #[serde(default)]
    webhook: Option<Spanned<String>>,
    /// Per-caller limit such as "5/min" (by user id; by client address on public routes).
    #[serde(default)]
    rate_limit: Option<Spanned<String>>,
    /// Request body limit for this route (overrides `[limits] max_body_bytes`).
    #[serde(default)]
    max_body_bytes: Option<u64>,
    /// Upstream answer timeout for this route (overrides the upstream's read timeout): 504.
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// On the S3 upstream: `"object"` maps the tail parameter onto object keys; `"presign"`
    /// mints presigned URLs for the object route named by `presign_for`.
    #[serde(default)]
    s3: Option<S3Mode>,
    #[serde(default)]
    presign_for: Option<Spanned<String>>,
    /// Per kind folder (`<user>/<kind>/...`) rules of an S3 object route.
    #[serde(default)]
    kinds: Option<Spanned<BTreeMap<String, RawKind>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKind {
    #[serde(default)]
    plan: Option<Vec<String>>,
    #[serde(default)]
    feature: Option<Vec<String>>,
    #[serde(default)]
    max_body_bytes: Option<u64>,
    #[serde(default)]
    content_types: Option<Vec<ContentType>>,
}

/// What an S3 route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum S3Mode {
    Object,
    Presign,
}

/// Content types recognised by their first bytes (magic numbers), never by the client's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentType {
    Png,
    Jpeg,
    Gif,
    Webp,
    Mp4,
    Webm,
    Quicktime,
}

impl ContentType {
    /// Bytes needed to tell every type apart.
    pub const SNIFF_LEN: usize = 16;

    pub fn matches(self, b: &[u8]) -> bool {
        let at = |off: usize, m: &[u8]| b.get(off..off + m.len()) == Some(m);
        match self {
            ContentType::Png => at(0, b"\x89PNG\r\n\x1a\n"),
            ContentType::Jpeg => at(0, b"\xff\xd8\xff"),
            ContentType::Gif => at(0, b"GIF87a") || at(0, b"GIF89a"),
            ContentType::Webp => at(0, b"RIFF") && at(8, b"WEBP"),
            ContentType::Mp4 => at(4, b"ftyp") && !at(8, b"qt  "),
            ContentType::Quicktime => {
                at(4, b"ftypqt  ") || at(4, b"moov") || at(4, b"wide") || at(4, b"mdat")
            }
            ContentType::Webm => at(0, b"\x1a\x45\xdf\xa3"),
        }
    }
}

/// The rules of one kind folder.
#[derive(Debug, Clone, PartialEq)]
pub struct KindRule {
    pub requires: Vec<Requirement>,
    pub max_body_bytes: Option<u64>,
    pub content_types: Vec<ContentType>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRequirements {
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
    /// A webhook signature (Standard Webhooks / Svix) is required instead of a session.
    Webhook,
}

/// Whether a route's rules are enforced or only evaluated and logged (a dry run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Enforce,
    Shadow,
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
    pub mode: Mode,
    pub page: bool,
    /// Enforced requirements, in evaluation order.
    pub requires: Vec<Requirement>,
    /// Requirements only evaluated and logged.
    pub shadow: Vec<Requirement>,
    /// For `access = "webhook"`: which configured webhook secrets verify it.
    pub webhook: Option<String>,
    pub rate_limit: Option<crate::guards::ratelimit::RateSpec>,
    pub max_body_bytes: Option<u64>,
    pub timeout: Option<std::time::Duration>,
    pub s3: Option<S3Mode>,
    /// For `s3 = "presign"`: the object route whose policy decides.
    pub presign_for: Option<String>,
    /// `presign_for` resolved to its route index when the set is compiled.
    pub presign_target: Option<usize>,
    /// For `s3 = "object"`: rules per kind folder; when any are listed, other kinds are refused.
    pub kinds: BTreeMap<String, KindRule>,
    pub params: Vec<String>,
    pub(crate) segs: Vec<PatSeg>,
}

/// Every route of every policy file, and the router over them. Immutable once built; a reload
/// builds a new one and swaps it in whole.
#[derive(Debug, Default)]
pub struct PolicySet {
    pub routes: Vec<Route>,
    router: Router,
}

/// Names from the config that policies may refer to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Known<'a> {
    pub upstreams: &'a [&'a str],
    pub webhooks: &'a [&'a str],
}

/// Largest body a webhook route may buffer: it is read whole to check the signature and
/// replayed to the upstream from Pingora's retry buffer, which holds 64 KiB.
pub const MAX_WEBHOOK_BODY: u64 = 64 * 1024;

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
        Self::load_dir_with(
            dir,
            Known {
                upstreams,
                webhooks: &[],
            },
        )
    }

    pub fn load_dir_with(dir: &Path, known: Known<'_>) -> Result<PolicySet, Diagnostics> {
        let sources = read_dir_sources(dir)?;
        Self::compile_with(&sources, known)
    }

    /// Compiles policy sources (`(file name, text)`), collecting every error.
    pub fn compile(
        sources: &[(PathBuf, String)],
        upstreams: &[&str],
    ) -> Result<PolicySet, Diagnostics> {
        Self::compile_with(
            sources,
            Known {
                upstreams,
                webhooks: &[],
            },
        )
    }

    pub fn compile_with(
        sources: &[(PathBuf, String)],
        known: Known<'_>,
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
            let lines = crate::diag::LineIndex::new(src);
            for r in raw.route {
                let Some((route, (name_at, path_at))) =
                    compile_route(file, src, &lines, r, known, &mut diags)
                else {
                    continue;
                };
                if let Some((f, l)) = names.get(&route.name) {
                    diags.push(
                        Diagnostic::at(
                            file,
                            src,
                            name_at,
                            "route.name",
                            format!(
                                "duplicate route name {:?} (first at {}:{})",
                                route.name,
                                f.display(),
                                l
                            ),
                        )
                        .code("duplicate_name"),
                    );
                    continue;
                }
                names.insert(route.name.clone(), (file.clone(), route.line));
                let idx = set.routes.len();
                let slot = set.router.slot(&route.segs);
                if let Some(&other) = slot
                    .iter()
                    .find(|&&o| set.routes[o].methods.overlaps(route.methods))
                {
                    let o = &set.routes[other];
                    diags.push(
                        Diagnostic::at(
                            file,
                            src,
                            path_at,
                            "route.path",
                            format!(
                                "ambiguous: {:?} matches the same paths and methods as route {:?} ({}:{})",
                                route.pattern,
                                o.name,
                                o.file.display(),
                                o.line
                            ),
                        )
                        .code("ambiguous_route"),
                    );
                    continue;
                }
                slot.push(idx);
                set.routes.push(route);
            }
        }
        // Presign routes name their object route; resolve once, so a typo is a `check` error
        // and a request never searches the route table.
        for i in 0..set.routes.len() {
            let Some(name) = set.routes[i].presign_for.clone() else {
                continue;
            };
            let target = set
                .routes
                .iter()
                .position(|r| r.name == name && r.s3 == Some(S3Mode::Object));
            match target {
                Some(t) => set.routes[i].presign_target = Some(t),
                None => {
                    let r = &set.routes[i];
                    diags.push(Diagnostic::line(
                        &r.file,
                        r.line,
                        "route.presign_for",
                        format!("{name:?} is not an s3 = \"object\" route"),
                    ));
                }
            }
        }
        if diags.has_errors() {
            Err(diags.sorted())
        } else {
            Ok(set)
        }
    }

    /// The most specific route for a canonical path that allows `method`.
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

    /// The route index a lookup would pick, if any (for lints).
    pub fn winner(&self, method: &str, path: &str) -> Option<usize> {
        self.lookup(method, path).ok().map(|m| m.index)
    }
}

/// Reads every `*.toml` directly in `dir` (not subdirectories: `tests/` holds policy tests).
pub fn read_dir_sources(dir: &Path) -> Result<Vec<(PathBuf, String)>, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
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
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(sources)
    }
}

struct Ctx<'a> {
    file: &'a Path,
    src: &'a str,
    pattern: &'a str,
    params: &'a [String],
    segs: &'a [PatSeg],
}

impl Ctx<'_> {
    fn err(&self, diags: &mut Diagnostics, at: usize, key: &str, msg: String) {
        diags.push(Diagnostic::at(self.file, self.src, at, key, msg));
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
            self.err(
                diags,
                at,
                key,
                "must list one or more non-empty names".into(),
            );
        }
        Some(v)
    }

    /// Converts one set of requirement fields (the route's own, or its `shadow` table).
    #[allow(clippy::too_many_arguments)]
    fn requirements(
        &self,
        diags: &mut Diagnostics,
        prefix: &str,
        owner: Option<Spanned<String>>,
        plan: Option<Spanned<Vec<String>>>,
        feature: Option<Spanned<Vec<String>>>,
        org_role: Option<Spanned<Vec<String>>>,
        org_permission: Option<Spanned<Vec<String>>>,
        claims: Option<Spanned<BTreeMap<String, toml::Value>>>,
    ) -> (Vec<Requirement>, Option<usize>) {
        let mut out = Vec::new();
        let mut first_at = None;
        let mut note = |at: usize| {
            first_at.get_or_insert(at);
        };
        if let Some(o) = owner {
            let at = o.span().start;
            note(at);
            let o = o.into_inner();
            match self.params.iter().position(|p| *p == o) {
                Some(i) => out.push(Requirement::Owner {
                    param: i,
                    tail: matches!(self.segs.last(), Some(PatSeg::Tail(t)) if *t == o),
                }),
                None => self.err(
                    diags,
                    at,
                    &format!("{prefix}owner"),
                    format!("{o:?} is not a parameter of {:?}", self.pattern),
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
            if let Some(v) = &v {
                note(v.span().start);
            }
            if let Some(list) = self.list(diags, v, &format!("{prefix}{field}")) {
                out.push(make(list));
            }
        }
        if let Some(c) = claims {
            let at = c.span().start;
            note(at);
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
        (out, first_at)
    }
}

fn compile_route(
    file: &Path,
    src: &str,
    lines: &crate::diag::LineIndex,
    r: RawRoute,
    known: Known<'_>,
    diags: &mut Diagnostics,
) -> Option<(Route, (usize, usize))> {
    let upstreams = known.upstreams;
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
        diags.push(
            Diagnostic::at(
                file,
                src,
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
    let access = r.access.unwrap_or(Access::SignedIn);
    let ctx = Ctx {
        file,
        src,
        pattern: &pattern,
        params: &params,
        segs: &segs,
    };
    let (requires, req_at) = ctx.requirements(
        diags,
        "route.",
        r.owner,
        r.plan,
        r.feature,
        r.org_role,
        r.org_permission,
        r.claims,
    );
    if let (Access::Public, Some(at)) = (access, req_at) {
        err(
            diags,
            at,
            "route.access",
            "a public route cannot have requirements (use [route.shadow] to watch them)".into(),
        );
    }
    if let (Access::Webhook, Some(at)) = (access, req_at) {
        err(
            diags,
            at,
            "route.access",
            "a webhook route cannot have session requirements".into(),
        );
    }
    let webhook = match (access, r.webhook) {
        (Access::Webhook, Some(w)) => {
            let at = w.span().start;
            let w = w.into_inner();
            if !known.webhooks.contains(&w.as_str()) {
                diags.push(
                    Diagnostic::at(
                        file,
                        src,
                        at,
                        "route.webhook",
                        format!(
                            "unknown webhook {w:?} (config declares: {})",
                            known.webhooks.join(", ")
                        ),
                    )
                    .code("unknown_webhook"),
                );
            }
            Some(w)
        }
        (Access::Webhook, None) => {
            err(diags, name_at, "route.webhook", "access = \"webhook\" needs webhook = \"<name of a [webhooks.<name>] in config.toml>\"".into());
            None
        }
        (_, Some(w)) => {
            err(
                diags,
                w.span().start,
                "route.webhook",
                "only used with access = \"webhook\"".into(),
            );
            None
        }
        (_, None) => None,
    };
    if access == Access::Webhook && r.max_body_bytes.is_some_and(|m| m > MAX_WEBHOOK_BODY) {
        err(diags, name_at, "route.max_body_bytes", format!("a webhook route buffers its body to check the signature: at most {MAX_WEBHOOK_BODY}"));
    }
    let rate_limit = r.rate_limit.and_then(|rl| {
        let at = rl.span().start;
        match rl.get_ref().parse::<crate::guards::ratelimit::RateSpec>() {
            Ok(spec) => Some(spec),
            Err(e) => {
                err(
                    diags,
                    at,
                    "route.rate_limit",
                    format!("{:?}: {e} (write e.g. \"5/min\", \"100/s\")", rl.get_ref()),
                );
                None
            }
        }
    });
    let s3_mode = r.s3;
    if s3_mode.is_some() && upstream != crate::S3_UPSTREAM {
        err(
            diags,
            up_at,
            "route.s3",
            format!("s3 routes use upstream = \"{}\"", crate::S3_UPSTREAM),
        );
    }
    if s3_mode.is_none() && upstream == crate::S3_UPSTREAM {
        err(
            diags,
            up_at,
            "route.s3",
            "a route to the S3 upstream says s3 = \"object\" or \"presign\"".into(),
        );
    }
    if s3_mode == Some(S3Mode::Object) && !matches!(segs.last(), Some(PatSeg::Tail(_))) {
        err(
            diags,
            path_at,
            "route.path",
            "an s3 object route ends with the key: /prefix/{key..}".into(),
        );
    }
    if s3_mode == Some(S3Mode::Object)
        && segs
            .iter()
            .rev()
            .skip(1)
            .any(|s| !matches!(s, PatSeg::Static(_)))
    {
        err(
            diags,
            path_at,
            "route.path",
            "an s3 object route is a static prefix followed by {key..}".into(),
        );
    }
    let presign_for = match (s3_mode, r.presign_for) {
        (Some(S3Mode::Presign), Some(p)) => Some(p.into_inner()),
        (Some(S3Mode::Presign), None) => {
            err(
                diags,
                name_at,
                "route.presign_for",
                "name the s3 object route whose policy decides".into(),
            );
            None
        }
        (_, Some(p)) => {
            err(
                diags,
                p.span().start,
                "route.presign_for",
                "only used with s3 = \"presign\"".into(),
            );
            None
        }
        (_, None) => None,
    };
    let mut kinds = BTreeMap::new();
    if let Some(k) = r.kinds {
        let at = k.span().start;
        if s3_mode != Some(S3Mode::Object) {
            err(
                diags,
                at,
                "route.kinds",
                "only used with s3 = \"object\"".into(),
            );
        }
        for (name, kind) in k.into_inner() {
            let mut requires = Vec::new();
            for (field, list, make) in [
                (
                    "plan",
                    kind.plan,
                    Requirement::Plan as fn(Vec<String>) -> Requirement,
                ),
                ("feature", kind.feature, Requirement::Feature),
            ] {
                if let Some(list) = list {
                    if list.is_empty() || list.iter().any(|s| s.trim().is_empty()) {
                        err(
                            diags,
                            at,
                            &format!("route.kinds.{name}.{field}"),
                            "must list one or more non-empty names".into(),
                        );
                    }
                    requires.push(make(list));
                }
            }
            kinds.insert(
                name,
                KindRule {
                    requires,
                    max_body_bytes: kind.max_body_bytes,
                    content_types: kind.content_types.unwrap_or_default(),
                },
            );
        }
    }
    let shadow = match r.shadow {
        None => Vec::new(),
        Some(s) => {
            let s = s.into_inner();
            ctx.requirements(
                diags,
                "route.shadow.",
                s.owner,
                s.plan,
                s.feature,
                s.org_role,
                s.org_permission,
                s.claims,
            )
            .0
        }
    };
    if diags.0.len() > before {
        return None;
    }
    let line = lines.line(name_at);
    Some((
        Route {
            name,
            file: file.to_path_buf(),
            line,
            pattern,
            methods,
            upstream,
            access,
            mode: r.mode.unwrap_or(Mode::Enforce),
            page: r.page,
            requires,
            shadow,
            webhook,
            rate_limit,
            max_body_bytes: r.max_body_bytes.map(|m| {
                if access == Access::Webhook {
                    m.min(MAX_WEBHOOK_BODY)
                } else {
                    m
                }
            }),
            timeout: r.timeout_ms.map(std::time::Duration::from_millis),
            s3: s3_mode,
            presign_for,
            presign_target: None,
            kinds,
            params,
            segs,
        },
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
    /// Forward. `identity` is `None` for anonymous public access or a signed-out page
    /// pass-through; `shadow` is the reason a shadow rule would have refused.
    Allow {
        identity: Option<Arc<Identity>>,
        signed_out_page: bool,
        shadow: Option<Reason>,
    },
    Deny(Reason),
}

impl Decision {
    pub fn allow(identity: Option<Arc<Identity>>) -> Decision {
        Decision::Allow {
            identity,
            signed_out_page: false,
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

/// Decides a matched route for a caller. `path` is the canonical path the match came from.
pub fn evaluate(m: &RouteMatch<'_>, path: &str, req: &RequestFacts<'_>, authn: &Authn) -> Decision {
    let route = m.route;
    let shadow_mode = route.mode == Mode::Shadow;
    let identity = match (route.access, authn) {
        // The proxy verified the webhook signature before policy runs; no session is involved.
        (Access::Webhook, _) => return Decision::allow(None),
        (_, Authn::SignedIn(id)) => id,
        (Access::Public, Authn::SignedOut { .. }) => return Decision::allow(None),
        (Access::SignedIn, Authn::SignedOut { reason, source }) => {
            // Next.js pages: an expired session cookie on a navigation goes through signed out
            // so Clerk's middleware in the app can refresh it (tokens live 60 s).
            if route.page
                && req.navigation
                && *reason == Reason::TokenExpired
                && *source == Some(TokenSource::Cookie)
            {
                return Decision::Allow {
                    identity: None,
                    signed_out_page: true,
                    shadow: None,
                };
            }
            if shadow_mode {
                return Decision::Allow {
                    identity: None,
                    signed_out_page: false,
                    shadow: Some(*reason),
                };
            }
            return Decision::Deny(*reason);
        }
    };
    if route.s3 == Some(S3Mode::Object) {
        if let Some(reason) = object_rules(route, path, &m.params, identity) {
            if !shadow_mode {
                return Decision::Deny(reason);
            }
            return Decision::Allow {
                identity: Some(identity.clone()),
                signed_out_page: false,
                shadow: Some(reason),
            };
        }
    }
    let mut shadow = None;
    for r in &route.requires {
        // On an object route ownership is decided on the decoded key (`object_rules`); an
        // empty key is a listing, scoped to the caller's prefix by the proxy.
        if route.s3 == Some(S3Mode::Object) && matches!(r, Requirement::Owner { .. }) {
            continue;
        }
        if !r.holds(identity, path, &m.params) {
            if !shadow_mode {
                return Decision::Deny(r.reason());
            }
            shadow.get_or_insert(r.reason());
        }
    }
    if shadow.is_none() {
        shadow = route
            .shadow
            .iter()
            .find(|r| !r.holds(identity, path, &m.params))
            .map(Requirement::reason);
    }
    Decision::Allow {
        identity: Some(identity.clone()),
        signed_out_page: false,
        shadow,
    }
}

/// The object key of an S3 object route match: the tail parameter, decoded once and checked.
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
fn object_rules(route: &Route, path: &str, params: &[Span], id: &Identity) -> Option<Reason> {
    let key = match object_key(route, path, params)? {
        Ok(k) => k,
        Err(_) => return Some(Reason::BadKey),
    };
    let owner_required = route
        .requires
        .iter()
        .any(|r| matches!(r, Requirement::Owner { .. }));
    if owner_required && !crate::s3::owned_by(&key, &id.user_id) {
        return Some(Reason::NotOwner);
    }
    if route.kinds.is_empty() {
        return None;
    }
    let Some(rule) = crate::s3::kind_folder(&key).and_then(|k| route.kinds.get(k)) else {
        return Some(Reason::KindNotAllowed);
    };
    rule.requires
        .iter()
        .find(|r| !r.holds(id, path, params))
        .map(Requirement::reason)
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

/// One line of an explanation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    pub check: String,
    pub mode: &'static str,
    pub passed: bool,
    pub reason: Option<&'static str>,
}

/// Why a request gets its decision: every check with pass/fail, then the decision itself,
/// which comes from [`decide`], the function the proxy runs.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub route: Option<String>,
    pub params: Vec<(String, String)>,
    pub steps: Vec<Step>,
    pub decision: Decision,
}

pub fn explain(set: &PolicySet, path: &str, req: &RequestFacts<'_>, authn: &Authn) -> Explanation {
    let (_, decision) = decide(set, path, req, authn);
    let m = match set.lookup(req.method, path) {
        Ok(m) => m,
        Err(reason) => {
            return Explanation {
                route: None,
                params: Vec::new(),
                steps: vec![Step {
                    check: format!("route for {} {path}", req.method),
                    mode: "enforce",
                    passed: false,
                    reason: Some(reason.code()),
                }],
                decision,
            }
        }
    };
    let route = m.route;
    let mode = |shadow: bool| {
        if shadow || route.mode == Mode::Shadow {
            "shadow"
        } else {
            "enforce"
        }
    };
    let params = route
        .params
        .iter()
        .zip(&m.params)
        .map(|(n, &(s, e))| (n.clone(), path.get(s..e).unwrap_or("").to_string()))
        .collect();
    let mut steps = Vec::new();
    let (signed_in, auth_reason) = match authn {
        Authn::SignedIn(id) => (Some(id), None),
        Authn::SignedOut { reason, .. } => (None, Some(*reason)),
    };
    let access = match route.access {
        Access::Public => "access: public".to_string(),
        Access::SignedIn => "access: signed in".to_string(),
        Access::Webhook => format!(
            "access: webhook signature ({}; checked on the body by the proxy)",
            route.webhook.as_deref().unwrap_or("?")
        ),
    };
    steps.push(Step {
        check: match (signed_in, auth_reason) {
            (Some(id), _) => format!("{access} (caller {})", id.user_id),
            (None, Some(r)) => format!("{access} (signed out: {})", r.code()),
            (None, None) => access,
        },
        mode: mode(false),
        passed: route.access == Access::Public || signed_in.is_some(),
        reason: if route.access == Access::Public {
            None
        } else {
            auth_reason.map(Reason::code)
        },
    });
    for (shadow, list) in [(false, &route.requires), (true, &route.shadow)] {
        for r in list {
            let passed = signed_in.is_some_and(|id| r.holds(id, path, &m.params));
            steps.push(Step {
                check: r.describe(&route.params),
                mode: mode(shadow),
                passed,
                reason: (!passed).then(|| r.reason().code()),
            });
        }
    }
    Explanation {
        route: Some(route.name.clone()),
        params,
        steps,
        decision,
    }
}

#[cfg(test)]
mod tests;
