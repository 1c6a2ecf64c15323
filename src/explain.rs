//! `portier explain`: what the proxy would do with one request, step by step. It runs the
//! proxy's own admission functions (canonicalisation, authentication, `policy::evaluate` with
//! its trace, the S3 operation mapping, `prepare_upstream_headers`), never a copy of their
//! logic, so the steps it prints are the ones the proxy takes.

use std::sync::Arc;

use pingora::prelude::RequestHeader;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::admission::upstream::prepare_upstream_headers;
use crate::admission::{self, authenticate, pages};
use crate::auth::{Identity, Verifier};
use crate::config::Credentials;
use crate::error::Reason;
use crate::headers::HeaderGuard;
use crate::path::canonicalize;
use crate::policy::{
    evaluate, object_key, Authn, Decision, PolicySet, RequestFacts, RouteKind, Step,
};

/// Who the request is from.
pub enum ExplainAuth {
    /// Whatever the request's own headers carry (`-H 'Authorization: Bearer ...'`, `--token`).
    FromRequest,
    /// Claims given directly (no signature involved): a signed-in caller.
    Claims(Map<String, Value>),
}

#[derive(Debug, Serialize)]
pub struct ExplainReport {
    pub method: String,
    pub path: String,
    pub canonical_path: Option<String>,
    pub route: Option<String>,
    pub route_location: Option<String>,
    pub params: Vec<(String, String)>,
    pub caller: Option<String>,
    pub steps: Vec<Step>,
    pub decision: &'static str,
    pub status: u16,
    pub reason: Option<&'static str>,
    pub shadow_reason: Option<&'static str>,
    pub upstream: Option<String>,
    pub upstream_headers: Vec<(String, String)>,
    /// What the `x-portier-assertion` sent upstream would say (times and signature aside).
    pub assertion: Option<serde_json::Value>,
    /// A person's refused navigation on a page route: where it is sent (307).
    pub redirect: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("bad request: {0}")]
    Request(String),
    #[error("claims: {0}")]
    Claims(String),
}

/// The request to explain.
pub struct ExplainRequest<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub headers: &'a [(String, String)],
    pub auth: ExplainAuth,
    /// The request body, for routes decided on it (presign, the file API's delete).
    pub body: &'a [u8],
}

/// What the proxy would run with: the policies, verifier and header guard of a config.
pub struct ExplainContext<'a, F: Fn(&str) -> Credentials> {
    pub policies: &'a PolicySet,
    pub verifier: &'a Verifier,
    pub guard: &'a HeaderGuard,
    /// Whether an upstream takes the caller's credentials.
    pub credentials_of: F,
    /// `[limits] max_body_bytes`.
    pub max_body_bytes: u64,
    /// `[limits] max_header_bytes`.
    pub max_header_bytes: usize,
    /// `[assertion]`, when configured: the claims an asserted upstream would get are shown.
    pub assertion: Option<&'a crate::config::AssertionConfig>,
    /// `[pages]`: where refused navigations on page routes are redirected.
    pub pages: &'a crate::config::PagesConfig,
}

