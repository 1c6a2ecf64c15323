//! `request_filter`'s work: the admission steps of [`crate::admission`] in their fixed order,
//! with the I/O they need (verifying a token, a rate-limit round trip, reading a webhook body,
//! sniffing an upload's first bytes). Every refusal is a [`Reason`].

use std::sync::Arc;
use std::time::SystemTime;

use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::body::{continue_if_expected, read_bounded, sniff};
use super::ctx::{Ctx, PageCheck, S3Call};
use super::Portier;
use crate::admission::{
    self, authenticate, client_ip, content_length, needs_authentication, pages, rate_key, s3::S3Op,
    Front, FrontConfig, Routed,
};
use crate::auth::verify::unix_now;
use crate::error::Reason;
use crate::guards::webhook::{self, WebhookHeaders};
use crate::policy::{
    evaluate, object_key, Authn, ContentType, Decision, FileApi, NoTrace, ObjectRoute,
    RequestFacts, Route, RouteKind, MAX_WEBHOOK_BODY,
};
use crate::state::Live;

/// What `request_filter` decided for an admitted request.
pub(super) enum Admitted {
    /// Forward to the upstream (or the S3 store).
    Proxy,
    /// Answer here with this JSON (presigned URLs).
    Respond(String),
    /// The assertion keys at `[assertion] public_jwks_path`, with their cache lifetime.
    Jwks { body: String, cache_control: String },
}

/// A refusal decided in `request_filter`, with the headers that go with it.
pub(super) struct Refusal {
    pub reason: Reason,
    pub headers: Vec<(&'static str, String)>,
    /// A person's navigation on a page route: 307 here instead of the JSON status.
    pub redirect: Option<String>,
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Self {
        Refusal {
            reason,
            headers: Vec::new(),
            redirect: None,
        }
    }
}

type Admission = std::result::Result<Admitted, Refusal>;

/// Largest presign request body: a key and a few fields.
const MAX_PRESIGN_BODY: u64 = 8 * 1024;

/// Largest delete request body: up to 1,000 keys of up to 1,024 bytes, JSON-quoted.
const MAX_DELETE_BODY: u64 = 2 * 1024 * 1024;

/// The request body as the file API reads it. A read error is kept, so the request fails
/// as any other whose body stops: 408 `client_timeout` when the client stalls, nothing
/// (and an error in the log, not a policy denial) when it went away.
struct SessionBody<'a> {
    session: &'a mut Session,
    error: Option<Box<Error>>,
}

#[async_trait::async_trait]
impl crate::files::BodySource for SessionBody<'_> {
    async fn next_chunk(&mut self) -> std::io::Result<Option<bytes::Bytes>> {
        match self.session.read_request_body().await {
            Ok(chunk) => Ok(chunk),
            Err(e) => {
                let text = e.to_string();
                self.error = Some(e.into_down());
                Err(std::io::Error::other(text))
            }
        }
    }
}

