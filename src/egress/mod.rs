//! Egress: the backend and its workers reach the bucket through Portier with their ordinary
//! S3 SDK and a local key pair. Portier verifies their SigV4 as S3 would ([`sigv4`]), works
//! out the S3 operation and its keys ([`ops`], over the query as [`query`] decodes it),
//! authorizes them against the service's rules (deny by default), checks the body against what
//! the client declared while it streams ([`body`]), and re-signs the request for the real
//! bucket with its own credentials, so the services never hold AWS keys. Refusals are S3 XML
//! errors ([`errors`]), so SDKs raise their usual exceptions.

pub mod body;
pub mod errors;
pub mod explain;
pub mod ops;
pub mod query;
pub mod sigv4;

use std::collections::HashMap;

use crate::config::EgressConfig;

/// The running egress state: each service's local secret (read from its env var), its rules,
/// and the derived signing keys of recent days.
pub struct EgressState {
    pub config: EgressConfig,
    by_key: HashMap<String, Service>,
    pub keys: sigv4::KeyCache,
}

/// One service as requests see it.
pub struct Service {
    pub name: String,
    secret: String,
    pub rules: Vec<crate::config::Rule>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("name", &self.name).finish()
    }
}

/// A service's secret env var is not set.
#[derive(Debug, thiserror::Error)]
#[error("egress service {service}: environment variable {env} is not set")]
pub struct MissingSecret {
    pub service: String,
    pub env: String,
}

impl EgressState {
    pub fn new(config: &EgressConfig) -> Result<EgressState, MissingSecret> {
        let mut by_key = HashMap::new();
        for s in config.services.values() {
            let secret = std::env::var(&s.secret_env)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| MissingSecret {
                    service: s.name.clone(),
                    env: s.secret_env.clone(),
                })?;
            by_key.insert(
                s.access_key_id.clone(),
                Service {
                    name: s.name.clone(),
                    secret,
                    rules: s.rules.clone(),
                },
            );
        }
        Ok(EgressState {
            config: config.clone(),
            by_key,
            keys: sigv4::KeyCache::default(),
        })
    }

    /// The service a local access key id belongs to.
    pub fn service(&self, access_key: &str) -> Option<&Service> {
        self.by_key.get(access_key)
    }

    /// The secret of a local access key id, for the verifier.
    pub fn secret_of(&self, access_key: &str) -> Option<String> {
        self.by_key.get(access_key).map(|s| s.secret.clone())
    }
}
