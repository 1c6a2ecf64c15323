//! Prometheus metrics, one registry per gateway (so several servers in one process, as in
//! tests, never share counters). Counters kept elsewhere as atomics (JWKS fetches, token cache
//! hits) are copied in at scrape time.

use std::sync::atomic::Ordering;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::auth::Verifier;
use crate::s3::CredentialCache;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub shadow_denials: IntCounterVec,
    pub reloads: IntCounterVec,
    pub restart_required: IntCounterVec,
    pub upgrades: IntCounterVec,
    pub head_timeouts: IntCounterVec,
    pub egress_requests: IntCounterVec,
    pub assertions: IntCounterVec,
    s3_credentials_source: prometheus::IntGaugeVec,
    s3_credentials_expiry: Gauge,
    s3_credential_refreshes: IntCounterVec,
    pub policy_generation: IntGauge,
    pub in_flight: IntGauge,
    pub upstream_errors: IntCounterVec,
    pub upstream_bytes: IntCounterVec,
    pub rate_limit_store_errors: IntCounterVec,
    jwks_fetches: IntCounter,
    jwks_failures: IntCounter,
    jwks_key_age: Gauge,
    token_cache_hits: IntCounter,
    token_cache_misses: IntCounter,
    token_cache_entries: IntGauge,
}

#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

/// Sets a counter to an externally kept total (which only grows).
fn sync_counter(c: &IntCounter, total: u64) {
    let cur = c.get();
    if total > cur {
        c.inc_by(total - cur);
    }
}

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let r = Registry::new();
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "portier_request_duration_seconds",
                "Time from request to the end of logging, by route",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )?;
        r.register(Box::new(latency.clone()))?;
        let policy_generation = IntGauge::new(
            "portier_policy_generation",
            "Generation of the policy set in use (1 at start)",
        )?;
        r.register(Box::new(policy_generation.clone()))?;
        let in_flight = IntGauge::new(
            "portier_requests_in_flight",
            "Requests being handled (what a drain on SIGTERM waits for)",
        )?;
        r.register(Box::new(in_flight.clone()))?;
        let jwks_key_age = Gauge::new(
            "portier_jwks_key_age_seconds",
            "Age of the signing keys in use",
        )?;
        r.register(Box::new(jwks_key_age.clone()))?;
        let token_cache_entries =
            IntGauge::new("portier_token_cache_entries", "Verified tokens cached")?;
        r.register(Box::new(token_cache_entries.clone()))?;
        let s3_credentials_source = prometheus::IntGaugeVec::new(
            Opts::new(
                "portier_s3_credentials_source",
                "1 for the source the bucket's AWS credentials come from",
            ),
            &["source"],
        )?;
        r.register(Box::new(s3_credentials_source.clone()))?;
        let s3_credentials_expiry = Gauge::new(
            "portier_s3_credentials_expiry_seconds",
            "Seconds until the AWS credentials in use expire (-1: static or none)",
        )?;
        r.register(Box::new(s3_credentials_expiry.clone()))?;
        Ok(Metrics {
            requests: counter_vec(
                &r,
                "portier_requests_total",
                "Requests by route, decision and reason",
                &["route", "decision", "reason"],
            )?,
            shadow_denials: counter_vec(
                &r,
                "portier_shadow_denials_total",
                "Requests a shadow rule would have refused",
                &["route", "reason"],
            )?,
            reloads: counter_vec(
                &r,
                "portier_policy_reloads_total",
                "Policy/config reloads by result",
                &["result"],
            )?,
            restart_required: counter_vec(
                &r,
                "portier_reload_restart_required_total",
                "Reloads that changed a config section only a restart applies, by section",
                &["section"],
            )?,
            s3_credentials_source,
            s3_credentials_expiry,
            s3_credential_refreshes: counter_vec(
                &r,
                "portier_s3_credential_refreshes_total",
                "Fetches of the bucket's AWS credentials, by result",
                &["result"],
            )?,
            egress_requests: counter_vec(
                &r,
                "portier_egress_requests_total",
                "Egress requests by service, S3 operation and result",
                &["service", "operation", "result"],
            )?,
            assertions: counter_vec(
                &r,
                "portier_assertions_total",
                "Identity assertions added to upstream requests, by upstream and result (cached, signed, error)",
                &["upstream", "result"],
            )?,
            upgrades: counter_vec(
                &r,
                "portier_upgrades_total",
                "Protocol upgrades (WebSocket) admitted, by route",
                &["route"],
            )?,
            head_timeouts: counter_vec(
                &r,
                "portier_request_head_timeouts_total",
                "Connections cut because a request head did not arrive whole in time (server.request_header_timeout_seconds), by listener",
                &["listener"],
            )?,
            upstream_errors: counter_vec(
                &r,
                "portier_upstream_errors_total",
                "Upstream failures by upstream and kind",
                &["upstream", "kind"],
            )?,
            upstream_bytes: counter_vec(
                &r,
                "portier_upstream_bytes_total",
                "Body bytes by upstream and direction",
                &["upstream", "direction"],
            )?,
            rate_limit_store_errors: counter_vec(
                &r,
                "portier_rate_limit_store_errors_total",
                "Rate-limit store failures by the outcome applied",
                &["outcome"],
            )?,
            jwks_fetches: counter(&r, "portier_jwks_fetches_total", "JWKS fetch attempts")?,
            jwks_failures: counter(
                &r,
                "portier_jwks_fetch_failures_total",
                "Failed JWKS fetches",
            )?,
            token_cache_hits: counter(
                &r,
                "portier_token_cache_hits_total",
                "Tokens served from the verified-token cache",
            )?,
            token_cache_misses: counter(
                &r,
                "portier_token_cache_misses_total",
                "Tokens that needed full verification",
            )?,
            latency,
            policy_generation,
            in_flight,
            jwks_key_age,
            token_cache_entries,
            registry: r,
        })
    }

    /// The Prometheus text exposition, with verifier figures brought up to date.
    pub fn render(&self, verifier: &Verifier, s3: Option<&CredentialCache>) -> String {
        if let Some(c) = s3 {
            self.s3_credentials_source.reset();
            self.s3_credentials_source
                .with_label_values(&[c.spec.source.name()])
                .set(1);
            self.s3_credentials_expiry
                .set(c.seconds_to_expiry().unwrap_or(-1.0));
            sync_counter(
                &self.s3_credential_refreshes.with_label_values(&["ok"]),
                c.refresh_ok.load(Ordering::Relaxed),
            );
            sync_counter(
                &self.s3_credential_refreshes.with_label_values(&["error"]),
                c.refresh_failed.load(Ordering::Relaxed),
            );
        }
        let st = &verifier.jwks.stats;
        sync_counter(&self.jwks_fetches, st.fetches.load(Ordering::Relaxed));
        sync_counter(&self.jwks_failures, st.failures.load(Ordering::Relaxed));
        sync_counter(
            &self.token_cache_hits,
            verifier.cache_hits.load(Ordering::Relaxed),
        );
        sync_counter(
            &self.token_cache_misses,
            verifier.cache_misses.load(Ordering::Relaxed),
        );
        self.jwks_key_age
            .set(verifier.jwks.key_age().map_or(-1.0, |d| d.as_secs_f64()));
        self.token_cache_entries.set(verifier.cache_len() as i64);
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            log::error!("metrics encoding failed: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
