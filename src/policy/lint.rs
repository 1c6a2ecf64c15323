//! `portier check` lints over a compiled policy set: mistakes that parse but cannot be what
//! the author meant. Each finding has the route's file and line and a stable code.
//!
//! Reachability is decided by asking the real router: for every route, witness paths are
//! built from its pattern (parameters and tails filled with a segment no static route can
//! contain) and looked up; a route no witness reaches is shadowed.

use std::collections::HashSet;

use super::compile::strip_scope;
use super::router::PatSeg;
use super::{PolicySet, Requirement, Route};
use crate::diag::{Diagnostic, Diagnostics};

pub use crate::config::Declared;

const FRESH: &str = "~portier~";

fn witnesses(route: &Route, max_depth: usize) -> Vec<String> {
    let mut base = String::new();
    let mut tail = false;
    for (i, seg) in route.segs.iter().enumerate() {
        match seg {
            PatSeg::Static(s) => {
                base.push('/');
                base.push_str(s);
            }
            PatSeg::Param(_) => {
                base.push('/');
                base.push_str(&format!("{FRESH}{i}"));
            }
            PatSeg::Tail(_) => tail = true,
        }
    }
    if !tail {
        return vec![if base.is_empty() { "/".into() } else { base }];
    }
    (0..=max_depth + 1)
        .map(|k| {
            let mut p = base.clone();
            for j in 0..k {
                p.push_str(&format!("/{FRESH}t{j}"));
            }
            if p.is_empty() {
                "/".into()
            } else {
                p
            }
        })
        .collect()
}

/// Whether a pattern, on its own, matches a canonical path.
fn pattern_matches(segs: &[PatSeg], path: &str) -> bool {
    let parts: Vec<&str> = crate::path::segments(path).collect();
    let mut i = 0;
    for seg in segs {
        match seg {
            PatSeg::Static(s) => {
                if parts.get(i) != Some(&s.as_str()) {
                    return false;
                }
            }
            PatSeg::Param(_) => {
                if parts.get(i).is_none() {
                    return false;
                }
            }
            PatSeg::Tail(_) => return true,
        }
        i += 1;
    }
    i == parts.len()
}

fn same_rules(a: &Route, b: &Route) -> bool {
    a.access() == b.access()
        && a.requires == b.requires
        && a.mode() == b.mode()
        && std::mem::discriminant(&a.kind) == std::mem::discriminant(&b.kind)
}

/// Next.js page data (`/_next/data/<build>/<page>.json`, and what an App Router RSC request
/// names) belongs to its page: a public tail route that takes it skips the page's rules.
fn lint_page_data(set: &PolicySet, out: &mut Diagnostics) {
    let mut reported = HashSet::new();
    for page in set.routes.iter().filter(|r| r.is_page() && !r.is_public()) {
        let mut p = String::from("/_next/data/~build~");
        for (i, seg) in page.segs.iter().enumerate() {
            p.push('/');
            match seg {
                PatSeg::Static(s) => p.push_str(s),
                PatSeg::Param(_) | PatSeg::Tail(_) => p.push_str(&format!("{FRESH}{i}")),
            }
        }
        if page.segs.is_empty() {
            p.push_str("/index");
        }
        p.push_str(".json");
        let Some(w) = set.winner("GET", &p) else {
            continue;
        };
        let public = &set.routes[w];
        if public.is_public() && reported.insert((w, page.name.as_str())) {
            out.push(
                Diagnostic::line(
                    &public.file,
                    public.line,
                    "route.path",
                    format!(
                        "public route {:?} covers the Next.js page data of {:?} ({}): the page's rules would be skipped; make only /_next/static and /_next/image public",
                        public.name,
                        page.name,
                        p.replace(FRESH, "x").replace("~build~", "<build>")
                    ),
                )
                .warning()
                .code("public_page_data"),
            );
        }
    }
}

/// Every lint: the structural ones and undeclared plan/feature names.
pub fn lint(set: &PolicySet, declared: &Declared) -> Diagnostics {
    let mut out = lint_structure(set);
    out.extend(lint_declared(set, declared));
    out
}