pub async fn explain_request<F: Fn(&str) -> Credentials>(
    cx: ExplainContext<'_, F>,
    request: ExplainRequest<'_>,
) -> Result<ExplainReport, ExplainError> {
    let ExplainContext {
        policies,
        verifier,
        guard,
        credentials_of,
        max_body_bytes,
        max_header_bytes,
        assertion,
        pages: pages_config,
    } = cx;
    let ExplainRequest {
        method,
        target,
        headers,
        auth,
        body,
    } = request;
    let mut req = RequestHeader::build(method, target.as_bytes(), None)
        .map_err(|e| ExplainError::Request(e.to_string()))?;
    for (k, v) in headers {
        req.append_header(k.clone(), v.as_str())
            .map_err(|e| ExplainError::Request(format!("header {k}: {e}")))?;
    }
    let raw_path = req.uri.path().to_string();
    let mut report = ExplainReport {
        method: method.to_string(),
        path: target.to_string(),
        canonical_path: None,
        route: None,
        route_location: None,
        params: Vec::new(),
        caller: None,
        steps: Vec::new(),
        decision: "deny",
        status: 0,
        reason: None,
        shadow_reason: None,
        upstream: None,
        upstream_headers: Vec::new(),
        assertion: None,
        redirect: None,
    };
    // The steps before authentication, as the proxy takes them.
    let mut steps: Vec<Step> = Vec::new();
    let front = admission::front(
        admission::FrontConfig {
            policies,
            max_header_bytes,
            max_body_bytes,
            jwks_path: assertion.and_then(|a| a.public_jwks_path.as_deref()),
        },
        method,
        &req.uri,
        &req.headers,
        &mut steps,
    );
    let routed = match front {
        Ok(admission::Front::Routed(r)) => r,
        Ok(admission::Front::Jwks) => {
            report.canonical_path = canonicalize(&raw_path).ok();
            report.steps = steps;
            report.decision = "allow";
            report.status = 200;
            return Ok(report);
        }
        Err(early) => {
            report.canonical_path = early.canonical;
            report.steps = steps;
            report.status = early.reason.status();
            report.reason = Some(early.reason.code());
            return Ok(report);
        }
    };
    let canonical = routed.canonical.clone();
    report.canonical_path = Some(canonical.clone());
    let authn = match auth {
        ExplainAuth::FromRequest => authenticate(verifier, &req.headers).await,
        ExplainAuth::Claims(mut claims) => {
            claims
                .entry("sid")
                .or_insert_with(|| Value::from("sess_explain"));
            claims
                .entry("exp")
                .or_insert_with(|| Value::from(i64::MAX / 2));
            let id =
                Identity::from_claims(claims).map_err(|e| ExplainError::Claims(e.to_string()))?;
            Authn::SignedIn(Arc::new(id))
        }
    };
    report.caller = match &authn {
        Authn::SignedIn(id) => Some(id.user_id.clone()),
        Authn::SignedOut { .. } => None,
    };
    let navigation = routed.m.route.is_page() && pages::is_navigation(&req.method, &req.headers);
    let instance = pages::Instance::of(verifier.settings(), pages_config);
    let route_def = routed.m.route;
    let facts = RequestFacts {
        method,
        navigation,
        handshake: route_def
            .is_page()
            .then(|| {
                pages::clerk_would_handshake(
                    &req.method,
                    &req.headers,
                    req.uri.query(),
                    &instance,
                    &authn,
                    crate::auth::verify::unix_now(),
                )
            })
            .flatten(),
    };
    let mut decision = evaluate(&routed.m, routed.decided(), &facts, &authn, &mut steps);
    if let Decision::Allow {
        signed_out_page, ..
    } = decision
    {
        if let Err(reason) =
            admission::upgrade(route_def, &req.headers, signed_out_page, &mut steps)
        {
            decision = Decision::Deny(reason);
        }
    }
    if let (Decision::Allow { .. }, Some(spec)) = (&decision, &route_def.rate_limit) {
        steps.push(Step::new(
            format!("rate limit {spec}: counted by the running proxy, not here"),
            true,
            None,
        ));
    }
    if let (Decision::Allow { .. }, RouteKind::Webhook { webhook }) = (&decision, &route_def.kind) {
        steps.push(Step::new(
            format!("webhook signature ([webhooks.{webhook}]): checked on the delivery, not here"),
            true,
            None,
        ));
    }
    let params = route_def
        .params
        .iter()
        .zip(&routed.m.params)
        .map(|(n, &(s, e))| {
            (
                n.clone(),
                routed.decided().get(s..e).unwrap_or("").to_string(),
            )
        })
        .collect();
    let mut ex = crate::policy::Explanation {
        route: Some(route_def.name.clone()),
        route_index: Some(routed.m.index),
        params,
        steps,
        decision,
    };
    report.params = ex.params.clone();
    report.route = ex.route.clone();
    let route = ex.route_index.and_then(|i| policies.routes.get(i));
    if let Some(r) = route {
        report.route_location = Some(format!("{}:{}", r.file.display(), r.line));
        report.upstream = Some(r.upstream.clone());
    }
    // Presign and file API routes decide each key on the body, with the same functions.
    if let (Some(r), Decision::Allow { .. }) = (route, &ex.decision) {
        if let Some((check, outcome)) =
            body_decision(policies, r, body, &req, &authn, max_body_bytes)
        {
            match outcome {
                Ok(()) => ex.steps.push(Step::new(check, true, None)),
                Err(reason) => {
                    ex.steps.push(Step::new(check, false, Some(reason)));
                    ex.decision = Decision::Deny(reason);
                }
            }
        }
    }
    // Object routes: the store operation the proxy would perform, from the same function.
    if let (Some(r), Decision::Allow { identity, .. }) = (route, &ex.decision) {
        if let RouteKind::S3Object(obj) = &r.kind {
            if let Ok(m) = policies.lookup(method, &canonical) {
                let key = object_key(r, &canonical, &m.params);
                let object_request = crate::admission::s3::ObjectRequest {
                    method,
                    raw_path: req.uri.path(),
                    query: req.uri.query(),
                    headers: &req.headers,
                    identity: identity.as_deref(),
                };
                let op = crate::admission::s3::operation(
                    obj,
                    key,
                    &object_request,
                    r.max_body_bytes.unwrap_or(max_body_bytes),
                );
                match op {
                    Ok(op) => ex.steps.push(Step::new(
                        format!("s3 operation: {}", op.name()),
                        true,
                        None,
                    )),
                    Err(reason) => {
                        ex.steps
                            .push(Step::new("s3 operation", false, Some(reason)));
                        ex.decision = Decision::Deny(reason);
                    }
                }
            }
        }
    }
    report.steps = ex.steps;
    match &ex.decision {
        Decision::Deny(r) => {
            report.status = r.status();
            report.reason = Some(r.code());
            if let (Some(route), true) = (route, navigation) {
                if route.is_page() {
                    let back = pages::back_target(&canonical, req.uri.query());
                    report.redirect = pages::refusal_redirect(pages_config, route, *r, &back);
                    if report.redirect.is_some() {
                        report.status = 307;
                    }
                }
            }
        }
        Decision::Allow {
            identity, shadow, ..
        } => {
            report.decision = "allow";
            report.status = 200;
            report.shadow_reason = shadow.map(Reason::code);
            let credentials = report
                .upstream
                .as_deref()
                .map_or(Credentials::Strip, &credentials_of);
            let mut up = req.clone();
            if prepare_upstream_headers(
                &mut up,
                guard,
                credentials,
                identity.as_deref(),
                Default::default(),
            )
            .is_ok()
            {
                report.upstream_headers = up
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        let shown = if k == http::header::AUTHORIZATION || k == http::header::COOKIE
                        {
                            "<redacted>".to_string()
                        } else {
                            String::from_utf8_lossy(v.as_bytes()).into_owned()
                        };
                        (k.as_str().to_string(), shown)
                    })
                    .collect();
            }
            if let (Some(a), Some(id), Some(upstream), Some(path)) = (
                assertion,
                identity.as_deref(),
                report.upstream.as_deref(),
                report.canonical_path.as_deref(),
            ) {
                if a.upstreams.iter().any(|u| u == upstream) {
                    let binding = crate::assertion::Binding {
                        upstream,
                        method,
                        path,
                    };
                    report.assertion = Some(crate::assertion::claims_json(a, id, binding));
                }
            }
        }
    }
    Ok(report)
}

