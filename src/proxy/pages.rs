//! The answer of a page request that went to the app signed out because Clerk's middleware
//! would handshake it ([`crate::admission::pages`]). A redirect (the handshake itself) goes
//! back as it is; a page goes back only when the app's answer establishes a session (Clerk
//! completing a handshake sets `__session`) that holds the route's policy. Anything else is
//! replaced by the refusal the request would have had: the sign-in or upgrade redirect for a
//! person, JSON otherwise. Set-Cookie headers stay, so the browser keeps the fresh session.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::ctx::{Ctx, PageCheck};
use super::Portier;
use crate::admission::pages;
use crate::error::Reason;
use crate::policy::{evaluate, Authn, Decision, NoTrace, RequestFacts};

/// Headers of the app's answer that describe its body, dropped with the body.
const BODY_HEADERS: [&str; 7] = [
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "etag",
    "last-modified",
    "content-disposition",
];

impl Portier {
    /// `response_filter` on page routes.
    pub(super) async fn page_answer(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if !ctx.route_def().is_some_and(|r| r.is_page()) {
            return Ok(());
        }
        // A personal answer (new cookies, a redirect) is never stored by a shared cache.
        let personal =
            resp.headers.contains_key(http::header::SET_COOKIE) || resp.status.is_redirection();
        let private = resp
            .headers
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("no-store") || v.contains("private"));
        if personal && !private {
            resp.insert_header(http::header::CACHE_CONTROL, "private, no-store")?;
        }
        let Some(check) = ctx.page_check.take() else {
            return Ok(());
        };
        if resp.status.is_redirection() || resp.status.is_informational() {
            return Ok(());
        }
        match self.page_verdict(session, resp, ctx, &check).await {
            Ok(identity) => {
                ctx.identity = identity;
                Ok(())
            }
            Err(reason) => self.replace_page(resp, ctx, &check, reason),
        }
    }

    /// `Ok` with the session the answer established when it holds the route's policy.
    async fn page_verdict(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &Ctx,
        check: &PageCheck,
    ) -> std::result::Result<Option<std::sync::Arc<crate::auth::Identity>>, Reason> {
        let live = ctx.live.as_ref().ok_or(Reason::Internal)?;
        let suffix = live.verifier.settings().cookie_suffix.clone();
        let set = resp
            .headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .map(|v| v.as_bytes());
        let Some(token) = pages::session_set_cookie(set, suffix.as_deref()) else {
            log::info!("page answer without a session after a signed-out pass-through: refused");
            return Err(check.reason);
        };
        let id = live.verifier.verify(&token).await.map_err(|e| e.reason())?;
        let method = session.req_header().method.as_str();
        let path = ctx.path.as_deref().ok_or(Reason::Internal)?;
        let m = live.policies.lookup(method, path)?;
        if m.index != check.route {
            return Err(Reason::Internal);
        }
        let facts = RequestFacts {
            method,
            navigation: check.navigation,
            handshake: None,
        };
        match evaluate(&m, path, &facts, &Authn::SignedIn(id.clone()), &mut NoTrace) {
            Decision::Allow { .. } => Ok(Some(id)),
            Decision::Deny(r) => Err(r),
        }
    }

    /// Turns the app's answer into the refusal, keeping its Set-Cookie headers.
    fn replace_page(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
        check: &PageCheck,
        reason: Reason,
    ) -> Result<()> {
        let redirect = match (check.navigation, ctx.route_def(), &ctx.live) {
            (true, Some(route), Some(live)) => {
                pages::refusal_redirect(&live.config.pages, route, reason, &check.target)
            }
            _ => None,
        };
        for h in BODY_HEADERS {
            resp.remove_header(h);
        }
        let body = Bytes::from(reason.body());
        match redirect {
            Some(location) => {
                resp.set_status(307)?;
                resp.insert_header(http::header::LOCATION, location)?;
            }
            None => {
                resp.set_status(reason.status())?;
                if reason.is_unauthenticated() {
                    resp.insert_header(http::header::WWW_AUTHENTICATE, reason.www_authenticate())?;
                }
            }
        }
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        ctx.reason = Some(reason);
        ctx.page_replaced = Some(body);
        Ok(())
    }
}

/// `response_body_filter` for a replaced page: the app's bytes are dropped, ours sent last.
pub(super) fn replace_body(body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut Ctx) {
    if ctx.page_replaced.is_some() {
        body.take();
        if end_of_stream {
            *body = ctx.page_replaced.take();
        }
    }
}