impl Portier {
    /// Everything `request_filter` decides; `Ok(Err(_))` is a refusal to send.
    pub(super) async fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Admission> {
        let gw = &self.gw;
        let live = gw.live();
        ctx.live = Some(live.clone());
        let req = session.req_header();
        let cfg = &live.config;
        let front = admission::front(
            FrontConfig {
                policies: &live.policies,
                max_header_bytes: cfg.limits.max_header_bytes,
                max_body_bytes: cfg.limits.max_body_bytes,
                jwks_path: live
                    .assertion
                    .as_ref()
                    .and_then(|a| a.config.public_jwks_path.as_deref()),
            },
            req.method.as_str(),
            &req.uri,
            &req.headers,
            &mut NoTrace,
        );
        let routed = match front {
            Ok(Front::Routed(r)) => r,
            Ok(Front::Jwks) => {
                let Some(signer) = &live.assertion else {
                    return Ok(Err(Reason::Internal.into()));
                };
                return Ok(Ok(Admitted::Jwks {
                    body: signer.jwks_json().to_owned(),
                    cache_control: signer.jwks_cache_control(),
                }));
            }
            Err(early) => {
                ctx.path = early.canonical;
                let mut refusal = Refusal::from(early.reason);
                if let Some(allow) = early.allow {
                    refusal.headers.push(("allow", allow));
                }
                return Ok(Err(refusal));
            }
        };
        let Routed {
            canonical,
            page,
            m,
            body_limit: limit,
        } = routed;
        let decided_path = page.as_deref().unwrap_or(&canonical);
        ctx.path = Some(canonical.clone());
        let method = req.method.as_str();
        ctx.route = Some(m.index);
        let route = m.route;
        ctx.body_limit = Some(limit);
        let authn = if needs_authentication(route, &req.headers) {
            authenticate(&live.verifier, &req.headers).await
        } else {
            Authn::SignedOut {
                reason: Reason::TokenMissing,
                source: None,
            }
        };
        // Only a page route's refusals and pass-throughs care whether a person navigates.
        let navigation = route.is_page() && pages::is_navigation(&req.method, &req.headers);
        let handshake = route
            .is_page()
            .then(|| {
                let instance = pages::Instance::of(live.verifier.settings(), &cfg.pages);
                pages::clerk_would_handshake(
                    &req.method,
                    &req.headers,
                    req.uri.query(),
                    &instance,
                    &authn,
                    unix_now(),
                )
            })
            .flatten();
        // `redirect_url` goes back to the canonical path: the raw one may say `//evil.com`.
        let back = || pages::back_target(&canonical, req.uri.query());
        let facts = RequestFacts {
            method,
            navigation,
            handshake,
        };
        match evaluate(&m, decided_path, &facts, &authn, &mut NoTrace) {
            Decision::Deny(reason) => {
                if let Authn::SignedIn(id) = authn {
                    ctx.identity = Some(id);
                }
                let mut refusal = Refusal::from(reason);
                if route.is_page() && navigation {
                    refusal.redirect = pages::refusal_redirect(&cfg.pages, route, reason, &back());
                }
                return Ok(Err(refusal));
            }
            Decision::Allow {
                identity,
                signed_out_page,
                shadow,
            } => {
                ctx.identity = identity;
                if let Err(reason) =
                    admission::upgrade(route, &req.headers, signed_out_page, &mut NoTrace)
                {
                    return Ok(Err(reason.into()));
                }
                if let Some(reason) = signed_out_page {
                    // The answer is checked against this route before it goes back.
                    ctx.page_check = Some(Box::new(PageCheck {
                        route: m.index,
                        reason,
                        navigation,
                        path: decided_path.to_owned(),
                        target: back(),
                    }));
                }
                ctx.shadow = shadow;
            }
        }
        if let Some(refusal) = self.rate_limit(session, ctx, &live, route).await {
            return Ok(Err(refusal));
        }
        if admission::is_upgrade(&session.req_header().headers) {
            // Admitted by `admission::upgrade` above. After the 101 the bytes are the
            // tunnel's, not a body to limit.
            ctx.body_limit = None;
            self.gw
                .metrics
                .upgrades
                .with_label_values(&[route.name.as_str()])
                .inc();
        }
        match &route.kind {
            RouteKind::Proxy { .. } => self.forward(session, ctx, &canonical, route),
            RouteKind::Webhook { webhook } => {
                if let Err(reason) = self
                    .verify_webhook(session, ctx, &live, webhook, limit)
                    .await?
                {
                    return Ok(Err(reason.into()));
                }
                self.forward(session, ctx, &canonical, route)
            }
            RouteKind::S3Object(obj) => {
                let key = object_key(route, &canonical, &m.params);
                self.admit_object(session, ctx, &live, obj, key, limit)
                    .await
            }
            RouteKind::S3Presign { .. } => self.presign(session, ctx, &live, route, &authn).await,
            RouteKind::S3Api { api, target, .. } => {
                self.file_api(session, ctx, &live, route, (*api, *target), &authn)
                    .await
            }
        }
    }

