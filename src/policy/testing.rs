//! Policy tests: cases in TOML (`policies/tests/*.toml`) that state a request and a caller and
//! the decision expected. `portier test` runs them through [`super::decide`], the function the
//! proxy runs, so a passing suite says what production will do.
//!
//! ```toml
//! [[case]]
//! name = "another user's job is refused"
//! method = "GET"
//! path = "/api/jobs/user_b/1"
//! claims = { sub = "user_a", pla = "u:pro" }   # signed in with these claims
//! expect = "deny"
//! reason = "not_owner"
//! ```
//! Without `claims` the caller is signed out (`signed_out` names why, default `token_missing`).
//! Paths are decided as the proxy decides them: `/_next/data/<build>/<page>.json` by the route
//! of the page Next.js renders for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};
use toml::Spanned;

use super::{decide, Authn, Decision, Handshake, PolicySet, RequestFacts};
use crate::auth::{Identity, TokenSource};
use crate::diag::{from_toml_error, Diagnostic, Diagnostics};
use crate::error::Reason;
use crate::nextjs::{self, DataRequest};
use crate::path::canonicalize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCases {
    #[serde(default)]
    case: Vec<Spanned<RawCase>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Expect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Source {
    Header,
    Cookie,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    #[serde(default = "default_method")]
    method: String,
    path: String,
    #[serde(default)]
    navigation: bool,
    #[serde(default)]
    claims: Option<toml::Table>,
    #[serde(default)]
    signed_out: Option<String>,
    #[serde(default)]
    token_source: Option<Source>,
    expect: Expect,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    route: Option<String>,
}

fn default_method() -> String {
    "GET".into()
}

/// One case's outcome.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub file: PathBuf,
    pub line: usize,
    pub name: String,
    /// `None` when the case passed; otherwise what differed.
    pub failure: Option<String>,
}

fn reason_by_code(code: &str) -> Option<Reason> {
    Reason::ALL.into_iter().find(|r| r.code() == code)
}

fn to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => Value::from(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
    }
}

/// Reads every `*.toml` in `dir` as test cases.
pub fn load_cases(dir: &Path) -> Result<Vec<(PathBuf, String)>, Diagnostics> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    super::read_dir_sources(dir)
}

/// Runs the cases of every source against `set`.
pub fn run(set: &PolicySet, sources: &[(PathBuf, String)]) -> Result<Vec<CaseResult>, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut results = Vec::new();
    for (file, src) in sources {
        let raw: RawCases = match toml::from_str(src) {
            Ok(r) => r,
            Err(e) => {
                diags.push(from_toml_error(file, src, &e));
                continue;
            }
        };
        let lines = crate::diag::LineIndex::new(src);
        for c in raw.case {
            let line = lines.line(c.span().start);
            let c = c.into_inner();
            let mut bad = |msg: String| diags.push(Diagnostic::line(file, line, "case", msg));
            let want_reason = match &c.reason {
                None => None,
                Some(code) => match reason_by_code(code) {
                    Some(r) => Some(r),
                    None => {
                        bad(format!("{:?}: unknown reason code {code:?}", c.name));
                        continue;
                    }
                },
            };
            let authn = match c.claims {
                Some(t) => {
                    let mut m: Map<String, Value> =
                        t.into_iter().map(|(k, v)| (k, to_json(v))).collect();
                    m.entry("sid").or_insert_with(|| Value::from("sess_test"));
                    m.entry("exp").or_insert_with(|| Value::from(i64::MAX / 2));
                    match Identity::from_claims(m) {
                        Ok(id) => Authn::SignedIn(Arc::new(id)),
                        Err(e) => {
                            bad(format!("{:?}: claims: {e}", c.name));
                            continue;
                        }
                    }
                }
                None => {
                    let reason = match c.signed_out.as_deref().map(reason_by_code) {
                        None => Reason::TokenMissing,
                        Some(Some(r)) => r,
                        Some(None) => {
                            bad(format!("{:?}: unknown signed_out reason", c.name));
                            continue;
                        }
                    };
                    let source = c.token_source.map(|s| match s {
                        Source::Header => TokenSource::Header,
                        Source::Cookie => TokenSource::Cookie,
                    });
                    Authn::SignedOut { reason, source }
                }
            };
            let (route, decision) = match canonicalize(&c.path) {
                Ok(p) => {
                    // A navigation case with an expired/early cookie token stands for the
                    // document request Clerk's middleware would handshake.
                    let handshake = match (&authn, c.navigation) {
                        (
                            Authn::SignedOut {
                                reason,
                                source: Some(TokenSource::Cookie),
                            },
                            true,
                        ) => match reason {
                            Reason::TokenExpired => Some(Handshake::Expired),
                            Reason::TokenNotYetValid => Some(Handshake::NotYetValid),
                            Reason::TokenIatInFuture => Some(Handshake::IatInFuture),
                            _ => None,
                        },
                        _ => None,
                    };
                    let facts = RequestFacts {
                        method: &c.method,
                        navigation: c.navigation,
                        handshake,
                    };
                    // As the proxy decides: page data by the page Next.js renders, which
                    // must be a page route.
                    match nextjs::data_request(&p) {
                        None => decide(set, &p, &facts, &authn),
                        Some(DataRequest::Unclear) => (None, Decision::Deny(Reason::NoRoute)),
                        Some(DataRequest::Page(page)) => match decide(set, &page, &facts, &authn) {
                            (Some(i), _) if !set.routes.get(i).is_some_and(|r| r.is_page()) => {
                                (None, Decision::Deny(Reason::NoRoute))
                            }
                            decided => decided,
                        },
                    }
                }
                Err(_) => (None, Decision::Deny(Reason::BadPath)),
            };
            let route_name = route
                .and_then(|i| set.routes.get(i))
                .map(|r| r.name.as_str());
            let got = match &decision {
                Decision::Allow { .. } => Expect::Allow,
                Decision::Deny(_) => Expect::Deny,
            };
            let mut failure = Vec::new();
            if got != c.expect {
                failure.push(format!("expected {:?}, got {:?}", c.expect, got).to_lowercase());
            }
            if want_reason.is_some() && decision.reason() != want_reason {
                failure.push(format!(
                    "expected reason {}, got {}",
                    want_reason.map_or("none", Reason::code),
                    decision.reason().map_or("none", Reason::code)
                ));
            }
            if let Some(want) = &c.route {
                if route_name != Some(want.as_str()) {
                    failure.push(format!(
                        "expected route {want}, got {}",
                        route_name.unwrap_or("none")
                    ));
                }
            }
            results.push(CaseResult {
                file: file.clone(),
                line,
                name: c.name,
                failure: (!failure.is_empty()).then(|| failure.join("; ")),
            });
        }
    }
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(results)
    }
}
