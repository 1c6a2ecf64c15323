//! The one `ProxyHttp` implementation: thin glue whose phases call into the modules that own
//! the decisions.
//!
//! - `request_filter`: admission ([`admit`], over [`crate::admission`] and
//!   [`crate::policy`]); refusals and Portier's own answers are written here.
//! - `upstream_peer`: a healthy peer of the route's upstream, or the S3 endpoint.
//! - `upstream_request_filter`: the canonical path, the upstream headers
//!   ([`crate::admission::upstream`]), or the SigV4-signed store request.
//! - `request_body_filter`: the body limit, counted while streaming.
//! - `response_filter` / `response_body_filter`: store errors become JSON, rate-limit headers.
//! - `fail_to_proxy`: upstream failures become JSON errors.
//! - `logging`: metrics and the decision log.
//!
//! The per-request [`Ctx`] carries what earlier phases decided.

mod admit;
mod body;
mod ctx;
mod egress;
mod pages;
mod respond;
mod s3;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::{HttpPeer, RequestHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::state::upstream::{next_attempt, send_again, Attempt, NextAttempt, PeerFailure};

pub use ctx::Ctx;

use crate::admission::client_ip;
use crate::admission::upstream::{prepare_upstream_headers, Forwarding};
use crate::config::Credentials;
use crate::decision_log::{rfc3339_now, DecisionRecord};
use crate::error::Reason;
use crate::head_deadline::HeadClock;
use crate::state::Gateway;
use admit::Admitted;
use respond::{send_error, send_json};

/// The `ProxyHttp` implementation: a thin handle on the shared [`Gateway`], for one side.
pub struct Portier {
    pub gw: Arc<Gateway>,
    pub side: Side,
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The public port: browsers and the app, decided by route policies.
    Public,
    /// The egress listener: internal services speaking S3 with local keys.
    Egress,
}

fn no_s3() -> Box<Error> {
    Error::explain(ErrorType::InternalError, "no S3 backend")
}

#[async_trait]
impl ProxyHttp for Portier {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Some(Instant::now()),
            _in_flight: Some(ctx::InFlight::new(self.gw.clone())),
            ..Ctx::default()
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // The head is in: its deadline stops (the body has its own idle limit).
        if let Some(clock) = HeadClock::of(session) {
            clock.head_read();
        }
        // Each read of the body (and of the next request on this connection) waits this long.
        session
            .as_mut()
            .set_read_timeout(Some(self.gw.body_idle_timeout));
        if self.side == Side::Egress {
            return self.admit_egress(session, ctx).await;
        }
        match self.admit(session, ctx).await? {
            Ok(Admitted::Proxy) => Ok(false),
            Ok(Admitted::Respond(body)) => {
                send_json(session, 200, Bytes::from(body), &[]).await?;
                Ok(true)
            }
            Ok(Admitted::Jwks {
                body,
                cache_control,
            }) => {
                send_json(
                    session,
                    200,
                    Bytes::from(body),
                    &[("cache-control", cache_control)],
                )
                .await?;
                Ok(true)
            }
            Err(refusal) => {
                ctx.reason = Some(refusal.reason);
                match refusal.redirect {
                    // A person's navigation: the sign-in or upgrade page, the reason kept in
                    // the body for whoever looks.
                    Some(location) => {
                        let mut headers = refusal.headers;
                        headers.push(("location", location));
                        send_json(session, 307, Bytes::from(refusal.reason.body()), &headers)
                            .await?
                    }
                    None => send_error(session, refusal.reason, &refusal.headers).await?,
                }
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
        if let Some(error) = &mut ctx.s3_error {
            let head_only = session.req_header().method == http::Method::HEAD;
            s3::error_body(body, end_of_stream, head_only, error);
        }
        if let Some(call) = ctx.egress.as_mut() {
            egress::replace_body(body, end_of_stream, call);
        }
        pages::drop_body(body, ctx);
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
        if let Some(call) = ctx.egress.as_mut() {
            if let Err(e) = egress::check_body(body, _end_of_stream, call) {
                ctx.egress_error = Some(e);
                return Err(Error::explain(
                    ErrorType::HTTPStatus(e.status),
                    "egress body does not match what its request declared",
                ));
            }
            return Ok(());
        }
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
        ctx.answered = true;
        if let Some(call) = ctx.egress.as_mut() {
            if !resp.status.is_informational() {
                egress::map_response(resp, call)?;
            }
            return Ok(());
        }
        if let Some(call) = &ctx.s3 {
            s3::download_headers(resp, call)?;
            if let Some(reason) = s3::map_response(resp, ctx)? {
                if reason.status() >= 500 {
                    self.gw
                        .metrics
                        .upstream_errors
                        .with_label_values(&[crate::S3_UPSTREAM, reason.code()])
                        .inc();
                }
                if session.req_header().method == http::Method::HEAD {
                    log::warn!("S3 answered an error to a HEAD: {}", reason.code());
                }
            }
        }
        // On the final answer, not on a `100 Continue` before it.
        if !resp.status.is_informational() {
            for (k, v) in ctx.rate_headers.drain(..) {
                resp.insert_header(k, v)?;
            }
        }
        self.page_answer(session, resp, ctx).await
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if ctx.s3.is_some() || ctx.egress.is_some() {
            let live = ctx.live.as_ref().ok_or_else(no_s3)?;
            let b = live.s3.as_ref().ok_or_else(no_s3)?;
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
        // A broken pooled connection goes once more to the same peer, on a new connection.
        if std::mem::take(&mut ctx.same_peer_again) {
            if let Some(addr) = ctx.tried_peers.last().cloned() {
                return Ok(Box::new(app_peer(up, addr, ctx)));
            }
        }
        // A retry after a failed connect goes to another healthy peer when there is one.
        let tried = &ctx.tried_peers;
        let backend = up
            .lb
            .select_with(b"", 256, |b, healthy| healthy && !tried.contains(&b.addr))
            .or_else(|| up.lb.select(b"", 256))
            .ok_or_else(|| {
                let mut e = Error::explain(ErrorType::ConnectNoRoute, "no healthy peer");
                e.esource = ErrorSource::Upstream;
                e
            })?;
        ctx.tried_peers.push(backend.addr.clone());
        Ok(Box::new(app_peer(up, backend.addr, ctx)))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(call) = ctx.egress.as_mut() {
            let live = ctx.live.as_ref().ok_or_else(no_s3)?;
            let backend = live.s3.as_ref().ok_or_else(no_s3)?;
            return egress::sign(backend, upstream_request, call);
        }
        if let Some(call) = &ctx.s3 {
            let live = ctx.live.as_ref().ok_or_else(no_s3)?;
            let backend = live.s3.as_ref().ok_or_else(no_s3)?;
            return s3::sign(backend, upstream_request, call, ctx.continue_sent);
        }
        // Cloned, not taken: a retry starts again from the client's request header, and must
        // go out (and be asserted) with the canonical path too.
        if let Some(uri) = ctx.forward.clone() {
            upstream_request.set_uri(uri);
        }
        if ctx.continue_sent {
            upstream_request.remove_header(&http::header::EXPECT);
        }
        let credentials = ctx
            .upstream
            .as_ref()
            .map_or(Credentials::Strip, |u| u.config.credentials);
        let guard = match &ctx.live {
            Some(live) => live.guard.clone(),
            None => self.gw.live().guard.clone(),
        };
        let peer = crate::admission::peer_ip(session.client_addr());
        let trusted = ctx
            .live
            .as_ref()
            .map(|l| l.config.trusted_proxies.as_slice())
            .unwrap_or_default();
        let xff = session
            .req_header()
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes());
        let fwd = Forwarding {
            peer,
            client: client_ip(peer, xff, trusted),
            trusted,
        };
        prepare_upstream_headers(
            upstream_request,
            &guard,
            credentials,
            ctx.identity.as_deref(),
            fwd,
        )?;
        self.add_assertion(upstream_request, ctx)
    }

    /// A peer that refused the connection (or did not accept it in time): nothing was sent,
    /// so the request goes once more, to another peer, whatever its method.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if ctx.upstream.is_some() && send_again(PeerFailure::NotConnected, attempt(session, ctx)) {
            log::warn!(
                "upstream peer {} refused the connection; trying another",
                peer._address
            );
            e.set_retry(true);
        }
        e
    }

