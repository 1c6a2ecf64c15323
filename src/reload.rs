//! Hot reload: reading `config.toml` and the policies again, off the request path, and
//! installing the result with one atomic swap; requests in flight finish on the state they
//! started with. Anything invalid refuses the whole reload: the last good state keeps
//! serving, the error is logged with file and line, and `portier_policy_reloads_total
//! {result="error"}` counts it. Config sections only a restart applies (listeners, threads,
//! upstreams, admin, decision log, rate-limit store) are reported and counted
//! (`portier_reload_restart_required_total{section}`), not applied.
//!
//! Changes are noticed by polling a fingerprint of the files (editors replace files by
//! rename, which inotify-style watchers miss or double-report) and on SIGHUP.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::Config;
use crate::state::{ConfigInput, Gateway, Live, StartError};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("reload task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}; the current S3 credentials keep serving")]
    S3Credentials(String),
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
        let result = tokio::task::spawn_blocking(move || gw.prepare()).await;
        let result = match result.map_err(ReloadError::from).and_then(|r| Ok(r?)) {
            // New S3 credentials are loaded before the swap, never by requests after it.
            Ok((live, restart)) => live
                .load_new_credentials(&self.live())
                .await
                .map(|()| (live, restart))
                .map_err(ReloadError::S3Credentials),
            Err(e) => Err(e),
        };
        match result {
            Ok((live, restart_required)) => {
                let generation = live.generation;
                self.install(live);
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                for what in &restart_required {
                    self.metrics
                        .restart_required
                        .with_label_values(&[what])
                        .inc();
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
    fn prepare(&self) -> Result<(Live, Vec<&'static str>), StartError> {
        let cur = self.live();
        let cfg = match &self.sources.config {
            ConfigInput::File(p) => Arc::new(Config::load(p).map_err(StartError::Config)?),
            ConfigInput::Fixed => cur.config.clone(),
        };
        Live::build(cfg, &self.sources, Some(&cur))
    }

    /// A fingerprint of every file a reload reads; it changes when any of them does.
    fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        let mut add = |p: &Path| {
            p.hash(&mut h);
            std::fs::read(p).ok().hash(&mut h);
        };
        if let ConfigInput::File(c) = &self.sources.config {
            add(c);
        }
        if let Some(dir) = self.sources.policies_dir(&self.live().config) {
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

/// Background service: reloads when the files change (polling) or on SIGHUP. The poll period
/// is read from the live config each round, so a change to `policies.reload_poll_ms` applies
/// at the next round.
pub struct Reloader {
    pub gateway: Arc<Gateway>,
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let gw = &self.gateway;
        if !gw.sources.reloadable() {
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
        loop {
            let poll = gw.live().config.reload_poll;
            // Without polling, wait (nearly) forever for SIGHUP or shutdown.
            let period = poll.unwrap_or(Duration::from_secs(86_400));
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
            if !signalled && poll.is_none() {
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
