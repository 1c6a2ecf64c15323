//! The answer of a page request that went to the app signed out because Clerk's middleware
//! would handshake it ([`crate::admission::pages`]). A redirect (the handshake itself: a
//! 301/302/303/307/308 with a `Location`) goes back with its headers and without its body; a
//! page goes back only when the app's answer establishes a session (Clerk completing a
//! handshake sets `__session`) that holds the route's policy. Anything else (a 304 included)
//! is replaced by the refusal the request would have had: the sign-in or upgrade redirect for
//! a person, JSON otherwise. Set-Cookie headers stay, so the browser keeps the fresh session.
//! Informational answers (`100 Continue`, `103 Early Hints`) go by untouched and leave the
//! check waiting for the final answer.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::ctx::{Ctx, PageCheck, PageRefusal};
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
        // A 1xx is not the answer: the check waits for the final one.
        if resp.status.is_informational() {
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
        if is_redirect(resp) {
            // Only where to go (and the cookies) leaves: a redirect's body is not a page.
            for h in BODY_HEADERS {
                resp.remove_header(h);
            }
            resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
            ctx.page_body_dropped = true;
            return Ok(());
        }
        match self.page_verdict(session, resp, ctx, &check).await {
            Ok(identity) => {
                ctx.identity = identity;
                Ok(())
            }
            Err(reason) => Err(self.refuse_page(resp, ctx, &check, reason)),
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
        let path = check.path.as_str();
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

    /// Records the refusal that replaces the app's answer, keeping its Set-Cookie headers, and
    /// fails the response so [`send_page_refusal`] writes it whole from `fail_to_proxy` (an
    /// answer without a body, a `304` say, leaves no body for a filter to replace).
    fn refuse_page(
        &self,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
        check: &PageCheck,
        reason: Reason,
    ) -> pingora::BError {
        let location = match (check.navigation, ctx.route_def(), &ctx.live) {
            (true, Some(route), Some(live)) => {
                pages::refusal_redirect(&live.config.pages, route, reason, &check.target)
            }
            _ => None,
        };
        ctx.reason = Some(reason);
        ctx.page_refusal = Some(Box::new(PageRefusal {
            reason,
            location,
            set_cookies: resp
                .headers
                .get_all(http::header::SET_COOKIE)
                .iter()
                .cloned()
                .collect(),
        }));
        pingora::Error::explain(
            pingora::ErrorType::Custom("page answer refused"),
            "a signed-out page pass-through answered what the policy refuses",
        )
    }
}

/// Writes the refusal that replaced a page answer: the sign-in or upgrade redirect for a
/// person, the JSON refusal otherwise, with the app's Set-Cookie headers. The status sent.
pub(super) async fn send_page_refusal(session: &mut Session, refusal: PageRefusal) -> u16 {
    let reason = refusal.reason;
    let status = if refusal.location.is_some() {
        307
    } else {
        reason.status()
    };
    let body = Bytes::from(reason.body());
    let head = || -> Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(status, Some(6 + refusal.set_cookies.len()))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        match &refusal.location {
            Some(l) => resp.insert_header(http::header::LOCATION, l.as_str())?,
            None if reason.is_unauthenticated() => {
                resp.insert_header(http::header::WWW_AUTHENTICATE, reason.www_authenticate())?
            }
            None => {}
        }
        for c in &refusal.set_cookies {
            resp.append_header(http::header::SET_COOKIE, c.clone())?;
        }
        Ok(resp)
    };
    let written = async {
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(head()?), head_only)
            .await?;
        if !head_only {
            session
                .write_response_body(Some(body.clone()), true)
                .await?;
        }
        Ok::<(), pingora::BError>(())
    };
    if let Err(e) = written.await {
        log::debug!("could not send the page refusal: {e}");
    }
    status
}

/// A redirect a browser follows: 301, 302, 303, 307 or 308 with a `Location`. Not a 304 (it
/// tells the browser to show what it cached) nor a 3xx without a `Location` (shown as a page).
fn is_redirect(resp: &ResponseHeader) -> bool {
    matches!(resp.status.as_u16(), 301 | 302 | 303 | 307 | 308)
        && resp.headers.contains_key(http::header::LOCATION)
}

/// `response_body_filter` for a passed redirect: the app's body is dropped.
pub(super) fn drop_body(body: &mut Option<Bytes>, ctx: &Ctx) {
    if ctx.page_body_dropped {
        body.take();
    }
}