/// What a presign or file API route decides on the body (and query), when it is one.
fn body_decision(
    policies: &PolicySet,
    route: &crate::policy::Route,
    body: &[u8],
    req: &RequestHeader,
    authn: &Authn,
    max_body_bytes: u64,
) -> Option<(String, Result<(), Reason>)> {
    use crate::admission::s3;
    use crate::policy::FileApi;
    match &route.kind {
        RouteKind::S3Presign { .. } => Some((
            "presign request: the key is decided by its object route".into(),
            s3::presign(policies, route, body, authn, max_body_bytes).map(|_| ()),
        )),
        RouteKind::S3Api {
            api: FileApi::Delete,
            target,
            ..
        } => Some((
            "delete request: every key is decided by the object route before any is deleted".into(),
            s3::delete_keys(policies, *target, body, authn).map(|_| ()),
        )),
        RouteKind::S3Api {
            api: FileApi::List,
            target,
            ..
        } => Some((
            "list request: user_id is the caller, the kind folder is decided by the object route"
                .into(),
            s3::list_request(policies, *target, req.uri.query(), authn).map(|_| ()),
        )),
        RouteKind::S3Api {
            api: FileApi::Upload,
            ..
        } => {
            let multipart = req
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| multer::parse_boundary(ct).is_ok());
            Some((
                "upload: a multipart form; its s3_key is decided by the object route as the file arrives".into(),
                if multipart { Ok(()) } else { Err(Reason::BadRequest) },
            ))
        }
        _ => None,
    }
}

impl ExplainReport {
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("request   {} {}\n", self.method, self.path));
        if let Some(c) = &self.canonical_path {
            s.push_str(&format!("canonical {c}\n"));
        }
        match (&self.route, &self.route_location) {
            (Some(r), Some(l)) => s.push_str(&format!("route     {r} ({l})\n")),
            _ => s.push_str("route     (none)\n"),
        }
        if !self.params.is_empty() {
            let p: Vec<String> = self
                .params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            s.push_str(&format!("params    {}\n", p.join(", ")));
        }
        s.push_str(&format!(
            "caller    {}\n",
            self.caller.as_deref().unwrap_or("signed out")
        ));
        s.push_str("checks\n");
        for st in &self.steps {
            let mark = if st.passed { "pass" } else { "FAIL" };
            let shadow = if st.mode == "shadow" {
                " (shadow: not enforced)"
            } else {
                ""
            };
            let why = st.reason.map(|r| format!(" -> {r}")).unwrap_or_default();
            s.push_str(&format!("  [{mark}] {}{why}{shadow}\n", st.check));
        }
        s.push_str(&format!(
            "decision  {} {}{}{}\n",
            self.decision.to_uppercase(),
            self.status,
            self.reason.map(|r| format!(" {r}")).unwrap_or_default(),
            self.shadow_reason
                .map(|r| format!(" (shadow rule would refuse: {r})"))
                .unwrap_or_default(),
        ));
        if let Some(to) = &self.redirect {
            s.push_str(&format!(
                "redirect  307 -> {to} (a person's navigation on a page route)\n"
            ));
        }
        if self.decision == "allow" {
            s.push_str(&format!(
                "upstream  {}\n",
                self.upstream.as_deref().unwrap_or("-")
            ));
            s.push_str("headers sent upstream (besides Host and X-Forwarded-For)\n");
            for (k, v) in &self.upstream_headers {
                s.push_str(&format!("  {k}: {v}\n"));
            }
            if let Some(a) = &self.assertion {
                s.push_str(&format!(
                    "  {}: <signed JWT, with iat/exp> {a}\n",
                    crate::assertion::HEADER
                ));
            }
        }
        s
    }
}