/// Lints about how routes relate (shadowing, overlaps, public writes, page data).
pub fn lint_structure(set: &PolicySet) -> Diagnostics {
    let mut out = Diagnostics::default();
    lint_page_data(set, &mut out);
    let max_depth = set.routes.iter().map(|r| r.segs.len()).max().unwrap_or(0);
    let mut overlap_reported = HashSet::new();
    // Candidates for overlap by first segment: a path can only match patterns whose first
    // segment is that static text or a parameter (keeps `check` linear-ish at 10,000 routes).
    let mut by_first: std::collections::HashMap<&str, Vec<usize>> =
        std::collections::HashMap::new();
    let mut wildcard_first = Vec::new();
    for (i, r) in set.routes.iter().enumerate() {
        match r.segs.first() {
            Some(PatSeg::Static(s)) => by_first.entry(s.as_str()).or_default().push(i),
            _ => wildcard_first.push(i),
        }
    }
    for (idx, route) in set.routes.iter().enumerate() {
        let ws = witnesses(route, max_depth);
        let methods = route.methods.names();
        let reachable = ws
            .iter()
            .any(|w| methods.iter().any(|m| set.winner(m, w) == Some(idx)));
        if !reachable {
            out.push(
                Diagnostic::line(
                    &route.file,
                    route.line,
                    "route.path",
                    format!("route {:?} can never match: more specific routes take every path it covers", route.name),
                )
                .code("shadowed_route"),
            );
        }
        // A more specific route that takes paths of a broader one with other rules.
        for w in &ws {
            for m in &methods {
                if set.winner(m, w) != Some(idx) {
                    continue;
                }
                let first = crate::path::segments(w).next().unwrap_or("");
                let candidates = by_first
                    .get(first)
                    .into_iter()
                    .flatten()
                    .chain(&wildcard_first);
                for &o in candidates {
                    let other = &set.routes[o];
                    if o == idx || !other.methods.contains(m) || !pattern_matches(&other.segs, w) {
                        continue;
                    }
                    if !same_rules(route, other) && overlap_reported.insert((idx, o)) {
                        out.push(
                            Diagnostic::line(
                                &route.file,
                                route.line,
                                "route.path",
                                format!(
                                    "route {:?} overrides {:?} ({}:{}) on paths like {} with different requirements",
                                    route.name,
                                    other.name,
                                    other.file.display(),
                                    other.line,
                                    w.replace(FRESH, "x")
                                ),
                            )
                            .warning()
                            .code("overlapping_routes"),
                        );
                    }
                }
            }
        }
        if route.is_public() && route.is_page() && route.methods.contains("POST") {
            // Server actions are global in Next.js: the `Next-Action` id picks the action,
            // whatever page the POST goes to.
            out.push(
                Diagnostic::line(
                    &route.file,
                    route.line,
                    "route.methods",
                    format!(
                        "public page route {:?} accepts POST: Next.js runs any server action of the app through any page (the Next-Action header names it), so every action can be called signed out here; drop POST or make each action check auth() itself",
                        route.name
                    ),
                )
                .warning()
                .code("public_server_actions"),
            );
        } else if route.is_public() && route.methods.has_writes() {
            out.push(
                Diagnostic::line(
                    &route.file,
                    route.line,
                    "route.methods",
                    format!(
                        "public route {:?} allows write methods ({})",
                        route.name,
                        route.methods.names().join(", ")
                    ),
                )
                .warning()
                .code("public_write"),
            );
        }
    }
    out
}

