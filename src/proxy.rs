//! The one `ProxyHttp` implementation and the Pingora server around it.
//!
//! Phases: `request_filter` canonicalises the path, finds the route, authenticates and
//! authorizes (answering refusals itself); `upstream_peer` picks a healthy peer of the route's
//! upstream; `upstream_request_filter` rewrites the request to the canonical path, strips
//! spoofable and credential headers and adds identity headers; `fail_to_proxy` turns upstream
//! failures into JSON errors; `logging` writes the access line. The per-request [`Ctx`] carries
//! what earlier phases decided.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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
use crate::auth::verify::unix_now;
use crate::auth::{extract_token, Identity, Verifier};
use crate::config::{
    Cidr, Config, Credentials, HealthCheckKind, JwksSourceConfig, RateStoreKind, UpstreamConfig,
};
use crate::decision_log::{rfc3339_now, DecisionLog, DecisionRecord};
use crate::diag::Diagnostics;
use crate::error::Reason;
use crate::guards::ratelimit::{MemoryStore, RateStore, RedisFailure, RedisStore};
use crate::guards::webhook::{
    self, MemoryReplayStore, RedisReplayStore, ReplayStore, WebhookHeaders, WebhookSecrets,
};
use crate::headers::{strip_clerk_cookies, HeaderGuard};
use crate::metrics::Metrics;
use crate::path::canonicalize;
use crate::policy::{
    evaluate, object_key, Access, Authn, ContentType, Decision, PolicySet, RequestFacts, S3Mode,
    MAX_WEBHOOK_BODY,
};
use crate::s3::front::{
    error_code, keep_client_header, list_query, map_store_status, object_path, PresignRequest,
    S3Backend,
};
use crate::s3::{canonical_key, kind_folder, sign_headers, Payload};

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

/// What a reload can replace: config-derived state swapped in whole, atomically.
pub struct Live {
    pub generation: u64,
    pub config: Arc<Config>,
    pub policies: Arc<PolicySet>,
    pub verifier: Arc<Verifier>,
    pub guard: Arc<HeaderGuard>,
    pub webhooks: Arc<HashMap<String, Arc<Webhook>>>,
}

/// A configured webhook sender: its secrets (from env vars) and timestamp tolerance.
pub struct Webhook {
    pub secrets: WebhookSecrets,
    pub tolerance: i64,
}

/// Reads the webhook secrets the config names.
pub fn build_webhooks(cfg: &Config) -> Result<HashMap<String, Arc<Webhook>>, StartError> {
    let mut out = HashMap::new();
    for (name, w) in &cfg.webhooks {
        let mut secrets = Vec::new();
        for env in &w.secrets_env {
            secrets.push(std::env::var(env).map_err(|_| StartError::MissingEnv(env.clone()))?);
        }
        let secrets = WebhookSecrets::new(&secrets)
            .map_err(|e| StartError::Upstream(format!("webhook {name}"), format!("secret: {e}")))?;
        out.insert(
            name.clone(),
            Arc::new(Webhook {
                secrets,
                tolerance: w.tolerance_seconds,
            }),
        );
    }
    Ok(out)
}

/// The Redis URL the config names (from its env var, or the plain URL).
fn redis_url(cfg: &Config) -> Result<Option<String>, StartError> {
    let rl = &cfg.rate_limit;
    if rl.store != RateStoreKind::Redis {
        return Ok(None);
    }
    match (&rl.redis_url_env, &rl.redis_url) {
        (Some(env), _) => std::env::var(env)
            .map(Some)
            .map_err(|_| StartError::MissingEnv(env.clone())),
        (None, url) => Ok(url.clone()),
    }
}

/// Redis-backed stores, connected on first use: a Redis connection belongs to the tokio
/// runtime that made it, and Pingora's runtimes only exist once the server runs.
struct LazyRedis {
    url: String,
    timeout: Duration,
    rate: tokio::sync::OnceCell<RedisStore>,
    replay: tokio::sync::OnceCell<RedisReplayStore>,
}

#[async_trait]
impl RateStore for LazyRedis {
    async fn hit(
        &self,
        key: &str,
        spec: &crate::guards::ratelimit::RateSpec,
        now: SystemTime,
    ) -> std::result::Result<
        crate::guards::ratelimit::RateOutcome,
        crate::guards::ratelimit::RateStoreError,
    > {
        let store = self
            .rate
            .get_or_try_init(|| async { RedisStore::new(&self.url, self.timeout) })
            .await?;
        store.hit(key, spec, now).await
    }
}

#[async_trait]
impl ReplayStore for LazyRedis {
    async fn first_seen(
        &self,
        id: &str,
        ttl: Duration,
    ) -> std::result::Result<bool, webhook::ReplayError> {
        let store = self
            .replay
            .get_or_try_init(|| async { RedisReplayStore::new(&self.url, self.timeout) })
            .await?;
        store.first_seen(id, ttl).await
    }

    async fn forget(&self, id: &str) -> std::result::Result<(), webhook::ReplayError> {
        let store = self
            .replay
            .get_or_try_init(|| async { RedisReplayStore::new(&self.url, self.timeout) })
            .await?;
        store.forget(id).await
    }
}

