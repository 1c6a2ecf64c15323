//! Route policies: the TOML files in `policies/`, read tolerantly ([`schema`]), compiled into
//! typed routes ([`compile`]) held in an immutable [`PolicySet`] (a segment trie, [`router`],
//! plus the route table), and decided by the pure [`eval::evaluate`].
//!
//! Deny by default: a path no route matches is refused, a route is signed-in unless it says
//! `access = "public"`, and every requirement a route lists must hold.

pub mod compile;
pub mod content;
pub mod eval;
pub mod lint;
pub mod router;
pub mod schema;
pub mod testing;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use compile::{
    parse_pattern, Access, FileApi, KindRule, MethodSet, ObjectRoute, PageRedirects, Requirement,
    Route, RouteKind,
};
pub use content::ContentType;
pub use eval::{
    decide, evaluate, explain, object_key, Authn, Decision, Explanation, Handshake, NoTrace,
    RequestFacts, Step, Trace,
};
pub use schema::{Mode, S3Mode};

use crate::config::{Config, Declared};
use crate::diag::{Diagnostic, Diagnostics, LineIndex};
use crate::error::Reason;
use router::{Router, Span};

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
    /// Declared plan and feature names, checked when given (`portier check`).
    pub declared: Option<&'a Declared>,
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

/// Where a policy set comes from: the one place that knows which names a config offers, so the
/// start, a reload and `portier check` compile against the same upstream list.
pub enum PolicySource<'a> {
    /// `*.toml` in a directory.
    Dir(&'a Path),
    /// Sources already in memory (`portier dev`'s embedded policies, tests).
    Sources(&'a [(PathBuf, String)]),
}

impl PolicySet {
    /// Compiles the policies of `source` against the names `cfg` declares.
    pub fn load_for(cfg: &Config, source: PolicySource<'_>) -> Result<PolicySet, Diagnostics> {
        Self::load_with(cfg, source, &cfg.upstream_names())
    }

    /// Compiles the policies of `source` against `upstreams` (the running ones, on a reload)
    /// and the webhooks `cfg` declares.
    pub fn load_with(
        cfg: &Config,
        source: PolicySource<'_>,
        upstreams: &[&str],
    ) -> Result<PolicySet, Diagnostics> {
        let hooks = cfg.webhook_names();
        let known = Known {
            upstreams,
            webhooks: &hooks,
            declared: None,
        };
        match source {
            PolicySource::Dir(dir) => Self::load_dir_with(dir, known),
            PolicySource::Sources(s) => Self::compile_with(s, known),
        }
    }

    /// The policies directory `cfg` names.
    pub fn load_config_dir(cfg: &Config) -> Result<PolicySet, Diagnostics> {
        Self::load_for(cfg, PolicySource::Dir(&cfg.policies_dir))
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
                ..Known::default()
            },
        )
    }

    pub fn compile_with(
        sources: &[(PathBuf, String)],
        known: Known<'_>,
    ) -> Result<PolicySet, Diagnostics> {
        let (set, diags) = Self::compile_partial(sources, known);
        if diags.has_errors() {
            Err(diags.sorted())
        } else {
            Ok(set)
        }
    }

    /// Compiles what compiles: the set holds every route without an error, and the
    /// diagnostics every problem of every file (for `portier check`, which lints the rest).
    pub fn compile_partial(
        sources: &[(PathBuf, String)],
        known: Known<'_>,
    ) -> (PolicySet, Diagnostics) {
        let mut diags = Diagnostics::default();
        let mut set = PolicySet::default();
        let mut names: HashMap<String, (PathBuf, usize)> = HashMap::new();
        for (file, src) in sources {
            let raw = schema::read_file(file, src, &mut diags);
            let lines = LineIndex::new(src);
            let compiler = compile::Compiler {
                file,
                src,
                lines: &lines,
                known,
                line: std::cell::Cell::new(0),
            };
            for r in raw {
                let (name, compiled) = compiler.route(r, &mut diags);
                if let Some((name, at)) = &name {
                    let at = *at;
                    if let Some((f, l)) = names.get(name) {
                        diags.push(
                            Diagnostic::at(
                                file,
                                src,
                                at,
                                "route.name",
                                format!(
                                    "duplicate route name {name:?} (first at {}:{l})",
                                    f.display()
                                ),
                            )
                            .code("duplicate_name"),
                        );
                        continue;
                    }
                    names.insert(name.clone(), (file.clone(), lines.line(at)));
                }
                let Some((route, written)) = compiled else {
                    continue;
                };
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
                            written.path_at,
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
        set.resolve_presign_targets(&mut diags);
        (set, diags)
    }

    /// Presign and file API routes name their object route; resolve once, so a typo is a
    /// `check` error and a request never searches the route table.
    fn resolve_presign_targets(&mut self, diags: &mut Diagnostics) {
        for i in 0..self.routes.len() {
            let (RouteKind::S3Presign { object_route, .. } | RouteKind::S3Api { object_route, .. }) =
                &self.routes[i].kind
            else {
                continue;
            };
            let name = object_route.clone();
            let found = self
                .routes
                .iter()
                .position(|r| r.name == name && matches!(r.kind, RouteKind::S3Object(_)));
            match found {
                Some(t) => {
                    if let RouteKind::S3Presign { target, .. } | RouteKind::S3Api { target, .. } =
                        &mut self.routes[i].kind
                    {
                        *target = t;
                    }
                }
                None => {
                    let r = &self.routes[i];
                    let key = if matches!(r.kind, RouteKind::S3Presign { .. }) {
                        "route.presign_for"
                    } else {
                        "route.objects"
                    };
                    diags.push(Diagnostic::line(
                        &r.file,
                        r.line,
                        key,
                        format!("{name:?} is not an s3 = \"object\" route"),
                    ));
                }
            }
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

#[cfg(test)]
mod tests;
