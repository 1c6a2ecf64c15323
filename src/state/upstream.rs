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