    /// A peer that failed after the connection was made: an app request goes once more, to
    /// another peer, when sending it twice is harmless (see [`send_again`]); the store keeps
    /// Pingora's rule (idempotent requests retried on a stale pooled connection only).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let a = Attempt {
            reused_connection: client_reused,
            ..attempt(session, ctx)
        };
        if ctx.upstream.is_some() {
            let next = next_attempt(PeerFailure::of(e.etype()), a);
            match next {
                NextAttempt::SamePeer => {
                    log::info!(
                        "pooled connection to {} broke before an answer ({}); sending again on a new one",
                        peer._address,
                        e.etype().as_str()
                    );
                    ctx.same_peer_again = true;
                    ctx.stale_retry_used = true;
                }
                NextAttempt::AnotherPeer => log::warn!(
                    "upstream peer {} failed before answering ({}); trying another",
                    peer._address,
                    e.etype().as_str()
                ),
                NextAttempt::Stop => {}
            }
            e.set_retry(next != NextAttempt::Stop);
        } else if !a.idempotent || !a.body_replayable {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        // A page answer the policy refuses (`response_filter` failed it): the refusal, whole.
        if let Some(refusal) = ctx.page_refusal.take() {
            ctx.page_refused = true;
            return FailToProxy {
                error_code: pages::send_page_refusal(session, *refusal).await,
                can_reuse_downstream: false,
            };
        }
        if ctx.egress.is_some() {
            use crate::egress::errors::S3Error;
            let err = match (ctx.egress_error, e.etype()) {
                (Some(err), _) => err,
                (None, ErrorType::ReadTimedout) if e.esource() == &ErrorSource::Downstream => {
                    S3Error::REQUEST_TIMEOUT
                }
                (
                    None,
                    ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
                ) => S3Error::new(
                    "ServiceUnavailable",
                    503,
                    "The store did not answer in time",
                ),
                (None, _) if e.esource() == &ErrorSource::Downstream => {
                    return FailToProxy {
                        error_code: 0,
                        can_reuse_downstream: false,
                    }
                }
                (None, _) => {
                    S3Error::new("ServiceUnavailable", 503, "The store could not be reached")
                }
            };
            log::warn!("egress request failed: {e}");
            ctx.egress_error = Some(err);
            if let Err(err2) =
                respond::send_xml(session, err.status, Bytes::from(err.document("portier"))).await
            {
                log::debug!("could not send the egress error: {err2}");
            }
            return FailToProxy {
                error_code: err.status,
                can_reuse_downstream: false,
            };
        }
        if let Some(id) = ctx.webhook_id.take() {
            if let Err(err) = self.gw.replay.forget(&id).await {
                log::warn!("could not forget webhook id after a failed delivery: {err}");
            }
        }
        let reason = match e.etype() {
            // The client stopped sending its body: its fault, not the upstream's.
            ErrorType::ReadTimedout if e.esource() == &ErrorSource::Downstream => {
                Some(Reason::ClientTimeout)
            }
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
                if let Some(up) = ctx.upstream.as_ref().filter(|_| r != Reason::ClientTimeout) {
                    let kind = if r == Reason::UpstreamTimeout {
                        "timeout"
                    } else {
                        "unavailable"
                    };
                    self.gw
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

    /// A refused page answer is a decision, not a proxy failure.
    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _e: &Error) -> bool {
        ctx.page_refused
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        // A next request on this connection gets a fresh head deadline from its first byte.
        if let Some(clock) = HeadClock::of(session) {
            clock.request_done();
        }
        let gw = &self.gw;
        if self.side == Side::Egress {
            return self.log_egress(session, ctx);
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = ctx.route_def().map(|r| r.name.as_str());
        let route_label = route.unwrap_or("-");
        // A client that stopped sending was not refused by policy.
        let denied = ctx
            .reason
            .is_some_and(|r| r.status() < 500 && r != Reason::ClientTimeout);
        // A client that went away before any answer failed the request; nobody refused it.
        let client_gone = status == 0 && e.is_some_and(|e| e.esource() == &ErrorSource::Downstream);
        let decision = match (denied, ctx.reason, ctx.shadow) {
            (true, _, _) => "deny",
            (false, Some(_), _) => "error",
            (false, None, _) if client_gone => "error",
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
        let upstream = ctx
            .upstream
            .as_ref()
            .map(|u| u.config.name.as_str())
            .or(ctx.operation.map(|_| crate::S3_UPSTREAM));
        if let Some(name) = upstream {
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
        gw.decision_log.write(&DecisionRecord {
            ts: rfc3339_now(),
            method: req.method.as_str(),
            path: ctx.path.as_deref(),
            route,
            decision,
            reason: outcome.map(Reason::code),
            shadow_reason: ctx.shadow.map(Reason::code),
            user_id: ctx.identity.as_ref().map(|i| i.user_id.as_str()),
            status,
            upstream,
            operation: ctx.operation,
            kind: ctx.key_kind.as_deref(),
            service: None,
            latency_us: elapsed.as_micros() as u64,
            policy_generation: ctx.live.as_ref().map_or(0, |l| l.generation),
        });
    }
}

impl Portier {
    /// Metrics and the decision log of an egress request.
    fn log_egress(&self, session: &mut Session, ctx: &mut Ctx) {
        let gw = &self.gw;
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let service = ctx.egress_service.as_deref().unwrap_or("-");
        let operation = ctx.operation.unwrap_or("-");
        let (decision, reason) = match ctx.egress_error {
            Some(e) if e.status < 500 => ("deny", Some(e.code)),
            Some(e) => ("error", Some(e.code)),
            None if status >= 400 => ("error", None),
            None => ("allow", None),
        };
        gw.metrics
            .egress_requests
            .with_label_values(&[service, operation, decision])
            .inc();
        if !gw.decision_log.wants(decision == "deny") {
            return;
        }
        let elapsed = ctx.started.map(|s| s.elapsed()).unwrap_or_default();
        let req = session.req_header();
        gw.decision_log.write(&DecisionRecord {
            ts: rfc3339_now(),
            method: req.method.as_str(),
            path: None,
            route: Some("egress"),
            decision,
            reason,
            shadow_reason: None,
            user_id: None,
            status,
            upstream: Some(crate::S3_UPSTREAM),
            operation: ctx.operation,
            kind: ctx.key_kind.as_deref(),
            service: ctx.egress_service.as_deref(),
            latency_us: elapsed.as_micros() as u64,
            policy_generation: ctx.live.as_ref().map_or(0, |l| l.generation),
        });
    }
}

impl Portier {
    /// Adds the signed identity assertion for upstreams that verify one (`[assertion]`), bound
    /// to the request as it goes upstream. Without an identity (a public route) there is none;
    /// a signing failure fails the request rather than send it unasserted.
    fn add_assertion(&self, req: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
        let (Some(live), Some(up), Some(id)) = (&ctx.live, &ctx.upstream, &ctx.identity) else {
            return Ok(());
        };
        let Some(signer) = live
            .assertion
            .as_ref()
            .filter(|s| s.covers(&up.config.name))
        else {
            return Ok(());
        };
        let binding = crate::assertion::Binding {
            upstream: &up.config.name,
            method: req.method.as_str(),
            path: req.uri.path(),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let counter = |result: &str| {
            self.gw
                .metrics
                .assertions
                .with_label_values(&[up.config.name.as_str(), result])
                .inc();
        };
        match signer.assertion(id, binding, now) {
            Ok((jwt, source)) => {
                counter(source.label());
                req.insert_header(crate::assertion::HEADER, jwt)?;
                Ok(())
            }
            Err(e) => {
                counter("error");
                log::error!("identity assertion for upstream {}: {e}", up.config.name);
                Err(Error::explain(
                    ErrorType::InternalError,
                    "identity assertion",
                ))
            }
        }
    }
}

/// The facts [`next_attempt`] decides on, for the request in `session`.
fn attempt(session: &Session, ctx: &Ctx) -> Attempt {
    Attempt {
        idempotent: session.req_header().method.is_idempotent(),
        body_replayable: !session.as_ref().retry_buffer_truncated(),
        answered: ctx.answered,
        peers_tried: ctx.tried_peers.len(),
        reused_connection: false,
        stale_retry_used: ctx.stale_retry_used,
    }
}

/// An app upstream's peer at `addr`, with the route's timeouts.
fn app_peer(
    up: &crate::state::Upstream,
    addr: pingora::protocols::l4::socket::SocketAddr,
    ctx: &Ctx,
) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, up.config.tls, up.config.sni.clone());
    peer.options.connection_timeout = Some(up.config.connect_timeout);
    let route_timeout = ctx.route_def().and_then(|r| r.timeout);
    peer.options.read_timeout = Some(route_timeout.unwrap_or(up.config.read_timeout));
    peer.options.write_timeout = route_timeout.or(Some(up.config.read_timeout));
    peer
}