/// Shared, long-lived state of the proxy.
pub struct Gateway {
    live: ArcSwap<Live>,
    upstreams: HashMap<String, Arc<Upstream>>,
    pub metrics: Metrics,
    decision_log: DecisionLog,
    /// Where reloads read from: the config file (None in `portier dev`) and policies directory
    /// (None when policies are embedded).
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) policies_dir: Option<PathBuf>,
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    rate_store: Arc<dyn RateStore>,
    rate_failure: RedisFailure,
    replay: Arc<dyn ReplayStore>,
    s3: Option<Arc<S3Backend>>,
}

impl Gateway {
    /// The state new requests are decided by.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// The policy set new requests are decided by.
    pub fn policies(&self) -> Arc<PolicySet> {
        self.live().policies.clone()
    }

    pub fn verifier(&self) -> Arc<Verifier> {
        self.live().verifier.clone()
    }

    /// Names of the upstreams this process runs with (upstreams cannot change live).
    pub fn upstream_names(&self) -> Vec<&str> {
        self.upstreams.keys().map(String::as_str).collect()
    }

    /// Atomically installs new state; requests in flight keep the state they started with.
    pub(crate) fn install(&self, live: Live) {
        self.metrics.policy_generation.set(live.generation as i64);
        self.live.store(Arc::new(live));
    }

    /// Replaces just the policy set (tests, embedded policies).
    pub fn swap_policies(&self, set: PolicySet) {
        let cur = self.live();
        self.install(Live {
            generation: cur.generation + 1,
            config: cur.config.clone(),
            policies: Arc::new(set),
            verifier: cur.verifier.clone(),
            guard: cur.guard.clone(),
            webhooks: cur.webhooks.clone(),
        });
    }

    /// True when the gateway can decide requests: keys loaded and a policy set active.
    pub fn ready(&self) -> bool {
        self.live().verifier.jwks.has_keys()
    }

    /// Writes out buffered decision-log lines (done every second and at shutdown).
    pub fn flush_logs(&self) {
        self.decision_log.flush();
    }

    pub fn render_metrics(&self) -> String {
        self.metrics.render(&self.verifier())
    }
}

/// Authenticates a request: the identity, or why there is none.
pub async fn authenticate(verifier: &Verifier, req: &RequestHeader) -> Authn {
    let settings = verifier.settings();
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
    match verifier.verify(token).await {
        Ok(id) => Authn::SignedIn(id),
        Err(e) => {
            log::debug!("token refused ({source:?}): {e}");
            Authn::SignedOut {
                reason: e.reason(),
                source: Some(source),
            }
        }
    }
}

