//! The one `ProxyHttp` implementation and the Pingora server around it.
//!
//! Phases: `request_filter` canonicalises the path, finds the route, authenticates and
//! authorizes (answering refusals itself); `upstream_peer` picks a healthy peer of the route's
//! upstream; `upstream_request_filter` rewrites the request to the canonical path, strips
//! spoofable and credential headers and adds identity headers; `fail_to_proxy` turns upstream
//! failures into JSON errors; `logging` writes the access line. The per-request [`Ctx`] carries
//! what earlier phases decided.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::prelude::{HttpPeer, RequestHeader};
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::auth::jwks::{JwksCache, JwksError, JwksSource, KeySet};
use crate::auth::{extract_token, Identity, Verifier};
use crate::config::{Config, Credentials, HealthCheckKind, JwksSourceConfig, UpstreamConfig};
use crate::diag::Diagnostics;
use crate::error::Reason;
use crate::headers::{strip_clerk_cookies, HeaderGuard};
use crate::path::canonicalize;
use crate::policy::{decide, Access, Authn, Decision, PolicySet, RequestFacts};

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("environment variable {0} is not set (named in config)")]
    MissingEnv(String),
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("signing keys: {0}")]
    Jwks(#[from] JwksError),
    #[error("policies:\n{0}")]
    Policies(Diagnostics),
    #[error("upstream {0}: {1}")]
    Upstream(String, String),
    #[error("pingora: {0}")]
    Pingora(String),
}

/// An upstream with its peers and their health.
pub struct Upstream {
    pub config: UpstreamConfig,
    lb: Arc<LoadBalancer<RoundRobin>>,
}

/// Shared, long-lived state of the proxy.
pub struct Gateway {
    policies: ArcSwap<PolicySet>,
    pub verifier: Arc<Verifier>,
    upstreams: HashMap<String, Arc<Upstream>>,
    guard: HeaderGuard,
}

impl Gateway {
    /// The policy set new requests are decided by.
    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.load_full()
    }

    /// Atomically replaces the policy set; requests in flight keep the one they started with.
    pub fn swap_policies(&self, set: PolicySet) {
        self.policies.store(Arc::new(set));
    }

    /// Authenticates the request: the identity, or why there is none.
    pub async fn authenticate(&self, req: &RequestHeader) -> Authn {
        let settings = self.verifier.settings();
        let found = extract_token(
            req.headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
            req.headers
                .get_all(http::header::COOKIE)
                .iter()
                .map(|v| v.as_bytes()),
            settings.cookie_suffix.as_deref(),
        );
        let Some((token, source)) = found else {
            return Authn::SignedOut {
                reason: Reason::TokenMissing,
                source: None,
            };
        };
        match self.verifier.verify(token).await {
            Ok(id) => Authn::SignedIn(id),
            Err(e) => {
                log::debug!("token refused ({:?}): {e}", source);
                Authn::SignedOut {
                    reason: e.reason(),
                    source: Some(source),
                }
            }
        }
    }
}

/// Builds the verifier for a config, resolving the secrets it names.
pub fn build_verifier(cfg: &Config) -> Result<Verifier, StartError> {
    let source = match &cfg.jwks_source {
        JwksSourceConfig::Url {
            url,
            secret_key_env,
        } => {
            let bearer = match secret_key_env {
                Some(env) => {
                    Some(std::env::var(env).map_err(|_| StartError::MissingEnv(env.clone()))?)
                }
                None => None,
            };
            JwksSource::Remote {
                url: url.clone(),
                bearer,
            }
        }
        JwksSourceConfig::PemFile(p) => {
            let pem = std::fs::read(p).map_err(|e| StartError::Read(p.display().to_string(), e))?;
            JwksSource::Static(Arc::new(KeySet::from_pem(&pem)?))
        }
        JwksSourceConfig::PemEnv(env) => {
            let pem = std::env::var(env).map_err(|_| StartError::MissingEnv(env.clone()))?;
            JwksSource::Static(Arc::new(KeySet::from_pem(pem.as_bytes())?))
        }
    };
    let jwks = JwksCache::new(source, cfg.jwks_timing)?;
    Ok(Verifier::new(cfg.verifier.clone(), jwks))
}

