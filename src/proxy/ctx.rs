//! The per-request context: what earlier phases decided, for the later ones.

use std::sync::Arc;
use std::time::Instant;

use crate::auth::Identity;
use crate::error::Reason;
use crate::state::{Live, Upstream};

/// An admitted S3 operation: the method and the absolute store URI it is signed for.
pub struct S3Call {
    pub method: &'static str,
    pub operation: &'static str,
    pub uri: http::Uri,
    /// The media type an upload is stored with: the one its first bytes are, for kinds that
    /// check types (never the client's word).
    pub store_type: Option<&'static str>,
    /// Media types a download may be shown inline as (the kind's checked types); anything
    /// else is served as an attachment.
    pub inline_types: Vec<&'static str>,
}

/// Per-request state, carried from phase to phase. Pingora keeps it inside each request's
/// future, which is moved (copied) onto the heap once per request: what only some requests
/// need (S3, egress, page checks) is boxed, so the common request copies little.
#[derive(Default)]
pub struct Ctx {
    pub(super) started: Option<Instant>,
    /// The canonical path plus the original query: what is forwarded.
    pub(super) forward: Option<http::Uri>,
    /// The state the request is decided by, from start to end even across a reload.
    pub(super) live: Option<Arc<Live>>,
    pub(super) route: Option<usize>,
    pub(super) shadow: Option<Reason>,
    pub(super) upstream: Option<Arc<Upstream>>,
    pub(super) identity: Option<Arc<Identity>>,
    /// Why Portier refused or failed the request, when it did.
    pub(super) reason: Option<Reason>,
    pub(super) body_limit: Option<u64>,
    pub(super) body_seen: u64,
    pub(super) rate_headers: Vec<(&'static str, String)>,
    /// The accepted webhook id, forgotten again if the upstream never took the delivery.
    pub(super) webhook_id: Option<String>,
    pub(super) s3: Option<Box<S3Call>>,
    /// The canonical path, once known: what the decision log records.
    pub(super) path: Option<String>,
    /// A store error being replaced by a JSON answer: the reason, the store's status, and the
    /// store's error document collected for the log.
    pub(super) s3_error: Option<Box<(Reason, u16, Vec<u8>)>>,
    /// Portier answered `Expect: 100-continue` itself (it read the body before forwarding).
    pub(super) continue_sent: bool,
    /// The S3 operation of an S3 route (`GetObject`, `Upload`...), for the decision log.
    pub(super) operation: Option<&'static str>,
    /// The kind folder of the key an S3 route touched (`images`), for the decision log.
    pub(super) key_kind: Option<String>,
    /// Egress: the admitted store request, the service that asked, and a refusal sent.
    pub(super) egress: Option<Box<super::egress::EgressCall>>,
    pub(super) egress_service: Option<String>,
    pub(super) egress_error: Option<crate::egress::errors::S3Error>,
    /// A page request that went to the app signed out (Clerk's handshake): its answer is
    /// checked against the route before it goes back.
    pub(super) page_check: Option<Box<PageCheck>>,
    /// The app's answer is refused (a page the policy refuses): `fail_to_proxy` sends this.
    pub(super) page_refusal: Option<Box<PageRefusal>>,
    /// A page refusal was sent: not an error to log.
    pub(super) page_refused: bool,
    /// A passed redirect: its body is dropped.
    pub(super) page_body_dropped: bool,
    /// Counts the request as in flight until the context is dropped (the request is done).
    pub(super) _in_flight: Option<InFlight>,
    /// Upstream peers this request was sent to (a failed connect is retried on another).
    pub(super) tried_peers: Vec<pingora::protocols::l4::socket::SocketAddr>,
    /// The upstream's answer has begun (its status line arrived): no retry after this.
    pub(super) answered: bool,
    /// The next attempt goes to the last peer again (a broken pooled connection).
    pub(super) same_peer_again: bool,
    /// That retry was used.
    pub(super) stale_retry_used: bool,
}

/// One request in [`crate::state::Gateway::in_flight`], for as long as it lives.
pub struct InFlight(Arc<crate::state::Gateway>);

impl InFlight {
    pub fn new(gw: Arc<crate::state::Gateway>) -> InFlight {
        gw.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InFlight(gw)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// What the answer of a signed-out page pass-through is checked against.
pub struct PageCheck {
    /// The route (index in the live policy set).
    pub route: usize,
    /// Why the request was signed out when it came in.
    pub reason: Reason,
    pub navigation: bool,
    /// The canonical path the route was decided on (a data request's page path).
    pub path: String,
    /// The canonical path and the query, for a sign-in `redirect_url`.
    pub target: String,
}

/// What replaces a refused page answer.
pub struct PageRefusal {
    pub reason: Reason,
    /// A person's navigation: the sign-in or upgrade redirect.
    pub location: Option<String>,
    /// The app's Set-Cookie headers, kept so the browser still gets its fresh session.
    pub set_cookies: Vec<http::HeaderValue>,
}

impl Ctx {
    pub(super) fn route_def(&self) -> Option<&crate::policy::Route> {
        self.live
            .as_ref()
            .zip(self.route)
            .and_then(|(l, i)| l.policies.routes.get(i))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_context_stays_small() {
        // Measured with benches/instructions.sh: with Ctx at 2,352 bytes the boxing of each
        // request's future copied about 7,000 bytes more than plain Pingora's (424 now).
        let size = std::mem::size_of::<super::Ctx>();
        assert!(size <= 512, "Ctx is {size} bytes");
    }
}