/// Rewrites an allowed request for its upstream: the spoofable identity headers and
/// `x-middleware-subrequest` go, credentials go unless the upstream takes them, and the
/// caller's identity headers come in. The proxy and `portier explain` both call this.
pub fn prepare_upstream_headers(
    req: &mut RequestHeader,
    guard: &HeaderGuard,
    credentials: Credentials,
    identity: Option<&Identity>,
) -> Result<()> {
    let spoofable: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|n| guard.is_protected(n.as_str()))
        .cloned()
        .collect();
    for name in spoofable {
        req.remove_header(&name);
    }
    if credentials == Credentials::Strip {
        req.remove_header(&http::header::AUTHORIZATION);
        let cookies: Vec<String> = req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        if !cookies.is_empty() {
            req.remove_header(&http::header::COOKIE);
            if let Some(kept) = strip_clerk_cookies(&cookies.join("; ")) {
                req.insert_header(http::header::COOKIE, kept)?;
            }
        }
    }
    if let Some(id) = identity {
        for (name, value) in guard.identity_headers(id) {
            req.insert_header(name.clone(), value.clone())?;
        }
    }
    Ok(())
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
    live: Option<Arc<Live>>,
    route: Option<usize>,
    shadow: Option<Reason>,
    upstream: Option<Arc<Upstream>>,
    identity: Option<Arc<Identity>>,
    reason: Option<Reason>,
    signed_out_page: bool,
    body_limit: Option<u64>,
    body_seen: u64,
    rate_headers: Vec<(&'static str, String)>,
    /// The accepted webhook id, forgotten again if the upstream never took the delivery.
    webhook_id: Option<String>,
    s3: Option<S3Call>,
    /// The canonical path, once known: what the decision log records.
    path: Option<String>,
    /// A store error being replaced by a JSON answer: the reason, the store's status, and the
    /// store's error document collected for the log.
    s3_error: Option<(Reason, u16, Vec<u8>)>,
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

/// A browser page navigation: GET/HEAD with `Sec-Fetch-Mode: navigate` or `Accept: text/html`.
pub fn is_navigation(req: &RequestHeader) -> bool {
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

/// Sends a JSON refusal with any extra headers (`Allow`, `Retry-After`, `RateLimit`...).
async fn send_error(
    session: &mut Session,
    reason: Reason,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let body = Bytes::from(reason.body());
    let mut resp = ResponseHeader::build(reason.status(), Some(6 + extra.len()))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    if reason.is_unauthenticated() {
        resp.insert_header("www-authenticate", reason.www_authenticate())?;
    }
    for (k, v) in extra {
        resp.insert_header(*k, v.as_str())?;
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

/// What `request_filter` decided for an admitted request.
enum Admitted {
    /// Forward to the upstream (or the S3 store).
    Proxy,
    /// Answer here with this JSON (presigned URLs).
    Respond(String),
}

/// What the S3 part of admission needs from the routing part.
struct S3Admission {
    route: usize,
    params: Vec<crate::policy::router::Span>,
    canonical: String,
    query: Option<String>,
    method: String,
    body_limit: u64,
}

/// An admitted S3 operation: the method and the absolute store URI it is signed for.
pub struct S3Call {
    method: String,
    uri: http::Uri,
}

/// Reads body bytes until `n` are in hand (or the body ends) without consuming them: they stay
/// in Pingora's retry buffer and go upstream first.
async fn sniff_body(session: &mut Session, n: usize) -> Result<Vec<u8>> {
    session.as_mut().enable_retry_buffering();
    let mut head = Vec::new();
    while head.len() < n {
        match session.read_request_body().await? {
            Some(chunk) => head.extend_from_slice(&chunk),
            None => break,
        }
    }
    if session.as_ref().retry_buffer_truncated() {
        return Err(Error::explain(
            ErrorType::InternalError,
            "sniffed body exceeds the retry buffer",
        ));
    }
    Ok(head)
}

/// A refusal decided in `request_filter`, with the headers that go with it.
struct Refusal {
    reason: Reason,
    headers: Vec<(&'static str, String)>,
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Self {
        Refusal {
            reason,
            headers: Vec::new(),
        }
    }
}

/// The client address: the peer, or, when the peer is a trusted proxy, the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: Option<IpAddr>, xff: Option<&str>, trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted.iter().any(|c| c.contains(peer)) {
        return Some(peer);
    }
    let mut last = peer;
    for hop in xff.unwrap_or("").rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if trusted.iter().any(|c| c.contains(ip)) => last = ip,
            Ok(ip) => return Some(ip),
            Err(_) => return Some(last),
        }
    }
    Some(last)
}

fn header_bytes(req: &RequestHeader) -> usize {
    req.headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri.path_and_query().map_or(0, |pq| pq.as_str().len())
}

fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl Portier {
    /// Turns an admitted S3 request into the store's request: only allow-listed client headers
    /// stay (no Authorization, cookie, identity or other `x-amz-*` header), the URI is the
    /// bucket's, and a fresh SigV4 signature over `UNSIGNED-PAYLOAD` lets the body stream.
    fn sign_for_s3(&self, req: &mut RequestHeader, call: &S3Call) -> Result<()> {
        let b = self
            .0
            .s3
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no S3 backend"))?;
        let dropped: Vec<http::HeaderName> = req
            .headers
            .keys()
            .filter(|n| !keep_client_header(n.as_str()))
            .cloned()
            .collect();
        for name in dropped {
            req.remove_header(&name);
        }
        let origin_form: http::Uri = call
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse()
            .map_err(|e| Error::because(ErrorType::InternalError, "S3 URI", e))?;
        req.set_uri(origin_form);
        let payload = if call.method == "PUT" {
            Payload::Unsigned
        } else {
            Payload::Empty
        };
        let signed = sign_headers(
            &b.credentials,
            b.config.target.region(),
            &call.method,
            &call.uri,
            &req.headers,
            payload,
            SystemTime::now(),
        )
        .map_err(|e| {
            log::error!("SigV4 signing failed: {e}");
            Error::explain(ErrorType::InternalError, "SigV4 signing failed")
        })?;
        for (k, v) in signed {
            req.insert_header(k, v)?;
        }
        Ok(())
    }

    /// Everything `request_filter` decides; `Err` is a refusal to send.
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<std::result::Result<Admitted, Refusal>> {
        let gw = &self.0;
        let live = gw.live();
        ctx.live = Some(live.clone());
        let req = session.req_header();
        let cfg = &live.config;
        if header_bytes(req) > cfg.limits.max_header_bytes {
            return Ok(Err(Reason::HeadersTooLarge.into()));
        }
        let canonical = match canonicalize(req.uri.path()) {
            Ok(p) => p,
            Err(e) => {
                log::info!("bad path refused: {e}");
                return Ok(Err(Reason::BadPath.into()));
            }
        };
        ctx.path = Some(canonical.clone());
        let policies = &live.policies;
        let method = req.method.as_str();
        let route = match policies.lookup(method, &canonical) {
            Ok(m) => m,
            Err(reason) => {
                let mut refusal = Refusal::from(reason);
                if reason == Reason::MethodNotAllowed {
                    refusal
                        .headers
                        .push(("allow", policies.allowed_methods(&canonical).join(", ")));
                }
                return Ok(Err(refusal));
            }
        };
        ctx.route = Some(route.index);
        let route_def = route.route;
        let body_limit = route_def
            .max_body_bytes
            .unwrap_or(cfg.limits.max_body_bytes);
        ctx.body_limit = Some(body_limit);
        // S3 object routes size uploads per kind folder, in `admit_s3`.
        if route_def.s3.is_none() && content_length(req).is_some_and(|n| n > body_limit) {
            return Ok(Err(Reason::BodyTooLarge.into()));
        }
        let authn = if route_def.access != Access::SignedIn
            && !req.headers.contains_key(http::header::AUTHORIZATION)
            && !req.headers.contains_key(http::header::COOKIE)
        {
            Authn::SignedOut {
                reason: Reason::TokenMissing,
                source: None,
            }
        } else {
            authenticate(&live.verifier, req).await
        };
        let facts = RequestFacts {
            method,
            navigation: is_navigation(req),
        };
        let decision = evaluate(&route, &canonical, &facts, &authn);
        let (identity, signed_out_page, shadow) = match decision {
            Decision::Deny(reason) => {
                if let Authn::SignedIn(id) = authn {
                    ctx.identity = Some(id);
                }
                return Ok(Err(reason.into()));
            }
            Decision::Allow {
                identity,
                signed_out_page,
                shadow,
            } => (identity, signed_out_page, shadow),
        };
        ctx.identity = identity;
        ctx.signed_out_page = signed_out_page;
        ctx.shadow = shadow;
        let peer_ip = session
            .client_addr()
            .and_then(PingoraAddr::as_inet)
            .map(|a| a.ip());
        let xff = req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let client = client_ip(peer_ip, xff, &cfg.trusted_proxies);
        if let Some(spec) = &route_def.rate_limit {
            let who = match (&ctx.identity, client) {
                (Some(id), _) => format!("u:{}", id.user_id),
                (None, Some(ip)) => format!("ip:{ip}"),
                (None, None) => "ip:unknown".to_string(),
            };
            let key = format!("{}:{who}", route_def.name);
            match gw.rate_store.hit(&key, spec, SystemTime::now()).await {
                Ok(outcome) => {
                    let headers = outcome.headers(spec);
                    if !outcome.allowed {
                        return Ok(Err(Refusal {
                            reason: Reason::RateLimited,
                            headers,
                        }));
                    }
                    ctx.rate_headers = headers;
                }
                Err(e) => {
                    let open = gw.rate_failure.allows();
                    let outcome = if open { "fail_open" } else { "fail_closed" };
                    gw.metrics
                        .rate_limit_store_errors
                        .with_label_values(&[outcome])
                        .inc();
                    log::warn!("rate-limit store unavailable ({outcome}): {e}");
                    if !open {
                        return Ok(Err(Reason::RateLimitUnavailable.into()));
                    }
                }
            }
        }
        if route_def.s3.is_some() {
            let call = S3Admission {
                route: route.index,
                params: route.params.clone(),
                canonical: canonical.clone(),
                query: req.uri.query().map(str::to_string),
                method: method.to_string(),
                body_limit,
            };
            return self.admit_s3(session, ctx, &live, call, &authn).await;
        }
        let upstream_name = route_def.upstream.clone();
        let webhook = route_def.webhook.clone();
        let forward = match req.uri.query() {
            Some(q) => format!("{canonical}?{q}"),
            None => canonical,
        };
        ctx.forward = Some(forward.parse::<http::Uri>().map_err(|e| {
            Error::because(ErrorType::InternalError, "canonical path is not a URI", e)
        })?);
        if let Some(name) = webhook {
            if let Err(reason) = self
                .verify_webhook(session, ctx, &live, &name, body_limit)
                .await?
            {
                return Ok(Err(reason.into()));
            }
        }
        match gw.upstreams.get(&upstream_name) {
            Some(up) => ctx.upstream = Some(up.clone()),
            None => {
                // Policies are checked against the running upstreams at load; this is a bug.
                log::error!("a route names upstream {upstream_name:?}, which is not configured");
                return Ok(Err(Reason::Internal.into()));
            }
        }
        Ok(Ok(Admitted::Proxy))
    }

    /// S3 routes: object operations (signed for the bucket in `upstream_request_filter`) and
    /// presigned URLs (answered here).
    async fn admit_s3(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        live: &Arc<Live>,
        call: S3Admission,
        authn: &Authn,
    ) -> Result<std::result::Result<Admitted, Refusal>> {
        let Some(backend) = self.0.s3.clone() else {
            log::error!("an s3 route is configured but [s3] is not");
            return Ok(Err(Reason::Internal.into()));
        };
        let route = &live.policies.routes[call.route];
        if route.s3 == Some(S3Mode::Presign) {
            return self.presign(session, live, route, &backend, authn).await;
        }
        let req = session.req_header();
        let h = |n: &str| {
            req.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        if req.headers.contains_key("x-amz-copy-source")
            || h("content-encoding").contains("aws-chunked")
            || h("x-amz-content-sha256").starts_with("STREAMING-")
            || !h("x-amz-decoded-content-length").is_empty()
        {
            // Copies would need the source key checked, and aws-chunked bodies would be stored
            // with their chunk envelope: refuse both rather than forward them.
            return Ok(Err(Reason::OperationNotSupported.into()));
        }
        let key = match object_key(route, &call.canonical, &call.params) {
            None => None,
            Some(Ok(k)) => Some(k),
            Some(Err(e)) => {
                log::info!("bad object key: {e}");
                return Ok(Err(Reason::BadKey.into()));
            }
        };
        let target = &backend.config.target;
        let uri = match (call.method.as_str(), &key) {
            ("GET", None) => {
                let Some(id) = &ctx.identity else {
                    return Ok(Err(Reason::TokenMissing.into()));
                };
                match list_query(&id.user_id, call.query.as_deref()) {
                    Ok(q) => target.bucket_uri(&q),
                    Err(e) => {
                        log::info!("list refused: {e}");
                        return Ok(Err(Reason::OperationNotSupported.into()));
                    }
                }
            }
            (_, None) => return Ok(Err(Reason::BadKey.into())),
            ("GET" | "HEAD" | "DELETE", Some(k)) => target.object_uri(k),
            ("PUT", Some(k)) => {
                let rule = kind_folder(k).and_then(|kind| route.kinds.get(kind));
                let limit = rule
                    .and_then(|r| r.max_body_bytes)
                    .unwrap_or(call.body_limit);
                let Some(length) = content_length(req) else {
                    // S3 needs the length of a PutObject up front; refuse as S3 does.
                    return Ok(Err(Reason::LengthRequired.into()));
                };
                if length > limit {
                    return Ok(Err(Reason::BodyTooLarge.into()));
                }
                ctx.body_limit = Some(limit);
                let types = rule.map(|r| r.content_types.clone()).unwrap_or_default();
                if !types.is_empty() {
                    let head = sniff_body(session, ContentType::SNIFF_LEN).await?;
                    if !types.iter().any(|t| t.matches(&head)) {
                        return Ok(Err(Reason::UnsupportedMediaType.into()));
                    }
                }
                target.object_uri(k)
            }
            _ => return Ok(Err(Reason::MethodNotAllowed.into())),
        };
        let uri = uri.map_err(|e| {
            log::error!("cannot build the S3 URI: {e}");
            Error::explain(ErrorType::InternalError, "S3 URI")
        })?;
        ctx.s3 = Some(S3Call {
            method: call.method,
            uri,
        });
        Ok(Ok(Admitted::Proxy))
    }

    /// `POST .../presigned-url`: the object route's own policy decides, for the method and key
    /// asked, exactly as for a direct request; then Portier signs a URL for the store.
    async fn presign(
        &self,
        session: &mut Session,
        live: &Arc<Live>,
        route: &crate::policy::Route,
        backend: &S3Backend,
        authn: &Authn,
    ) -> Result<std::result::Result<Admitted, Refusal>> {
        const MAX_PRESIGN_BODY: usize = 8 * 1024;
        let mut body = Vec::new();
        while let Some(chunk) = session.read_request_body().await? {
            if body.len() + chunk.len() > MAX_PRESIGN_BODY {
                return Ok(Err(Reason::BodyTooLarge.into()));
            }
            body.extend_from_slice(&chunk);
        }
        let Ok(ask) = serde_json::from_slice::<PresignRequest>(&body) else {
            return Ok(Err(Reason::BadRequest.into()));
        };
        let Ok(key) = canonical_key(&ask.key) else {
            return Ok(Err(Reason::BadKey.into()));
        };
        let policies = &live.policies;
        let Some((target_index, pattern)) = route
            .presign_target
            .and_then(|i| Some((i, policies.routes.get(i)?.pattern.clone())))
        else {
            log::error!("presign route {} names no object route", route.name);
            return Ok(Err(Reason::Internal.into()));
        };
        let Some(path) = object_path(&pattern, &key).and_then(|p| canonicalize(&p).ok()) else {
            return Ok(Err(Reason::BadKey.into()));
        };
        let method = ask.method.as_str();
        let m = match policies.lookup(method, &path) {
            Ok(m) if m.index == target_index => m,
            Ok(_) => return Ok(Err(Reason::NoRoute.into())),
            Err(r) => return Ok(Err(r.into())),
        };
        let facts = RequestFacts {
            method,
            navigation: false,
        };
        if let Decision::Deny(reason) = evaluate(&m, &path, &facts, authn) {
            return Ok(Err(reason.into()));
        }
        let cfg = &backend.config;
        let expires = ask
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(cfg.presign_default)
            .min(cfg.presign_max);
        let url = match crate::s3::presign(
            &backend.credentials,
            &cfg.target,
            method,
            &key,
            expires,
            SystemTime::now(),
        ) {
            Ok(u) => u,
            Err(e) => {
                log::error!("presigning failed: {e}");
                return Ok(Err(Reason::Internal.into()));
            }
        };
        let body = serde_json::json!({
            "url": url,
            "method": method,
            "key": key,
            "expires_in": expires.as_secs(),
        });
        Ok(Ok(Admitted::Respond(body.to_string())))
    }

    /// Reads the (bounded) body, checks its Standard Webhooks signature and that its id is new.
    /// The body is kept in Pingora's retry buffer, from which it is sent upstream unchanged.
    async fn verify_webhook(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        live: &Live,
        name: &str,
        limit: u64,
    ) -> Result<std::result::Result<(), Reason>> {
        let Some(hook) = live.webhooks.get(name) else {
            log::error!("webhook {name:?} has no secrets loaded");
            return Ok(Err(Reason::Internal));
        };
        let limit = limit.min(MAX_WEBHOOK_BODY);
        let req = session.req_header();
        let headers =
            WebhookHeaders::from_lookup(|n| req.headers.get(n).and_then(|v| v.to_str().ok()));
        session.as_mut().enable_retry_buffering();
        let mut body = Vec::new();
        while let Some(chunk) = session.read_request_body().await? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Ok(Err(Reason::BodyTooLarge));
            }
            body.extend_from_slice(&chunk);
        }
        if session.as_ref().retry_buffer_truncated() {
            return Ok(Err(Reason::BodyTooLarge));
        }
        let headers = match headers {
            Ok(h) => h,
            Err(e) => return Ok(Err(webhook_reason(&e))),
        };
        if let Err(e) = webhook::verify(&hook.secrets, &headers, &body, unix_now(), hook.tolerance)
        {
            log::info!("webhook {name} refused: {e}");
            return Ok(Err(webhook_reason(&e)));
        }
        let id = format!("{name}:{}", headers.id);
        match self
            .0
            .replay
            .first_seen(&id, webhook::replay_window(hook.tolerance))
            .await
        {
            Ok(true) => {
                ctx.webhook_id = Some(id);
                Ok(Ok(()))
            }
            Ok(false) => Ok(Err(Reason::WebhookReplayed)),
            Err(e) => {
                log::warn!("webhook replay store unavailable: {e}");
                Ok(Err(Reason::ReplayCheckUnavailable))
            }
        }
    }
}

