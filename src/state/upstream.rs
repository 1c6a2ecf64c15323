//! A configured upstream: its peers behind a round-robin load balancer and, when configured,
//! the health check that takes dead peers out of rotation.

use std::sync::Arc;

use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::services::background::{background_service, GenBackgroundService};

use super::StartError;
use crate::config::{HealthCheckKind, UpstreamConfig};

/// An upstream with its peers and their health.
pub struct Upstream {
    pub config: UpstreamConfig,
    pub(crate) lb: Arc<LoadBalancer<RoundRobin>>,
}

/// The background service that runs an upstream's health checks.
pub type HealthService = GenBackgroundService<LoadBalancer<RoundRobin>>;

impl Upstream {
    /// The upstream, and its health-check service when one is configured (the caller runs it).
    pub fn new(cfg: &UpstreamConfig) -> Result<(Arc<Upstream>, Option<HealthService>), StartError> {
        let mut lb =
            LoadBalancer::<RoundRobin>::try_from_iter(cfg.peers.iter().map(|a| a.to_string()))
                .map_err(|source| StartError::Upstream {
                    name: cfg.name.clone(),
                    source,
                })?;
        let (lb, service) = match &cfg.health_check {
            None => (Arc::new(lb), None),
            Some(hc) => {
                match hc.kind {
                    HealthCheckKind::Tcp => lb.set_health_check(TcpHealthCheck::new()),
                    HealthCheckKind::Http => {
                        let mut check = HttpHealthCheck::new(&cfg.sni, cfg.tls);
                        let uri =
                            hc.path
                                .parse()
                                .map_err(|source| StartError::HealthCheckPath {
                                    name: cfg.name.clone(),
                                    source,
                                })?;
                        check.req.set_uri(uri);
                        lb.set_health_check(Box::new(check));
                    }
                }
                lb.health_check_frequency = Some(hc.interval);
                let svc = background_service(&format!("health check {}", cfg.name), lb);
                (svc.task(), Some(svc))
            }
        };
        Ok((
            Arc::new(Upstream {
                config: cfg.clone(),
                lb,
            }),
            service,
        ))
    }
}

/// At most this many peers see one request: the first, and one more after a failure.
pub const MAX_PEERS_PER_REQUEST: usize = 2;

/// How an attempt at a peer failed, as far as sending the request again goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFailure {
    /// No connection was made (refused, not accepted in time): nothing reached the peer.
    NotConnected,
    /// The connection broke (closed, reset, a read or write error) before the peer answered,
    /// as when its process dies or a pooled connection had gone stale.
    Broken,
    /// The peer did not answer in time: it may still be working on the request.
    TimedOut,
    /// Anything else: a malformed answer, TLS, an internal error.
    Other,
}

impl PeerFailure {
    pub fn of(etype: &pingora::ErrorType) -> PeerFailure {
        use pingora::ErrorType as E;
        match etype {
            E::ConnectRefused | E::ConnectTimedout | E::ConnectNoRoute => PeerFailure::NotConnected,
            E::ConnectionClosed | E::ReadError | E::WriteError => PeerFailure::Broken,
            E::ReadTimedout | E::WriteTimedout => PeerFailure::TimedOut,
            _ => PeerFailure::Other,
        }
    }
}

/// What the proxy knows about a failed attempt.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// GET, HEAD, OPTIONS, PUT, DELETE, TRACE: sending it twice does what sending it once does.
    pub idempotent: bool,
    /// The body read so far is still held whole (Pingora's retry buffer), so it can be sent
    /// again from its start.
    pub body_replayable: bool,
    /// The peer's answer had started (its status line reached the proxy).
    pub answered: bool,
    /// Peers this request was already sent to, this one included.
    pub peers_tried: usize,
    /// The attempt used a pooled (kept-alive) connection to the peer.
    pub reused_connection: bool,
    /// The request already went once more to the same peer after a pooled connection broke.
    pub stale_retry_used: bool,
}

/// Where a failed attempt goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextAttempt {
    /// Answered with the failure.
    Stop,
    /// Once more to the same peer, on a new connection: a pooled connection that broke before
    /// any answer is most often one the peer had just closed as idle (the keep-alive race of
    /// RFC 9112 9.3.1), not a failing peer.
    SamePeer,
    /// Once more, to another peer ([`send_again`]).
    AnotherPeer,
}

