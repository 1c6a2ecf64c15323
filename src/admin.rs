//! Background services beside the proxy: the admin endpoint (`/metrics` in Prometheus text,
//! `/healthz`, `/readyz`, the assertion keys at `/.well-known/jwks.json`), the credential
//! refresher and the decision-log flusher.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::serve::{serve, text_response};
use crate::state::Gateway;

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

/// Background service: fetches the bucket's AWS credentials at start and refreshes them
/// ahead of expiry. It follows the live state, so a reload that changes `[s3]` gets its new
/// credentials on the next round.
pub struct CredentialRefresher {
    pub gateway: Arc<Gateway>,
}

#[async_trait]
impl BackgroundService for CredentialRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let live = self.gateway.live();
            let wait = match &live.s3 {
                Some(b) => {
                    let due = b.creds.tick().await;
                    due.saturating_duration_since(std::time::Instant::now())
                        .min(Duration::from_secs(1))
                }
                None => Duration::from_secs(1),
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
            }
        }
    }
}

/// Background service of `portier run`: once shutdown starts (SIGTERM, or SIGQUIT after the
/// listening sockets went to a new process) and the listeners stopped accepting, waits for the
/// requests in flight to finish, flushes the decision log and exits. Pingora itself would wait
/// the whole grace period and then cancel whatever is still running; this ends the process as
/// soon as nothing is, and `grace_period_seconds` is the longest drain.
pub struct Drain {
    pub gateway: Arc<Gateway>,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let started = std::time::Instant::now();
        log::info!(
            "draining: {} request(s) in flight, new connections refused",
            self.gateway.in_flight()
        );
        while self.gateway.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.gateway.flush_logs();
        log::info!("drained in {:?}; exiting", started.elapsed());
        std::process::exit(0);
    }
}

/// Background service: `/metrics`, `/healthz`, `/readyz` on the admin address (bound when the
/// server was built; taken once, when the service starts).
pub struct Admin {
    pub gateway: Arc<Gateway>,
    pub listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

#[async_trait]
impl BackgroundService for Admin {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let taken = self.listener.lock().ok().and_then(|mut l| l.take());
        let Some(std_listener) = taken else {
            log::error!("admin listener started twice");
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                log::error!("admin listener: {e}");
                return;
            }
        };
        let gw = self.gateway.clone();
        let handler = Arc::new(move |parts: http::request::Parts| match parts.uri.path() {
            "/metrics" => text_response(200, "text/plain; version=0.0.4", gw.render_metrics()),
            "/healthz" => text_response(200, "text/plain", "ok\n".into()),
            crate::assertion::JWKS_PATH => jwks_response(&gw),
            "/readyz" => match gw.readiness() {
                Ok(()) => text_response(200, "text/plain", "ready\n".into()),
                Err(why) => text_response(503, "text/plain", format!("{why}\n")),
            },
            _ => text_response(404, "text/plain", "not found\n".into()),
        });
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = serve(listener, handler) => {}
        }
    }
}

/// The assertion keys as a JWKS, with the configured cache lifetime; 404 without `[assertion]`.
fn jwks_response(gw: &Gateway) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    match &gw.live().assertion {
        Some(signer) => {
            let mut resp = text_response(200, "application/json", signer.jwks_json().to_owned());
            if let Ok(v) = http::HeaderValue::from_str(&signer.jwks_cache_control()) {
                resp.headers_mut().insert(http::header::CACHE_CONTROL, v);
            }
            resp
        }
        None => text_response(404, "text/plain", "no [assertion] configured\n".into()),
    }
}
