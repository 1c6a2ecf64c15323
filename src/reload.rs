//! Hot reload and the admin endpoint.
//!
//! A reload reads `config.toml` and the policies directory, checks and compiles them off the
//! request path, and installs the result with one atomic swap; requests in flight finish on the
//! state they started with. Anything invalid refuses the whole reload: the last good state
//! keeps serving, the error is logged with file and line, and `portier_policy_reloads_total
//! {result="error"}` counts it. Config changes that need a new process (listeners, threads,
//! upstreams, admin, decision log) are reported and not applied.
//!
//! Changes are noticed by polling a fingerprint of the files (editors replace files by
//! rename, which inotify-style watchers miss or double-report) and on SIGHUP.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::Config;
use crate::diag::Diagnostics;
use crate::policy::PolicySet;
use crate::proxy::{build_verifier, Gateway, Live, StartError};
use crate::serve::{serve, text_response};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("config:\n{0}")]
    Config(Diagnostics),
    #[error("policies:\n{0}")]
    Policies(Diagnostics),
    #[error("{0}")]
    Start(#[from] StartError),
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub generation: u64,
    /// Changed settings that only a restart applies.
    pub restart_required: Vec<&'static str>,
}

impl Gateway {
    /// Reloads config and policies now. Safe to call concurrently (reloads are serialised).
    pub async fn reload(self: &Arc<Self>) -> Result<ReloadReport, ReloadError> {
        let _guard = self.reload_lock.lock().await;
        let gw = self.clone();
        let result = tokio::task::spawn_blocking(move || gw.prepare())
            .await
            .map_err(|e| ReloadError::Start(StartError::Pingora(format!("reload task: {e}"))))?;
        match result {
            Ok((live, restart_required)) => {
                let generation = live.generation;
                self.install(live);
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                for what in &restart_required {
                    log::warn!("reload: {what} changed; restart Portier to apply it");
                }
                log::info!("reload: policy generation {generation} active");
                Ok(ReloadReport {
                    generation,
                    restart_required,
                })
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["error"]).inc();
                log::error!("reload refused, the last good policies keep serving: {e}");
                Err(e)
            }
        }
    }

    /// Builds the next state without touching the current one.
    fn prepare(&self) -> Result<(Live, Vec<&'static str>), ReloadError> {
        let cur = self.live();
        let cfg = match &self.config_path {
            Some(p) => Arc::new(Config::load(p).map_err(ReloadError::Config)?),
            None => cur.config.clone(),
        };
        let old = &cur.config;
        let mut restart = Vec::new();
        if cfg.server != old.server {
            restart.push("server");
        }
        if cfg.upstreams != old.upstreams {
            restart.push("upstreams");
        }
        if cfg.admin_listen != old.admin_listen {
            restart.push("admin");
        }
        if cfg.decision_log != old.decision_log {
            restart.push("decision_log");
        }
        let verifier = if cfg.verifier == old.verifier
            && cfg.jwks_source == old.jwks_source
            && cfg.jwks_timing == old.jwks_timing
        {
            cur.verifier.clone()
        } else {
            Arc::new(build_verifier(&cfg)?)
        };
        let guard = if cfg.headers == old.headers {
            cur.guard.clone()
        } else {
            Arc::new(crate::headers::HeaderGuard::new(&cfg.headers))
        };
        let policies = match &self.policies_dir {
            Some(_) => {
                let dir = if self.config_path.is_some() {
                    cfg.policies_dir.clone()
                } else {
                    self.policies_dir.clone().unwrap_or_default()
                };
                let hooks = cfg.webhook_names();
                let ups = self.upstream_names();
                let known = crate::policy::Known {
                    upstreams: &ups,
                    webhooks: &hooks,
                };
                Arc::new(PolicySet::load_dir_with(&dir, known).map_err(ReloadError::Policies)?)
            }
            None => cur.policies.clone(),
        };
        let webhooks = if cfg.webhooks == old.webhooks {
            cur.webhooks.clone()
        } else {
            Arc::new(crate::proxy::build_webhooks(&cfg)?)
        };
        if cfg.rate_limit != old.rate_limit {
            restart.push("rate_limit");
        }
        let live = Live {
            generation: cur.generation + 1,
            config: cfg,
            policies,
            verifier,
            guard,
            webhooks,
        };
        Ok((live, restart))
    }

    /// A fingerprint of every file a reload reads; it changes when any of them does.
    fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        let mut add = |p: &Path| {
            p.hash(&mut h);
            std::fs::read(p).ok().hash(&mut h);
        };
        if let Some(c) = &self.config_path {
            add(c);
        }
        let dir = match (&self.config_path, &self.policies_dir) {
            (Some(_), _) => Some(self.live().config.policies_dir.clone()),
            (None, d) => d.clone(),
        };
        if let Some(dir) = dir {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                let mut files: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                files.sort();
                for f in files
                    .iter()
                    .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                {
                    add(f);
                }
            }
        }
        h.finish()
    }
}

/// Background service: reloads when the files change (polling) or on SIGHUP.
pub struct Reloader {
    pub gateway: Arc<Gateway>,
    pub poll: Option<Duration>,
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let gw = &self.gateway;
        if gw.config_path.is_none() && gw.policies_dir.is_none() {
            return;
        }
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("no SIGHUP reload: {e}");
                None
            }
        };
        let mut last = gw.fingerprint();
        // The poll sleeps; without polling, wait (nearly) forever for SIGHUP or shutdown.
        let period = self.poll.unwrap_or(Duration::from_secs(86_400));
        loop {
            let signalled = tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(period) => false,
                _ = async {
                    match hup.as_mut() {
                        Some(h) => { h.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => true,
            };
            if !signalled && self.poll.is_none() {
                continue;
            }
            let now = gw.fingerprint();
            if !signalled && now == last {
                continue;
            }
            // Let a multi-file edit land before reading it.
            tokio::time::sleep(Duration::from_millis(20)).await;
            last = gw.fingerprint();
            let _ = gw.reload().await;
        }
    }
}

/// Background service: flushes the decision log every second, and once more at shutdown.
pub struct LogFlusher {
    pub gateway: Arc<Gateway>,
}

#[async_trait]
impl BackgroundService for LogFlusher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.gateway.flush_logs();
                    return;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => self.gateway.flush_logs(),
            }
        }
    }
}

/// Background service: `/metrics` (Prometheus text), `/healthz`, `/readyz` on the admin address.
pub struct Admin {
    pub gateway: Arc<Gateway>,
    pub addr: SocketAddr,
}

#[async_trait]
impl BackgroundService for Admin {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = match tokio::net::TcpListener::bind(self.addr).await {
            Ok(l) => l,
            Err(e) => {
                log::error!("admin listener {}: {e}", self.addr);
                return;
            }
        };
        let gw = self.gateway.clone();
        let handler = Arc::new(move |parts: http::request::Parts| match parts.uri.path() {
            "/metrics" => text_response(200, "text/plain; version=0.0.4", gw.render_metrics()),
            "/healthz" => text_response(200, "text/plain", "ok\n".into()),
            "/readyz" if gw.ready() => text_response(200, "text/plain", "ready\n".into()),
            "/readyz" => text_response(503, "text/plain", "signing keys not loaded\n".into()),
            _ => text_response(404, "text/plain", "not found\n".into()),
        });
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = serve(listener, handler) => {}
        }
    }
}