/// Per-request state, carried from phase to phase.
#[derive(Default)]
pub struct Ctx {
    started: Option<Instant>,
    /// The canonical path plus the original query: what is forwarded.
    forward: Option<http::Uri>,
    policies: Option<Arc<PolicySet>>,
    route: Option<usize>,
    upstream: Option<Arc<Upstream>>,
    identity: Option<Arc<Identity>>,
    reason: Option<Reason>,
    signed_out_page: bool,
}

/// The `ProxyHttp` implementation: a thin handle on the shared [`Gateway`].
pub struct Portier(pub Arc<Gateway>);

fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

fn is_navigation(req: &RequestHeader) -> bool {
    let m = &req.method;
    if m != http::Method::GET && m != http::Method::HEAD {
        return false;
    }
    let h = &req.headers;
    h.get("sec-fetch-mode")
        .is_some_and(|v| v.as_bytes() == b"navigate")
        || h.get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

/// Sends a JSON refusal. Used for policy refusals and upstream failures alike.
async fn send_error(session: &mut Session, reason: Reason, allow: Option<String>) -> Result<()> {
    let body = Bytes::from(reason.body());
    let mut resp = ResponseHeader::build(reason.status(), Some(6))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    if reason.is_unauthenticated() {
        resp.insert_header("www-authenticate", reason.www_authenticate())?;
    }
    if let Some(allow) = allow {
        resp.insert_header("allow", allow)?;
    }
    // An unread request body would be parsed as the next request; close instead.
    if has_body(session.req_header()) {
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for Portier {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Some(Instant::now()),
            ..Ctx::default()
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let gw = &self.0;
        let req = session.req_header();
        let canonical = match canonicalize(req.uri.path()) {
            Ok(p) => p,
            Err(e) => {
                log::info!("bad path refused: {e}");
                ctx.reason = Some(Reason::BadPath);
                send_error(session, Reason::BadPath, None).await?;
                return Ok(true);
            }
        };
        let policies = gw.policies();
        let method = req.method.as_str();
        let route = match policies.lookup(method, &canonical) {
            Ok(m) => m,
            Err(reason) => {
                let allow = (reason == Reason::MethodNotAllowed)
                    .then(|| policies.allowed_methods(&canonical).join(", "));
                ctx.reason = Some(reason);
                send_error(session, reason, allow).await?;
                return Ok(true);
            }
        };
        let route_index = route.index;
        let route_def = route.route;
        let authn = if route_def.access == Access::Public
            && !req.headers.contains_key(http::header::AUTHORIZATION)
            && !req.headers.contains_key(http::header::COOKIE)
        {
            Authn::SignedOut {
                reason: Reason::TokenMissing,
                source: None,
            }
        } else {
            gw.authenticate(req).await
        };
        let facts = RequestFacts {
            method,
            navigation: is_navigation(req),
        };
        let (_, decision) = decide(&policies, &canonical, &facts, &authn);
        ctx.route = Some(route_index);
        let upstream = gw.upstreams.get(&route_def.upstream).cloned();
        let forward = match req.uri.query() {
            Some(q) => format!("{canonical}?{q}"),
            None => canonical,
        };
        match decision {
            Decision::Deny(reason) => {
                if let Authn::SignedIn(id) = authn {
                    ctx.identity = Some(id);
                }
                ctx.reason = Some(reason);
                ctx.policies = Some(policies);
                send_error(session, reason, None).await?;
                Ok(true)
            }
            Decision::Allow {
                identity,
                signed_out_page,
            } => {
                let Some(upstream) = upstream else {
                    // Policies are checked against the config's upstreams at load; this is a bug.
                    log::error!(
                        "route {} names an upstream that is not configured",
                        route_def.name
                    );
                    ctx.reason = Some(Reason::Internal);
                    send_error(session, Reason::Internal, None).await?;
                    return Ok(true);
                };
                ctx.forward = Some(forward.parse::<http::Uri>().map_err(|e| {
                    Error::because(ErrorType::InternalError, "canonical path is not a URI", e)
                })?);
                ctx.identity = identity;
                ctx.signed_out_page = signed_out_page;
                ctx.upstream = Some(upstream);
                ctx.policies = Some(policies);
                Ok(false)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let up = ctx
            .upstream
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream chosen"))?;
        let backend = up.lb.select(b"", 256).ok_or_else(|| {
            let mut e = Error::explain(ErrorType::ConnectNoRoute, "no healthy peer");
            e.esource = ErrorSource::Upstream;
            e
        })?;
        let mut peer = HttpPeer::new(backend.addr, up.config.tls, up.config.sni.clone());
        peer.options.connection_timeout = Some(up.config.connect_timeout);
        peer.options.read_timeout = Some(up.config.read_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let guard = &self.0.guard;
        if let Some(uri) = ctx.forward.take() {
            upstream_request.set_uri(uri);
        }
        let spoofable: Vec<http::HeaderName> = upstream_request
            .headers
            .keys()
            .filter(|n| guard.is_protected(n.as_str()))
            .cloned()
            .collect();
        for name in spoofable {
            upstream_request.remove_header(&name);
        }
        let strip = ctx
            .upstream
            .as_ref()
            .is_none_or(|u| u.config.credentials == Credentials::Strip);
        if strip {
            upstream_request.remove_header(&http::header::AUTHORIZATION);
            let cookies: Vec<String> = upstream_request
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect();
            if !cookies.is_empty() {
                upstream_request.remove_header(&http::header::COOKIE);
                if let Some(kept) = strip_clerk_cookies(&cookies.join("; ")) {
                    upstream_request.insert_header(http::header::COOKIE, kept)?;
                }
            }
        }
        if let Some(id) = &ctx.identity {
            for (name, value) in guard.identity_headers(id) {
                upstream_request.insert_header(name.to_string(), value)?;
            }
        }
        if let Some(addr) = session.client_addr().and_then(PingoraAddr::as_inet) {
            let ip = addr.ip().to_string();
            let xff = match upstream_request
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip,
            };
            upstream_request.insert_header("x-forwarded-for", xff)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let reason = match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Some(Reason::UpstreamTimeout)
            }
            ErrorType::HTTPStatus(_) => None,
            _ => match e.esource() {
                ErrorSource::Upstream => Some(Reason::UpstreamUnavailable),
                ErrorSource::Downstream => None,
                ErrorSource::Internal | ErrorSource::Unset => Some(Reason::Internal),
            },
        };
        let code = match (reason, e.etype()) {
            (Some(r), _) => {
                log::warn!("request failed: {e}");
                ctx.reason = Some(r);
                if let Err(err) = send_error(session, r, None).await {
                    log::debug!("could not send error response: {err}");
                }
                r.status()
            }
            (None, ErrorType::HTTPStatus(code)) => {
                let _ = session.respond_error(*code).await;
                *code
            }
            (None, _) => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if !log::log_enabled!(target: "portier::access", log::Level::Info) {
            return;
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = ctx
            .policies
            .as_ref()
            .zip(ctx.route)
            .and_then(|(p, i)| p.routes.get(i))
            .map(|r| r.name.as_str());
        let req = session.req_header();
        let line = serde_json::json!({
            "method": req.method.as_str(),
            // The canonical form when known; never the query (it may carry signatures).
            "path": canonicalize(req.uri.path()).ok(),
            "route": route,
            "status": status,
            "decision": if ctx.reason.is_some_and(|r| r.status() < 500) { "deny" } else { "allow" },
            "reason": ctx.reason.map(Reason::code),
            "user_id": ctx.identity.as_ref().map(|i| i.user_id.as_str()),
            "signed_out_page": ctx.signed_out_page,
            "upstream": ctx.upstream.as_ref().map(|u| u.config.name.as_str()),
            "latency_us": ctx.started.map(|s| s.elapsed().as_micros() as u64),
        });
        log::info!(target: "portier::access", "{line}");
    }
}

fn build_upstream(cfg: &UpstreamConfig, server: &mut Server) -> Result<Arc<Upstream>, StartError> {
    let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(cfg.peers.iter().map(|a| a.to_string()))
        .map_err(|e| StartError::Upstream(cfg.name.clone(), e.to_string()))?;
    let lb = match &cfg.health_check {
        None => Arc::new(lb),
        Some(hc) => {
            match hc.kind {
                HealthCheckKind::Tcp => lb.set_health_check(TcpHealthCheck::new()),
                HealthCheckKind::Http => {
                    let mut check = HttpHealthCheck::new(&cfg.sni, cfg.tls);
                    check.req.set_uri(hc.path.parse().map_err(|_| {
                        StartError::Upstream(cfg.name.clone(), "bad health check path".into())
                    })?);
                    lb.set_health_check(Box::new(check));
                }
            }
            lb.health_check_frequency = Some(hc.interval);
            let svc = background_service(&format!("health check {}", cfg.name), lb);
            let task = svc.task();
            server.add_service(svc);
            task
        }
    };
    Ok(Arc::new(Upstream {
        config: cfg.clone(),
        lb,
    }))
}

/// A shutdown trigger for servers run inside another program (tests, `portier dev`).
pub struct ShutdownHandle(tokio::sync::watch::Sender<bool>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

struct WatchShutdown(tokio::sync::watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for WatchShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|v| *v).await;
        ShutdownSignal::FastShutdown
    }
}

/// A built, not yet running server.
pub struct Built {
    pub server: Server,
    pub gateway: Arc<Gateway>,
    pub listen: Vec<SocketAddr>,
}

/// Builds the Pingora server for a config and a compiled policy set.
pub fn build(cfg: &Config, policies: PolicySet, verifier: Verifier) -> Result<Built, StartError> {
    let conf = ServerConf {
        threads: cfg.server.threads,
        grace_period_seconds: Some(cfg.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(cfg.server.graceful_shutdown_timeout.as_secs()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut upstreams = HashMap::new();
    for (name, u) in &cfg.upstreams {
        upstreams.insert(name.clone(), build_upstream(u, &mut server)?);
    }
    let gateway = Arc::new(Gateway {
        policies: ArcSwap::from_pointee(policies),
        verifier: Arc::new(verifier),
        upstreams,
        guard: HeaderGuard::new(&cfg.headers),
    });
    let mut svc =
        pingora::proxy::http_proxy_service(&server.configuration, Portier(gateway.clone()));
    for addr in &cfg.server.listen {
        svc.add_tcp(&addr.to_string());
    }
    server.add_service(svc);
    Ok(Built {
        server,
        gateway,
        listen: cfg.server.listen.clone(),
    })
}

/// Loads policies and keys for `cfg` and builds the server.
pub fn build_from_config(cfg: &Config) -> Result<Built, StartError> {
    let policies = PolicySet::load_dir(&cfg.policies_dir, &cfg.upstream_names())
        .map_err(StartError::Policies)?;
    let verifier = build_verifier(cfg)?;
    build(cfg, policies, verifier)
}

/// Runs a built server on its own thread until the handle is used; for tests and `dev`.
pub fn spawn(built: Built) -> (ShutdownHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let server = built.server;
    let thread = std::thread::spawn(move || {
        server.run(RunArgs {
            shutdown_signal: Box::new(WatchShutdown(rx)),
        });
    });
    (ShutdownHandle(tx), thread)
}

/// Waits until `addr` accepts TCP connections (the server is listening).
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