/// The retry decision for a failed attempt. A broken pooled connection is retried on the same
/// peer once (idempotent requests only, as clients do for that race); everything else follows
/// [`send_again`].
pub fn next_attempt(failure: PeerFailure, attempt: Attempt) -> NextAttempt {
    if failure == PeerFailure::Broken
        && attempt.reused_connection
        && !attempt.stale_retry_used
        && attempt.idempotent
        && attempt.body_replayable
        && !attempt.answered
    {
        return NextAttempt::SamePeer;
    }
    if send_again(failure, attempt) {
        NextAttempt::AnotherPeer
    } else {
        NextAttempt::Stop
    }
}

/// Whether the request goes once more, to another peer. A request that never reached a peer
/// goes again whatever its method; one that broke on the way only when sending it twice is
/// harmless (idempotent, body still held, no answer begun), which is nginx's default for
/// `proxy_next_upstream error`. A timeout is not retried: the peer may still be working on
/// it, and a second wait would double the route's timeout.
pub fn send_again(failure: PeerFailure, attempt: Attempt) -> bool {
    if attempt.peers_tried >= MAX_PEERS_PER_REQUEST {
        return false;
    }
    match failure {
        PeerFailure::NotConnected => true,
        PeerFailure::Broken => attempt.idempotent && attempt.body_replayable && !attempt.answered,
        PeerFailure::TimedOut | PeerFailure::Other => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Attempt = Attempt {
        idempotent: true,
        body_replayable: true,
        answered: false,
        peers_tried: 1,
        reused_connection: false,
        stale_retry_used: false,
    };

    #[test]
    fn a_broken_pooled_connection_goes_once_more_to_the_same_peer() {
        let pooled = Attempt {
            reused_connection: true,
            ..FRESH
        };
        assert_eq!(
            next_attempt(PeerFailure::Broken, pooled),
            NextAttempt::SamePeer
        );
        // Even when another peer was already tried (it refused the connection).
        let second = Attempt {
            peers_tried: 2,
            ..pooled
        };
        assert_eq!(
            next_attempt(PeerFailure::Broken, second),
            NextAttempt::SamePeer
        );
        // Once only; then the usual rule (another peer if there is one left).
        let again = Attempt {
            stale_retry_used: true,
            ..pooled
        };
        assert_eq!(
            next_attempt(PeerFailure::Broken, again),
            NextAttempt::AnotherPeer
        );
        // Not for a POST, a body no longer held, an answer begun, or a fresh connection.
        for a in [
            Attempt {
                idempotent: false,
                ..pooled
            },
            Attempt {
                body_replayable: false,
                ..pooled
            },
            Attempt {
                answered: true,
                ..pooled
            },
        ] {
            assert_eq!(next_attempt(PeerFailure::Broken, a), NextAttempt::Stop);
        }
        assert_eq!(
            next_attempt(PeerFailure::Broken, FRESH),
            NextAttempt::AnotherPeer
        );
        assert_eq!(
            next_attempt(PeerFailure::TimedOut, pooled),
            NextAttempt::Stop
        );
    }

    #[test]
    fn a_request_that_reached_no_peer_goes_again_whatever_its_method() {
        let post = Attempt {
            idempotent: false,
            ..FRESH
        };
        assert!(send_again(PeerFailure::NotConnected, post));
        assert!(send_again(PeerFailure::NotConnected, FRESH));
    }

    #[test]
    fn a_broken_connection_is_retried_only_when_sending_twice_is_harmless() {
        assert!(send_again(PeerFailure::Broken, FRESH));
        for refused in [
            Attempt {
                idempotent: false,
                ..FRESH
            },
            Attempt {
                body_replayable: false,
                ..FRESH
            },
            Attempt {
                answered: true,
                ..FRESH
            },
        ] {
            assert!(!send_again(PeerFailure::Broken, refused), "{refused:?}");
        }
    }

    #[test]
    fn timeouts_and_other_failures_are_answered_not_retried() {
        assert!(!send_again(PeerFailure::TimedOut, FRESH));
        assert!(!send_again(PeerFailure::Other, FRESH));
    }

    #[test]
    fn no_request_sees_more_than_two_peers() {
        let second = Attempt {
            peers_tried: MAX_PEERS_PER_REQUEST,
            ..FRESH
        };
        assert!(!send_again(PeerFailure::NotConnected, second));
        assert!(!send_again(PeerFailure::Broken, second));
    }

    #[test]
    fn pingora_errors_are_classified() {
        use pingora::ErrorType as E;
        assert_eq!(
            PeerFailure::of(&E::ConnectRefused),
            PeerFailure::NotConnected
        );
        assert_eq!(PeerFailure::of(&E::ConnectionClosed), PeerFailure::Broken);
        assert_eq!(PeerFailure::of(&E::ReadTimedout), PeerFailure::TimedOut);
        assert_eq!(PeerFailure::of(&E::InvalidHTTPHeader), PeerFailure::Other);
    }
}
