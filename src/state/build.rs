//! Building the running state from a checked config, in one place: [`Live::build`] at start
//! and on every reload, [`Gateway::new`] once per process. `Live::build` destructures the
//! config, so a new config field does not compile until it is either applied live or reported
//! as needing a restart.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::redis::LazyRedis;
use super::upstream::HealthService;
use super::{Gateway, Live, PolicyInput, Sources, Upstream};
use crate::auth::jwks::{JwksCache, JwksError, JwksSource, KeySet};
use crate::auth::Verifier;
use crate::config::{Config, JwksSourceConfig, RateStoreKind};
use crate::decision_log::{DecisionLog, DecisionLogError};
use crate::diag::Diagnostics;
use crate::guards::ratelimit::{MemoryStore, RateStore};
use crate::guards::webhook::{MemoryReplayStore, ReplayStore, SecretError, WebhookSecrets};
use crate::headers::HeaderGuard;
use crate::metrics::{Metrics, MetricsError};
use crate::policy::{PolicySet, PolicySource};
use crate::s3::front::{FrontError, S3Backend};

/// Why the running state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("environment variable {0} is not set (named in config)")]
    MissingEnv(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("signing keys: {0}")]
    Jwks(#[from] JwksError),
    #[error("config:\n{0}")]
    Config(Diagnostics),
    #[error("policies:\n{0}")]
    Policies(Diagnostics),
    #[error("webhook {name}: {source}")]
    WebhookSecret { name: String, source: SecretError },
    #[error("upstream {name}: {source}")]
    Upstream {
        name: String,
        source: std::io::Error,
    },
    #[error("upstream {name}: bad health check path: {source}")]
    HealthCheckPath {
        name: String,
        source: http::uri::InvalidUri,
    },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("s3: {0}")]
    S3(#[from] FrontError),
    #[error("{0}")]
    Metrics(#[from] MetricsError),
    #[error("decision log: {0}")]
    DecisionLog(#[from] DecisionLogError),
    #[error("{0}")]
    Egress(crate::egress::MissingSecret),
    #[error("{0}")]
    Assertion(#[from] crate::assertion::AssertionError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// A configured webhook sender: its secrets (from env vars) and timestamp tolerance.
pub struct Webhook {
    pub secrets: WebhookSecrets,
    pub tolerance: i64,
}

/// Config sections whose change needs a new process (listeners, pools, files held open).
pub type RestartRequired = Vec<&'static str>;

fn env(name: &str) -> Result<String, StartError> {
    std::env::var(name).map_err(|_| StartError::MissingEnv(name.to_string()))
}

/// Reads the webhook secrets the config names.
pub fn build_webhooks(cfg: &Config) -> Result<HashMap<String, Arc<Webhook>>, StartError> {
    let mut out = HashMap::new();
    for (name, w) in &cfg.webhooks {
        // The first name is the current secret and must be set; the others are rotation
        // slots (the secret being retired), used when set.
        let mut secrets = Vec::with_capacity(w.secrets_env.len());
        for (i, name) in w.secrets_env.iter().enumerate() {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => secrets.push(v),
                _ if i > 0 => log::debug!("webhook {name}: rotation slot {} is unset", i + 1),
                _ => return Err(StartError::MissingEnv(name.clone())),
            }
        }
        let secrets =
            WebhookSecrets::new(&secrets).map_err(|source| StartError::WebhookSecret {
                name: name.clone(),
                source,
            })?;
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

/// Builds the verifier for a config, resolving the secrets it names.
pub fn build_verifier(cfg: &Config) -> Result<Verifier, StartError> {
    let source = match &cfg.jwks_source {
        JwksSourceConfig::Url {
            url,
            secret_key_env,
        } => JwksSource::Remote {
            url: url.clone(),
            bearer: secret_key_env.as_deref().map(env).transpose()?,
        },
        JwksSourceConfig::PemFile(p) => {
            let pem = std::fs::read(p).map_err(|source| StartError::Read {
                path: p.display().to_string(),
                source,
            })?;
            JwksSource::Static(Arc::new(KeySet::from_pem(&pem)?))
        }
        JwksSourceConfig::PemEnv(e) => {
            JwksSource::Static(Arc::new(KeySet::from_pem(env(e)?.as_bytes())?))
        }
    };
    let jwks = JwksCache::new(source, cfg.jwks_timing)?;
    Ok(Verifier::new(cfg.verifier.clone(), jwks))
}

impl Live {
    /// The state for `cfg`, reusing what did not change since `prev` (the verifier and its
    /// key and token caches, the S3 backend). Also says which changed sections only a restart
    /// applies.
    pub fn build(
        cfg: Arc<Config>,
        sources: &Sources,
        prev: Option<&Live>,
    ) -> Result<(Live, RestartRequired), StartError> {
        let Config {
            file: _,
            server,
            verifier,
            jwks_source,
            jwks_timing,
            headers,
            upstreams,
            policies_dir: _, // read through `sources` below
            reload_poll: _,  // the reloader reads it from the live config each round
            declared: _,     // only `portier check` uses it
            admin_listen,
            decision_log,
            limits: _, // read from the live config per request
            rate_limit,
            webhooks,
            trusted_proxies: _, // read from the live config per request
            s3,
            egress,
            assertion,
            // Read from the live config by each request.
            pages: _,
        } = &*cfg;
        let old = prev.map(|p| &*p.config);
        let mut restart = Vec::new();
        if let Some(o) = old {
            for (section, same) in [
                ("server", o.server == *server),
                ("upstreams", o.upstreams == *upstreams),
                ("admin", o.admin_listen == *admin_listen),
                ("decision_log", o.decision_log == *decision_log),
                ("rate_limit", o.rate_limit == *rate_limit),
                (
                    "egress.listen",
                    o.egress.as_ref().map(|e| e.listen) == egress.as_ref().map(|e| e.listen),
                ),
            ] {
                if !same {
                    restart.push(section);
                }
            }
        }
        // Upstream pools are built once, at start: a reload compiles against those, so a
        // route to an upstream added by the edit is refused (restart to add it) instead of
        // answering 500 once live.
        let running_upstreams: Arc<[String]> = match prev {
            Some(p) => p.running_upstreams.clone(),
            None => upstreams.keys().cloned().collect(),
        };
        let mut names: Vec<&str> = running_upstreams.iter().map(String::as_str).collect();
        if s3.is_some() {
            names.push(crate::S3_UPSTREAM);
        }
        let source = match &sources.policies {
            PolicyInput::ConfigDir => PolicySource::Dir(&cfg.policies_dir),
            PolicyInput::Dir(d) => PolicySource::Dir(d),
            PolicyInput::Embedded(s) => PolicySource::Sources(s),
        };
        let policies = PolicySet::load_with(&cfg, source, &names).map_err(StartError::Policies)?;
        let verifier = match (prev, old) {
            (Some(p), Some(o))
                if o.verifier == *verifier
                    && o.jwks_source == *jwks_source
                    && o.jwks_timing == *jwks_timing =>
            {
                p.verifier.clone()
            }
            _ => Arc::new(build_verifier(&cfg)?),
        };
        let guard = match (prev, old) {
            (Some(p), Some(o)) if o.headers == *headers => p.guard.clone(),
            _ => Arc::new(HeaderGuard::new(headers)),
        };
        let webhooks = match (prev, old) {
            (Some(p), Some(o)) if o.webhooks == *webhooks => p.webhooks.clone(),
            _ => Arc::new(build_webhooks(&cfg)?),
        };
        let s3_backend = match (prev, old, s3) {
            (_, _, None) => None,
            (Some(p), Some(o), Some(c)) if o.s3.as_ref() == Some(c) && p.s3.is_some() => {
                p.s3.clone()
            }
            // Other `[s3]` settings changed: the credentials already loaded (and their
            // refresher) carry over when their source and region did not change.
            (Some(p), _, Some(c)) => match &p.s3 {
                Some(b) if b.creds.serves(&c.credentials, c.target.region()) => {
                    Some(Arc::new(S3Backend::with_credentials(c, b.creds.clone())?))
                }
                _ => Some(Arc::new(S3Backend::new(c)?)),
            },
            (_, _, Some(c)) => Some(Arc::new(S3Backend::new(c)?)),
        };
        if let (Some(c), Some(new)) = (s3, &s3_backend) {
            if prev
                .and_then(|p| p.s3.as_ref())
                .is_none_or(|p| !Arc::ptr_eq(p, new))
            {
                // Spool files a crashed process left behind (a running upload removes its own).
                crate::files::sweep_spool(&c.spool_dir, crate::files::STALE_SPOOL);
            }
        }
        // Services and their rules apply live; the listener needs a restart (above).
        let egress = match (prev, old, egress) {
            (_, _, None) => None,
            (Some(p), Some(o), Some(e)) if o.egress.as_ref() == Some(e) && p.egress.is_some() => {
                p.egress.clone()
            }
            (_, _, Some(e)) => Some(Arc::new(
                crate::egress::EgressState::new(e).map_err(StartError::Egress)?,
            )),
        };
        // Keys are read again on every reload (a rotated key file applies on SIGHUP); the
        // cache of signed assertions goes with the old signer.
        let assertion = match assertion {
            None => None,
            Some(a) => Some(Arc::new(crate::assertion::Signer::new(a)?)),
        };
        let live = Live {
            generation: prev.map_or(1, |p| p.generation + 1),
            config: cfg.clone(),
            policies: Arc::new(policies),
            verifier,
            guard,
            webhooks,
            s3: s3_backend,
            egress,
            assertion,
            running_upstreams,
        };
        Ok((live, restart))
    }
}

impl Live {
    /// Before a reload installs this state: a credential cache it does not share with `cur`
    /// (the source or region changed) is loaded first, so no request meets an empty one.
    /// Fails when it cannot be loaded while `cur`'s credentials still serve: the reload is
    /// refused and they keep serving. When `cur` has none that serve, the new state goes in
    /// anyway (503 `s3_credentials_unavailable` either way) and its refresher keeps trying.
    pub async fn load_new_credentials(&self, cur: &Live) -> Result<(), String> {
        let Some(new) = &self.s3 else {
            return Ok(());
        };
        if cur
            .s3
            .as_ref()
            .is_some_and(|old| Arc::ptr_eq(&old.creds, &new.creds))
        {
            return Ok(());
        }
        new.creds.tick().await;
        let Some(why) = new.creds.not_ready() else {
            return Ok(());
        };
        if cur
            .s3
            .as_ref()
            .is_some_and(|old| old.creds.current().is_some())
        {
            return Err(why);
        }
        log::warn!("{why}; S3 requests get 503 until they load");
        Ok(())
    }
}

/// The Redis URL the config names (from its env var, or the plain URL).
fn redis_url(cfg: &Config) -> Result<Option<String>, StartError> {
    let rl = &cfg.rate_limit;
    if rl.store != RateStoreKind::Redis {
        return Ok(None);
    }
    match (&rl.redis_url_env, &rl.redis_url) {
        (Some(e), _) => env(e).map(Some),
        (None, url) => Ok(url.clone()),
    }
}

impl Gateway {
    /// The process-wide state for `cfg`, with its first [`Live`]. Returns the health-check
    /// services the server must run.
    pub fn new(
        cfg: &Config,
        sources: Sources,
    ) -> Result<(Arc<Gateway>, Vec<HealthService>), StartError> {
        let (live, _) = Live::build(Arc::new(cfg.clone()), &sources, None)?;
        let mut upstreams = HashMap::new();
        let mut health = Vec::new();
        for (name, u) in &cfg.upstreams {
            let (up, svc) = Upstream::new(u)?;
            upstreams.insert(name.clone(), up);
            health.extend(svc);
        }
        let (rate_store, replay): (Arc<dyn RateStore>, Arc<dyn ReplayStore>) = match redis_url(cfg)?
        {
            Some(url) => {
                // Validate the URL now; connect later, inside Pingora's runtime.
                redis::Client::open(url.as_str())?;
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
        let metrics = Metrics::new()?;
        metrics.policy_generation.set(live.generation as i64);
        let gateway = Gateway {
            live: ArcSwap::from_pointee(live),
            upstreams,
            metrics,
            decision_log: DecisionLog::open(&cfg.decision_log)?,
            sources,
            reload_lock: tokio::sync::Mutex::new(()),
            rate_store,
            rate_failure: cfg.rate_limit.on_redis_failure,
            replay,
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            body_idle_timeout: cfg.server.body_idle_timeout,
        };
        Ok((Arc::new(gateway), health))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secrets_env: &str) -> Config {
        let src = format!(
            r#"
[clerk]
issuer = "https://clerk.example.com"
authorized_parties = ["https://app.example.com"]
[clerk.jwks]
url = "https://clerk.example.com/.well-known/jwks.json"
[upstreams.flask]
peers = ["127.0.0.1:5000"]
[webhooks.w]
secrets_env = {secrets_env}
"#
        );
        Config::parse(std::path::Path::new("config.toml"), &src).expect("config")
    }

    #[test]
    fn webhook_rotation_slots_may_be_unset_but_the_current_secret_may_not() {
        std::env::set_var(
            "PORTIER_UT_WH_CURRENT",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        let hooks = build_webhooks(&config(
            r#"["PORTIER_UT_WH_CURRENT", "PORTIER_UT_WH_UNSET_SLOT"]"#,
        ))
        .expect("an unset rotation slot is skipped");
        assert!(hooks.contains_key("w"));
        let err = build_webhooks(&config(
            r#"["PORTIER_UT_WH_UNSET_CURRENT", "PORTIER_UT_WH_CURRENT"]"#,
        ))
        .err()
        .expect("the current secret is required");
        assert!(
            matches!(&err, StartError::MissingEnv(n) if n == "PORTIER_UT_WH_UNSET_CURRENT"),
            "{err}"
        );
    }
}