    /// Counts the request against the route's limit; `Some` is a refusal.
    async fn rate_limit(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        live: &Live,
        route: &Route,
    ) -> Option<Refusal> {
        let spec = route.rate_limit.as_ref()?;
        let gw = &self.gw;
        let req = session.req_header();
        let peer = admission::peer_ip(session.client_addr());
        let xff = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes());
        let client = client_ip(peer, xff, &live.config.trusted_proxies);
        let key = rate_key(route, ctx.identity.as_deref(), client);
        match gw.rate_store.hit(&key, spec, SystemTime::now()).await {
            Ok(outcome) => {
                let headers = outcome.headers(spec);
                if !outcome.allowed {
                    return Some(Refusal {
                        reason: Reason::RateLimited,
                        headers,
                        redirect: None,
                    });
                }
                ctx.rate_headers = headers;
                None
            }
            Err(e) => {
                let open = gw.rate_failure.allows();
                let outcome = if open { "fail_open" } else { "fail_closed" };
                gw.metrics
                    .rate_limit_store_errors
                    .with_label_values(&[outcome])
                    .inc();
                log::warn!("rate-limit store unavailable ({outcome}): {e}");
                (!open).then(|| Reason::RateLimitUnavailable.into())
            }
        }
    }

    /// Proxy and webhook routes: the canonical path goes to the route's upstream.
    fn forward(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        canonical: &str,
        route: &Route,
    ) -> Result<Admission> {
        let req = session.req_header();
        let forward = match req.uri.query() {
            Some(q) => format!("{canonical}?{q}"),
            None => canonical.to_string(),
        };
        ctx.forward = Some(forward.parse::<http::Uri>().map_err(|e| {
            Error::because(ErrorType::InternalError, "canonical path is not a URI", e)
        })?);
        match self.gw.upstream(&route.upstream) {
            Some(up) => ctx.upstream = Some(up.clone()),
            None => {
                // Policies are compiled against the running upstreams; this is a bug.
                log::error!(
                    "route {} names upstream {:?}, which is not running",
                    route.name,
                    route.upstream
                );
                return Ok(Err(Reason::Internal.into()));
            }
        }
        Ok(Ok(Admitted::Proxy))
    }

    /// Object routes: the store operation, its size and type checks, and the store URI.
    async fn admit_object(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        live: &Arc<Live>,
        obj: &ObjectRoute,
        key: Option<std::result::Result<String, crate::s3::KeyError>>,
        default_limit: u64,
    ) -> Result<Admission> {
        let Some(backend) = live.s3.clone() else {
            log::error!("an s3 route is configured but [s3] is not");
            return Ok(Err(Reason::Internal.into()));
        };
        // Without usable credentials the store would refuse the signature: say so instead.
        if let Err(reason) = backend.credentials() {
            return Ok(Err(reason.into()));
        }
        let req = session.req_header();
        let object_request = admission::s3::ObjectRequest {
            method: req.method.as_str(),
            raw_path: req.uri.path(),
            query: req.uri.query(),
            headers: &req.headers,
            identity: ctx.identity.as_deref(),
        };
        let op = match admission::s3::operation(obj, key, &object_request, default_limit) {
            Ok(op) => op,
            Err(reason) => return Ok(Err(reason.into())),
        };
        let mut store_type = None;
        if let S3Op::Put {
            limit,
            sniff: types,
            ..
        } = &op
        {
            ctx.body_limit = Some(*limit);
            if !types.is_empty() {
                ctx.continue_sent |= continue_if_expected(session).await?;
                let head = sniff(session, ContentType::SNIFF_LEN).await?;
                match ContentType::detect(types, &head) {
                    Some(t) => store_type = Some(t.mime()),
                    None => return Ok(Err(Reason::UnsupportedMediaType.into())),
                }
            }
        }
        let inline_types = match op.key().and_then(crate::s3::kind_folder) {
            Some(kind) => obj
                .kinds
                .get(kind)
                .map(|r| r.content_types.iter().map(|t| t.mime()).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let target = &backend.config.target;
        let uri = match &op {
            S3Op::List { query } => target.bucket_uri(query),
            other => target.object_uri(other.key().unwrap_or_default()),
        };
        let uri = uri.map_err(|e| {
            log::error!("cannot build the S3 URI: {e}");
            Error::explain(ErrorType::InternalError, "S3 URI")
        })?;
        ctx.operation = Some(op.name());
        ctx.key_kind = op
            .key()
            .and_then(crate::s3::kind_folder)
            .map(str::to_string);
        ctx.s3 = Some(Box::new(S3Call {
            method: op.method(),
            operation: op.name(),
            uri,
            store_type,
            inline_types,
        }));
        Ok(Ok(Admitted::Proxy))
    }

    /// `POST .../presigned-url`: decided by [`admission::s3::presign`], then signed here.
    async fn presign(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        live: &Arc<Live>,
        route: &Route,
        authn: &Authn,
    ) -> Result<Admission> {
        ctx.operation = Some("Presign");
        let Some(backend) = live.s3.clone() else {
            log::error!("an s3 route is configured but [s3] is not");
            return Ok(Err(Reason::Internal.into()));
        };
        // Without usable credentials the store would refuse the signature: say so instead.
        if let Err(reason) = backend.credentials() {
            return Ok(Err(reason.into()));
        }
        ctx.continue_sent |= continue_if_expected(session).await?;
        let body = match read_bounded(session, MAX_PRESIGN_BODY, false).await? {
            Ok(b) => b,
            Err(_) => return Ok(Err(Reason::BodyTooLarge.into())),
        };
        let default_limit = live.config.limits.max_body_bytes;
        let grant = match admission::s3::presign(&live.policies, route, &body, authn, default_limit)
        {
            Ok(g) => g,
            Err(reason) => {
                ctx.key_kind = admission::s3::asked_kind(&body);
                return Ok(Err(reason.into()));
            }
        };
        ctx.key_kind = crate::s3::kind_folder(&grant.key).map(str::to_string);
        let method = grant.method.as_str();
        let signed = match crate::files::presigned_url(
            &backend,
            method,
            &grant.key,
            grant.expires_in,
            &grant.extras,
        ) {
            Ok(v) => v,
            Err(reason) => return Ok(Err(reason.into())),
        };
        let mut body = serde_json::json!({
            "url": signed.url,
            "method": method,
            "key": grant.key,
            "s3_key": grant.key,
            "expires_in": signed.expires_in,
        });
        if signed.capped_by_credentials {
            // Say why the URL lives less than asked: the signing credentials expire first.
            body["expires_in_capped_by"] = "credentials".into();
        }
        Ok(Ok(Admitted::Respond(body.to_string())))
    }

    /// The file API: upload, delete and list, served here on the bucket.
    async fn file_api(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        live: &Arc<Live>,
        route: &Route,
        (api, object_route): (FileApi, usize),
        authn: &Authn,
    ) -> Result<Admission> {
        ctx.operation = Some(api.operation());
        let Some(backend) = live.s3.clone() else {
            log::error!("an s3 route is configured but [s3] is not");
            return Ok(Err(Reason::Internal.into()));
        };
        // Without usable credentials the store would refuse the signature: say so instead.
        if let Err(reason) = backend.credentials() {
            return Ok(Err(reason.into()));
        }
        let policies = &live.policies;
        let default_limit = live.config.limits.max_body_bytes;
        let object = policies.routes.get(object_route);
        let answer = match api {
            FileApi::Upload => {
                let boundary = session
                    .req_header()
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|ct| multer::parse_boundary(ct).ok());
                let Some(boundary) = boundary else {
                    return Ok(Err(Reason::BadRequest.into()));
                };
                // The form may hold the largest file any kind allows, and its other fields.
                let largest = object
                    .and_then(|r| match &r.kind {
                        RouteKind::S3Object(o) => {
                            o.kinds.values().filter_map(|k| k.max_body_bytes).max()
                        }
                        _ => None,
                    })
                    .unwrap_or(default_limit);
                let max_body = route.max_body_bytes.unwrap_or(largest + 64 * 1024);
                if content_length(&session.req_header().headers).is_some_and(|n| n > max_body) {
                    return Ok(Err(Reason::BodyTooLarge.into()));
                }
                ctx.continue_sent |= continue_if_expected(session).await?;
                let decide = |key: &str| {
                    admission::s3::authorize_key(
                        policies,
                        object_route,
                        "PUT",
                        key,
                        authn,
                        default_limit,
                    )
                };
                let mut body = SessionBody {
                    session,
                    error: None,
                };
                let mut kind = None;
                let stored = crate::files::upload(
                    &mut body, &boundary, &backend, max_body, &decide, &mut kind,
                )
                .await;
                ctx.key_kind = kind;
                match (stored, body.error) {
                    // The body stopped: failed like any other request whose body does.
                    (Err(crate::files::FilesError::Client(_)), Some(e)) => return Err(e),
                    (Err(e), _) => Err(e),
                    (Ok(up), _) => {
                        let extras = admission::s3::download_extras();
                        crate::files::presigned_url(&backend, "GET", &up.key, None, &extras)
                            .map(|signed| {
                                serde_json::json!({
                                    "s3_key": up.key,
                                    "bucket": backend.config.target.bucket(),
                                    "url": signed.url,
                                    "expires_in": signed.expires_in,
                                    "size": up.size,
                                    "content_type": up.content_type,
                                })
                            })
                            .map_err(crate::files::FilesError::Refused)
                    }
                }
            }
            FileApi::Delete => {
                ctx.continue_sent |= continue_if_expected(session).await?;
                let body = match read_bounded(session, MAX_DELETE_BODY, false).await? {
                    Ok(b) => b,
                    Err(_) => return Ok(Err(Reason::BodyTooLarge.into())),
                };
                match admission::s3::delete_keys(policies, object_route, &body, authn) {
                    Ok(keys) => {
                        ctx.key_kind = keys
                            .first()
                            .and_then(|k| crate::s3::kind_folder(k))
                            .map(str::to_string);
                        crate::files::delete(&backend, &keys).await
                    }
                    Err(reason) => {
                        ctx.key_kind = admission::s3::asked_kind(&body);
                        Err(reason.into())
                    }
                }
            }
            FileApi::List => {
                let query = session.req_header().uri.query();
                match admission::s3::list_request(policies, object_route, query, authn) {
                    Ok(plan) => {
                        ctx.key_kind = Some(plan.kind.clone());
                        crate::files::list(&backend, &plan).await
                    }
                    Err(reason) => {
                        ctx.key_kind = admission::s3::asked_list_kind(query);
                        Err(reason.into())
                    }
                }
            }
        };
        match answer {
            Ok(json) => Ok(Ok(Admitted::Respond(json.to_string()))),
            Err(e) => {
                let reason = e.reason();
                match &e {
                    crate::files::FilesError::Refused(_) => {}
                    crate::files::FilesError::Store(err) if err.is_auth() => log::error!(
                        "the S3 store refused Portier's credentials or signature: {err}"
                    ),
                    other => log::warn!("file API {}: {other}", api.operation()),
                }
                Ok(Err(reason.into()))
            }
        }
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
        let headers = WebhookHeaders::from_header_map(&session.req_header().headers);
        ctx.continue_sent |= continue_if_expected(session).await?;
        let body = match read_bounded(session, limit.min(MAX_WEBHOOK_BODY), true).await? {
            Ok(b) => b,
            Err(_) => return Ok(Err(Reason::BodyTooLarge)),
        };
        let headers = match headers {
            Ok(h) => h,
            Err(e) => return Ok(Err(e.reason())),
        };
        if let Err(e) = webhook::verify(&hook.secrets, &headers, &body, unix_now(), hook.tolerance)
        {
            log::info!("webhook {name} refused: {e}");
            return Ok(Err(e.reason()));
        }
        let id = format!("{name}:{}", headers.id);
        match self
            .gw
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