fn webhook_reason(e: &webhook::WebhookError) -> Reason {
    match e.reason_code() {
        "webhook_timestamp_out_of_range" => Reason::WebhookTimestampOutOfRange,
        _ => Reason::WebhookSignatureInvalid,
    }
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
        match self.admit(session, ctx).await? {
            Ok(Admitted::Proxy) => Ok(false),
            Ok(Admitted::Respond(body)) => {
                let body = Bytes::from(body);
                let mut resp = ResponseHeader::build(200, Some(3))?;
                resp.insert_header("content-type", "application/json")?;
                resp.insert_header("content-length", body.len().to_string())?;
                resp.insert_header("cache-control", "no-store")?;
                session.write_response_header(Box::new(resp), false).await?;
                session.write_response_body(Some(body), true).await?;
                Ok(true)
            }
            Err(refusal) => {
                ctx.reason = Some(refusal.reason);
                send_error(session, refusal.reason, &refusal.headers).await?;
                Ok(true)
            }
        }
    }

    /// Replaces a store error document with Portier's JSON answer, logging the store's code.
    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        let Some((reason, status, doc)) = &mut ctx.s3_error else {
            return Ok(None);
        };
        if let Some(b) = body.take() {
            if doc.len() < 16 * 1024 {
                doc.extend_from_slice(&b);
            }
        }
        if end_of_stream {
            let code = error_code(doc).unwrap_or_else(|| "-".into());
            if *reason == Reason::UpstreamAuthFailed {
                log::error!(
                    "the S3 store refused Portier's credentials or signature: HTTP {status} {code}"
                );
            } else {
                log::info!("S3 answered HTTP {status} {code} -> {}", reason.code());
            }
            if session.req_header().method != http::Method::HEAD {
                *body = Some(Bytes::from(reason.body()));
            }
        }
        Ok(None)
    }

    /// Counts streamed body bytes: a body longer than the route allows (or than it announced)
    /// is cut off, and the upstream request is aborted so nothing partial is accepted.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_seen += b.len() as u64;
            if ctx.body_limit.is_some_and(|limit| ctx.body_seen > limit) {
                ctx.reason = Some(Reason::BodyTooLarge);
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over the route limit",
                ));
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.s3.is_some() {
            let status = resp.status.as_u16();
            if let Some(reason) = map_store_status(status) {
                let body_len = reason.body().len();
                for h in [
                    "content-length",
                    "transfer-encoding",
                    "content-type",
                    "etag",
                    "last-modified",
                    "content-range",
                    "accept-ranges",
                ] {
                    resp.remove_header(h);
                }
                resp.set_status(reason.status())?;
                resp.insert_header("content-type", "application/json")?;
                resp.insert_header("content-length", body_len.to_string())?;
                resp.insert_header("cache-control", "no-store")?;
                if reason.status() >= 500 {
                    self.0
                        .metrics
                        .upstream_errors
                        .with_label_values(&[crate::S3_UPSTREAM, reason.code()])
                        .inc();
                }
                if session.req_header().method == http::Method::HEAD {
                    log::warn!("S3 answered {status} to a HEAD: {}", reason.code());
                }
                ctx.s3_error = Some((reason, status, Vec::new()));
            }
        }
        for (k, v) in ctx.rate_headers.drain(..) {
            resp.insert_header(k, v)?;
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if ctx.s3.is_some() {
            let b = self
                .0
                .s3
                .as_ref()
                .ok_or_else(|| Error::explain(ErrorType::InternalError, "no S3 backend"))?;
            let addr = b.peer_addr().await.ok_or_else(|| {
                let mut e =
                    Error::explain(ErrorType::ConnectNoRoute, "S3 endpoint does not resolve");
                e.esource = ErrorSource::Upstream;
                e
            })?;
            let mut peer = HttpPeer::new(addr, b.tls, b.sni().to_string());
            peer.options.connection_timeout = Some(b.config.connect_timeout);
            peer.options.read_timeout = Some(b.config.read_timeout);
            peer.options.write_timeout = Some(b.config.read_timeout);
            return Ok(Box::new(peer));
        }
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
        let route_timeout = ctx
            .live
            .as_ref()
            .zip(ctx.route)
            .and_then(|(l, i)| l.policies.routes.get(i))
            .and_then(|r| r.timeout);
        peer.options.read_timeout = Some(route_timeout.unwrap_or(up.config.read_timeout));
        peer.options.write_timeout = route_timeout.or(Some(up.config.read_timeout));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(call) = &ctx.s3 {
            return self.sign_for_s3(upstream_request, call);
        }
        if let Some(uri) = ctx.forward.take() {
            upstream_request.set_uri(uri);
        }
        let credentials = ctx
            .upstream
            .as_ref()
            .map_or(Credentials::Strip, |u| u.config.credentials);
        let guard = match &ctx.live {
            Some(live) => live.guard.clone(),
            None => self.0.live().guard.clone(),
        };
        prepare_upstream_headers(
            upstream_request,
            &guard,
            credentials,
            ctx.identity.as_deref(),
        )?;
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
        if let Some(id) = ctx.webhook_id.take() {
            if let Err(err) = self.0.replay.forget(&id).await {
                log::warn!("could not forget webhook id after a failed delivery: {err}");
            }
        }
        let reason = match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Some(Reason::UpstreamTimeout)
            }
            ErrorType::HTTPStatus(413) => Some(Reason::BodyTooLarge),
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
                if let Some(up) = &ctx.upstream {
                    let kind = if r == Reason::UpstreamTimeout {
                        "timeout"
                    } else {
                        "unavailable"
                    };
                    self.0
                        .metrics
                        .upstream_errors
                        .with_label_values(&[up.config.name.as_str(), kind])
                        .inc();
                }
                ctx.reason = Some(r);
                if let Err(err) = send_error(session, r, &[]).await {
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
        let gw = &self.0;
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = ctx
            .live
            .as_ref()
            .zip(ctx.route)
            .and_then(|(l, i)| l.policies.routes.get(i))
            .map(|r| r.name.as_str());
        let route_label = route.unwrap_or("-");
        let denied = ctx.reason.is_some_and(|r| r.status() < 500);
        let decision = match (denied, ctx.reason, ctx.shadow) {
            (true, _, _) => "deny",
            (false, Some(_), _) => "error",
            (false, None, Some(_)) => "shadow_deny",
            (false, None, None) => "allow",
        };
        // A store answer replaced by Portier (404 not_found, 502 upstream_auth_failed...) is
        // reported with its reason, but it was not a policy decision.
        let outcome = ctx.reason.or(ctx.s3_error.as_ref().map(|e| e.0));
        let reason = outcome.map_or("-", Reason::code);
        gw.metrics
            .requests
            .with_label_values(&[route_label, decision, reason])
            .inc();
        let elapsed = ctx.started.map(|s| s.elapsed()).unwrap_or_default();
        gw.metrics
            .latency
            .with_label_values(&[route_label])
            .observe(elapsed.as_secs_f64());
        if let Some(sr) = ctx.shadow {
            gw.metrics
                .shadow_denials
                .with_label_values(&[route_label, sr.code()])
                .inc();
            log::info!(
                "shadow rule on route {route_label} would refuse: {}",
                sr.code()
            );
        }
        let bytes_upstream = ctx
            .upstream
            .as_ref()
            .map(|u| u.config.name.as_str())
            .or(ctx.s3.as_ref().map(|_| crate::S3_UPSTREAM));
        if let Some(name) = bytes_upstream {
            gw.metrics
                .upstream_bytes
                .with_label_values(&[name, "sent"])
                .inc_by(session.upstream_body_bytes_sent().unwrap_or(0) as u64);
            gw.metrics
                .upstream_bytes
                .with_label_values(&[name, "received"])
                .inc_by(session.upstream_body_bytes_received() as u64);
        }
        if !gw.decision_log.wants(denied || ctx.shadow.is_some()) {
            return;
        }
        let req = session.req_header();
        let path = ctx.path.as_deref();
        gw.decision_log.write(&DecisionRecord {
            ts: rfc3339_now(),
            method: req.method.as_str(),
            path,
            route,
            decision,
            reason: outcome.map(Reason::code),
            shadow_reason: ctx.shadow.map(Reason::code),
            user_id: ctx.identity.as_ref().map(|i| i.user_id.as_str()),
            status,
            upstream: ctx
                .upstream
                .as_ref()
                .map(|u| u.config.name.as_str())
                .or(ctx.s3.as_ref().map(|_| crate::S3_UPSTREAM)),
            latency_us: elapsed.as_micros() as u64,
            policy_generation: ctx.live.as_ref().map_or(0, |l| l.generation),
        });
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

/// How the server finds its inputs again on reload.
#[derive(Debug, Clone, Default)]
pub struct ReloadSources {
    pub config: Option<PathBuf>,
    pub policies_dir: Option<PathBuf>,
}

/// Builds the Pingora server for a config and a compiled policy set.
pub fn build(
    cfg: &Config,
    policies: PolicySet,
    verifier: Verifier,
    sources: ReloadSources,
) -> Result<Built, StartError> {
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
    let metrics = Metrics::new().map_err(|e| StartError::Pingora(e.to_string()))?;
    let s3 = match &cfg.s3 {
        Some(c) => {
            Some(Arc::new(S3Backend::new(c).map_err(|e| {
                StartError::Upstream("s3".into(), e.to_string())
            })?))
        }
        None => None,
    };
    let (rate_store, replay): (Arc<dyn RateStore>, Arc<dyn ReplayStore>) = match redis_url(cfg)? {
        Some(url) => {
            // Validate the URL now; connect later, inside Pingora's runtime.
            redis::Client::open(url.as_str())
                .map_err(|e| StartError::Upstream("redis".into(), e.to_string()))?;
            let shared = Arc::new(LazyRedis {
                url,
                timeout: cfg.rate_limit.redis_timeout,
                rate: tokio::sync::OnceCell::new(),
                replay: tokio::sync::OnceCell::new(),
            });
            (shared.clone(), shared)
        }
        None => (
            Arc::new(MemoryStore::new(1_000_000)),
            Arc::new(MemoryReplayStore::new(1_000_000)),
        ),
    };
    let decision_log =
        DecisionLog::open(&cfg.decision_log).map_err(|e| StartError::Pingora(e.to_string()))?;
    let gateway = Arc::new(Gateway {
        live: ArcSwap::from_pointee(Live {
            generation: 1,
            config: Arc::new(cfg.clone()),
            policies: Arc::new(policies),
            verifier: Arc::new(verifier),
            guard: Arc::new(HeaderGuard::new(&cfg.headers)),
            webhooks: Arc::new(build_webhooks(cfg)?),
        }),
        upstreams,
        metrics,
        decision_log,
        config_path: sources.config,
        policies_dir: sources.policies_dir,
        reload_lock: tokio::sync::Mutex::new(()),
        rate_store,
        rate_failure: cfg.rate_limit.on_redis_failure,
        replay,
        s3,
    });
    gateway.metrics.policy_generation.set(1);
    let mut svc =
        pingora::proxy::http_proxy_service(&server.configuration, Portier(gateway.clone()));
    for addr in &cfg.server.listen {
        svc.add_tcp(&addr.to_string());
    }
    server.add_service(svc);
    server.add_service(background_service(
        "policy reloader",
        crate::reload::Reloader {
            gateway: gateway.clone(),
            poll: cfg.reload_poll,
        },
    ));
    server.add_service(background_service(
        "decision log flusher",
        crate::reload::LogFlusher {
            gateway: gateway.clone(),
        },
    ));
    if let Some(addr) = cfg.admin_listen {
        server.add_service(background_service(
            "admin",
            crate::reload::Admin {
                gateway: gateway.clone(),
                addr,
            },
        ));
    }
    Ok(Built {
        server,
        gateway,
        listen: cfg.server.listen.clone(),
    })
}

/// Loads policies and keys for `cfg` (read from `path`) and builds the server.
pub fn build_from_config(cfg: &Config, path: &std::path::Path) -> Result<Built, StartError> {
    let policies = cfg.load_policies().map_err(StartError::Policies)?;
    let verifier = build_verifier(cfg)?;
    let sources = ReloadSources {
        config: Some(path.to_path_buf()),
        policies_dir: Some(cfg.policies_dir.clone()),
    };
    build(cfg, policies, verifier, sources)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn forwarded_for_is_believed_only_through_trusted_proxies() {
        let lb = [Cidr::parse("10.0.0.0/8").expect("cidr")];
        // An untrusted peer's X-Forwarded-For is ignored: it could name anyone.
        assert_eq!(
            client_ip(Some(ip("203.0.113.5")), Some("198.51.100.7"), &lb),
            Some(ip("203.0.113.5"))
        );
        assert_eq!(
            client_ip(Some(ip("203.0.113.5")), Some("198.51.100.7"), &[]),
            Some(ip("203.0.113.5"))
        );
        // Through the load balancer: the right-most hop that is not a trusted proxy.
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), Some("198.51.100.7, 10.0.0.9"), &lb),
            Some(ip("198.51.100.7"))
        );
        // A client-forged left-most entry does not win over the hop the proxy appended.
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), Some("1.2.3.4, 198.51.100.7"), &lb),
            Some(ip("198.51.100.7"))
        );
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), Some("nonsense"), &lb),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(client_ip(None, Some("1.2.3.4"), &lb), None);
    }
}
