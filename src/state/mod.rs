//! The running state: what every request reads, and how it is built from a checked
//! [`Config`]. [`Live`] is what a reload replaces, built in one place ([`Live::build`]) at
//! start and on every reload; [`Gateway`] holds it (one atomic swap) next to what lives as
//! long as the process (upstream pools, metrics, the decision log, the shared stores).

mod build;
mod redis;
pub mod upstream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use build::{build_verifier, build_webhooks, RestartRequired, StartError, Webhook};
pub use upstream::Upstream;

use crate::auth::Verifier;
use crate::config::Config;
use crate::decision_log::DecisionLog;
use crate::guards::ratelimit::{RateStore, RedisFailure};
use crate::guards::webhook::ReplayStore;
use crate::headers::HeaderGuard;
use crate::metrics::Metrics;
use crate::policy::PolicySet;
use crate::s3::front::S3Backend;

/// Where the running state's inputs come from, so a reload reads them again.
#[derive(Debug, Clone)]
pub struct Sources {
    pub config: ConfigInput,
    pub policies: PolicyInput,
}

#[derive(Debug, Clone)]
pub enum ConfigInput {
    /// `config.toml` on disk, read again on reload.
    File(PathBuf),
    /// A config built in code (`portier dev`): reloads keep it.
    Fixed,
}

#[derive(Debug, Clone)]
pub enum PolicyInput {
    /// The directory the config names (`policies.dir`).
    ConfigDir,
    /// A directory given on the command line (`portier dev --policies`).
    Dir(PathBuf),
    /// Policies compiled into the binary, or built in memory; never reloaded.
    Embedded(Vec<(PathBuf, String)>),
}

impl Sources {
    /// The policies directory a reload reads for `cfg`, if any.
    pub fn policies_dir(&self, cfg: &Config) -> Option<PathBuf> {
        match &self.policies {
            PolicyInput::ConfigDir => Some(cfg.policies_dir.clone()),
            PolicyInput::Dir(d) => Some(d.clone()),
            PolicyInput::Embedded(_) => None,
        }
    }

    /// Whether anything can change on disk.
    pub fn reloadable(&self) -> bool {
        matches!(self.config, ConfigInput::File(_))
            || !matches!(self.policies, PolicyInput::Embedded(_))
    }
}

/// What a reload can replace: config-derived state swapped in whole, atomically.
pub struct Live {
    pub generation: u64,
    pub config: Arc<Config>,
    pub policies: Arc<PolicySet>,
    pub verifier: Arc<Verifier>,
    pub guard: Arc<HeaderGuard>,
    pub webhooks: Arc<HashMap<String, Arc<Webhook>>>,
    /// The bucket of `[s3]`, when configured.
    pub s3: Option<Arc<S3Backend>>,
    /// The egress services, when `[egress]` is configured.
    pub egress: Option<Arc<crate::egress::EgressState>>,
    /// The identity assertion signer, when `[assertion]` is configured.
    pub assertion: Option<Arc<crate::assertion::Signer>>,
    /// The upstreams whose pools run in this process (built at start; a reload cannot add
    /// one): what policies compile against, so no route can name a pool that is not there.
    pub running_upstreams: Arc<[String]>,
}

/// Shared, long-lived state of the proxy.
pub struct Gateway {
    live: ArcSwap<Live>,
    pub(crate) upstreams: HashMap<String, Arc<Upstream>>,
    pub metrics: Metrics,
    pub(crate) decision_log: DecisionLog,
    pub(crate) sources: Sources,
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    pub(crate) rate_store: Arc<dyn RateStore>,
    pub(crate) rate_failure: RedisFailure,
    pub(crate) replay: Arc<dyn ReplayStore>,
    /// Requests being handled now (a guard in each request's context): what a drain waits for.
    pub(crate) in_flight: std::sync::atomic::AtomicUsize,
    /// `server.body_idle_timeout_seconds` (restart-only, like the rest of `[server]`).
    pub(crate) body_idle_timeout: std::time::Duration,
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

    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(name)
    }

    /// Atomically installs new state; requests in flight keep the state they started with.
    pub(crate) fn install(&self, live: Live) {
        self.metrics.policy_generation.set(live.generation as i64);
        self.live.store(Arc::new(live));
    }

    /// True when the gateway can decide requests: keys loaded and a policy set active.
    pub fn ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// Ready, or why not: signing keys loaded, and the bucket's credentials when `[s3]` is set.
    pub fn readiness(&self) -> Result<(), String> {
        let live = self.live();
        if !live.verifier.jwks.has_keys() {
            return Err("signing keys not loaded".into());
        }
        match live.s3.as_ref().and_then(|b| b.creds.not_ready()) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// Writes out buffered decision-log lines (done every second and at shutdown).
    pub fn flush_logs(&self) {
        self.decision_log.flush();
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn render_metrics(&self) -> String {
        let live = self.live();
        self.metrics.in_flight.set(self.in_flight() as i64);
        self.metrics
            .render(&live.verifier, live.s3.as_ref().map(|b| &*b.creds))
    }
}