/// Plan and feature names not declared in config.toml (when it declares any). `portier check`
/// gets these from the compiler instead, so routes with other errors are covered too.
pub fn lint_declared(set: &PolicySet, declared: &Declared) -> Diagnostics {
    let mut out = Diagnostics::default();
    for route in &set.routes {
        for r in route.requires.iter().chain(&route.shadow) {
            let (names, declared_list, code, key) = match r {
                Requirement::Plan(p) => (p, &declared.plans, "unknown_plan", "route.plan"),
                Requirement::Feature(f) => {
                    (f, &declared.features, "unknown_feature", "route.feature")
                }
                _ => continue,
            };
            if declared_list.is_empty() {
                continue;
            }
            for n in names {
                if !declared_list.iter().any(|d| d == strip_scope(n)) {
                    out.push(
                        Diagnostic::line(
                            &route.file,
                            route.line,
                            key,
                            format!(
                                "{:?} is not declared (declared: {})",
                                n,
                                declared_list.join(", ")
                            ),
                        )
                        .code(code),
                    );
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn lints(src: &str, declared: &Declared) -> String {
        let set = PolicySet::compile(&[(PathBuf::from("l.toml"), src.into())], &["app"])
            .unwrap_or_else(|d| panic!("{d}"));
        lint(&set, declared).to_string()
    }

    #[test]
    fn shadowed_tail_route() {
        let out = lints(
            r#"
[[route]]
name = "all"
path = "/x/{rest..}"
methods = ["GET"]
upstream = "app"

[[route]]
name = "root"
path = "/x"
methods = ["GET"]
upstream = "app"

[[route]]
name = "one"
path = "/x/{a}"
methods = ["GET"]
upstream = "app"

[[route]]
name = "deep"
path = "/x/{a}/{rest..}"
methods = ["GET"]
upstream = "app"
"#,
            &Declared::default(),
        );
        assert!(
            out.contains("l.toml:3:1: route.path: route \"all\" can never match"),
            "{out}"
        );
        assert!(out.contains("[shadowed_route]"), "{out}");
        assert_eq!(out.matches("shadowed_route").count(), 1, "{out}");
    }

    #[test]
    fn a_public_tail_route_over_page_data_is_reported() {
        let out = lints(
            r#"
[[route]]
name = "next"
path = "/_next/{rest..}"
methods = ["GET"]
upstream = "app"
access = "public"

[[route]]
name = "dashboard"
path = "/dashboard/{rest..}"
methods = ["GET"]
upstream = "app"
page = true

[[route]]
name = "home"
path = "/"
methods = ["GET"]
upstream = "app"
page = true
access = "public"
"#,
            &Declared::default(),
        );
        assert!(
            out.contains("l.toml:3:1: warning: route.path: public route \"next\" covers the Next.js page data of \"dashboard\" (/_next/data/<build>/dashboard/x1.json)"),
            "{out}"
        );
        assert!(out.contains("[public_page_data]"), "{out}");
        assert_eq!(out.matches("public_page_data").count(), 1, "{out}");
    }

    #[test]
    fn public_pages_that_take_posts_expose_every_server_action() {
        let out = lints(
            r#"
[[route]]
name = "home"
path = "/"
methods = ["GET", "POST"]
upstream = "app"
page = true
access = "public"

[[route]]
name = "dashboard"
path = "/dashboard"
methods = ["GET", "POST"]
upstream = "app"
page = true
"#,
            &Declared::default(),
        );
        assert!(
            out.contains(
                "l.toml:3:1: warning: route.methods: public page route \"home\" accepts POST"
            ),
            "{out}"
        );
        assert_eq!(out.matches("[public_server_actions]").count(), 1, "{out}");
        assert!(
            !out.contains("public_write"),
            "one warning per route: {out}"
        );
    }

    #[test]
    fn method_shadowing_counts_as_never_matching() {
        // POST on /a/{x} always hits the more specific GET-only route (405), never this one.
        let out = lints(
            r#"
[[route]]
name = "broad"
path = "/a/{rest..}"
methods = ["POST"]
upstream = "app"

[[route]]
name = "exact"
path = "/a/{x}"
methods = ["GET"]
upstream = "app"
"#,
            &Declared::default(),
        );
        assert!(
            !out.contains("\"broad\" can never match"),
            "broad still matches /a and /a/x/y: {out}"
        );
    }

    #[test]
    fn overlaps_public_writes_and_undeclared_names() {
        let out = lints(
            r#"
[[route]]
name = "api"
path = "/api/{rest..}"
methods = ["GET", "POST"]
upstream = "app"
plan = ["pro"]

[[route]]
name = "hook"
path = "/api/hook"
methods = ["POST"]
upstream = "app"
access = "public"

[[route]]
name = "gen"
path = "/gen"
methods = ["GET"]
upstream = "app"
plan = ["org:enterprise"]
feature = ["dashbaord"]
"#,
            &Declared {
                plans: vec!["pro".into(), "business".into()],
                features: vec!["dashboard".into()],
            },
        );
        assert!(
            out.contains("l.toml:10:1: warning: route.path: route \"hook\" overrides \"api\""),
            "{out}"
        );
        assert!(out.contains("[overlapping_routes]"), "{out}");
        assert!(out.contains("l.toml:10:1: warning: route.methods: public route \"hook\" allows write methods (POST) [public_write]"), "{out}");
        assert!(
            out.contains("l.toml:17:1: route.plan: \"org:enterprise\" is not declared"),
            "{out}"
        );
        assert!(
            out.contains("l.toml:17:1: route.feature: \"dashbaord\" is not declared"),
            "{out}"
        );
        assert!(!out.contains("\"pro\" is not declared"), "{out}");
    }
}
