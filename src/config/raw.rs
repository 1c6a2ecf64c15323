//! The raw `config.toml` schema, exactly as written: serde structs with `deny_unknown_fields`
//! and spans, and their defaults. Nothing here is checked; [`super::check`] turns it into
//! the checked [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::types::{Credentials, DecisionLogMode, HealthCheckKind, RateStoreKind, S3Addressing};
use crate::auth::MissingAzp;
use crate::guards::ratelimit::RedisFailure;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    pub(super) clerk: Spanned<RawClerk>,
    #[serde(default)]
    pub(super) identity_headers: RawHeaders,
    pub(super) upstreams: Spanned<BTreeMap<String, Spanned<RawUpstream>>>,
    #[serde(default)]
    pub(super) policies: RawPolicies,
    #[serde(default)]
    pub(super) admin: Option<Spanned<RawAdmin>>,
    #[serde(default)]
    pub(super) decision_log: RawDecisionLog,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) rate_limit: Option<Spanned<RawRateLimit>>,
    #[serde(default)]
    pub(super) webhooks: BTreeMap<String, Spanned<RawWebhook>>,
    #[serde(default)]
    pub(super) s3: Option<Spanned<RawS3>>,
    #[serde(default)]
    pub(super) egress: Option<Spanned<RawEgress>>,
    #[serde(default)]
    pub(super) assertion: Option<Spanned<RawAssertion>>,
    #[serde(default)]
    pub(super) pages: RawPages,
}

/// `[pages]`: redirects for people's navigations on page routes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPages {
    #[serde(default)]
    pub(super) sign_in_url: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) upgrade_url: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) public_origin: Option<Spanned<String>>,
}

/// `[assertion]`: the signed identity assertion for upstreams that verify it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAssertion {
    #[serde(default = "default_assertion_issuer")]
    pub(super) issuer: String,
    pub(super) upstreams: Spanned<Vec<String>>,
    #[serde(default = "default_assertion_ttl")]
    pub(super) ttl_seconds: Spanned<u64>,
    #[serde(default = "default_jwks_max_age")]
    pub(super) jwks_max_age_seconds: Spanned<u64>,
    #[serde(default)]
    pub(super) public_jwks_path: Option<Spanned<String>>,
    #[serde(default = "default_assertion_cache")]
    pub(super) cache_max_bytes: u64,
    #[serde(default)]
    pub(super) keys: Vec<Spanned<RawAssertionKey>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAssertionKey {
    pub(super) kid: String,
    #[serde(default)]
    pub(super) pem_file: Option<String>,
    #[serde(default)]
    pub(super) pem_env: Option<String>,
    #[serde(default)]
    pub(super) active: bool,
}

pub(super) fn default_assertion_issuer() -> String {
    "portier".into()
}
pub(super) fn default_assertion_ttl() -> Spanned<u64> {
    Spanned::new(0..0, 120)
}
pub(super) fn default_jwks_max_age() -> Spanned<u64> {
    Spanned::new(0..0, 300)
}
pub(super) fn default_assertion_cache() -> u64 {
    32 * 1024 * 1024
}

/// `[egress]`: the listener internal services reach the bucket through.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEgress {
    pub(super) listen: Spanned<String>,
    /// The bucket name the services use (default: `[s3] bucket`).
    #[serde(default)]
    pub(super) bucket: Option<Spanned<String>>,
    /// The region the services sign for (default: `[s3] region`).
    #[serde(default)]
    pub(super) region: Option<String>,
    #[serde(default)]
    pub(super) services: BTreeMap<String, Spanned<RawEgressService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEgressService {
    /// The local access key id the service signs with (not a secret).
    pub(super) access_key_id: Spanned<String>,
    /// The env var holding the service's local secret.
    pub(super) secret_env: String,
    #[serde(default)]
    pub(super) allow: Vec<RawEgressRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEgressRule {
    pub(super) operations: Spanned<Vec<String>>,
    pub(super) keys: Spanned<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawS3 {
    /// `https://s3.<region>.amazonaws.com`, or any S3-compatible endpoint.
    pub(super) endpoint: Spanned<String>,
    pub(super) region: Spanned<String>,
    pub(super) bucket: Spanned<String>,
    #[serde(default = "default_addressing")]
    pub(super) addressing: S3Addressing,
    /// Env vars holding a static key pair; giving any of them selects that source.
    #[serde(default)]
    pub(super) access_key_id_env: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) secret_access_key_env: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) session_token_env: Option<Spanned<String>>,
    /// Where credentials come from (default: the AWS SDKs' default chain).
    #[serde(default)]
    pub(super) credentials: Option<Spanned<RawCredentials>>,
    #[serde(default = "default_presign")]
    pub(super) presign_default_seconds: u64,
    #[serde(default = "default_presign")]
    pub(super) presign_max_seconds: u64,
    /// Presigned GET URLs of one key are the same within this window (signing time rounded
    /// down), so browsers and CDNs cache the object; 0 signs each URL at the current second.
    #[serde(default = "default_presign_stable")]
    pub(super) presign_stable_seconds: u64,
    /// Where file API uploads that name their key after the file are spooled (default: the
    /// system temp directory).
    #[serde(default)]
    pub(super) spool_dir: Option<String>,
    #[serde(default = "default_connect_timeout")]
    pub(super) connect_timeout_ms: u64,
    #[serde(default = "default_s3_read_timeout")]
    pub(super) read_timeout_ms: u64,
}

pub(super) fn default_addressing() -> S3Addressing {
    S3Addressing::VirtualHosted
}
/// `[s3.credentials]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredentials {
    pub(super) source: RawCredentialSource,
    #[serde(default)]
    pub(super) profile: Option<String>,
    #[serde(default)]
    pub(super) config_file: Option<String>,
    #[serde(default)]
    pub(super) credentials_file: Option<String>,
    #[serde(default)]
    pub(super) token_file: Option<String>,
    #[serde(default)]
    pub(super) role_arn: Option<String>,
    #[serde(default)]
    pub(super) session_name: Option<String>,
    #[serde(default)]
    pub(super) endpoint: Option<String>,
    #[serde(default)]
    pub(super) assume_role_arn: Option<String>,
    #[serde(default)]
    pub(super) assume_role_session_name: Option<String>,
    #[serde(default)]
    pub(super) assume_role_external_id: Option<String>,
    #[serde(default)]
    pub(super) assume_role_duration_seconds: Option<u64>,
    #[serde(default)]
    pub(super) sts_endpoint: Option<String>,
    #[serde(default = "default_refresh_before")]
    pub(super) refresh_before_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawCredentialSource {
    Default,
    Static,
    Env,
    Profile,
    WebIdentity,
    Container,
    InstanceMetadata,
}

pub(super) fn default_refresh_before() -> u64 {
    600
}
pub(super) fn default_ak_env() -> String {
    "AWS_ACCESS_KEY_ID".into()
}
pub(super) fn default_sk_env() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}
pub(super) fn default_token_env() -> String {
    "AWS_SESSION_TOKEN".into()
}
pub(super) fn default_presign() -> u64 {
    3600
}
pub(super) fn default_presign_stable() -> u64 {
    300
}
pub(super) fn default_s3_read_timeout() -> u64 {
    60_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    #[serde(default = "default_max_body")]
    pub(super) max_body_bytes: u64,
    #[serde(default = "default_max_header")]
    pub(super) max_header_bytes: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_body_bytes: default_max_body(),
            max_header_bytes: default_max_header(),
        }
    }
}

pub(super) fn default_max_body() -> u64 {
    10 * 1024 * 1024
}
pub(super) fn default_max_header() -> usize {
    32 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub(super) store: RateStoreKind,
    /// Env var holding the Redis URL (it may carry a password).
    #[serde(default)]
    pub(super) redis_url_env: Option<String>,
    /// A Redis URL without credentials, for local setups.
    #[serde(default)]
    pub(super) redis_url: Option<String>,
    #[serde(default = "default_redis_failure")]
    pub(super) on_redis_failure: RedisFailure,
    #[serde(default = "default_redis_timeout")]
    pub(super) redis_timeout_ms: u64,
}

pub(super) fn default_redis_failure() -> RedisFailure {
    RedisFailure::Open
}
pub(super) fn default_redis_timeout() -> u64 {
    200
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    /// Env vars each holding one secret (`whsec_...`); several for rotation.
    pub(super) secrets_env: Vec<String>,
    #[serde(default = "default_tolerance")]
    pub(super) tolerance_seconds: i64,
}

pub(super) fn default_tolerance() -> i64 {
    300
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDecisionLog {
    #[serde(default = "default_log_mode")]
    pub(super) mode: DecisionLogMode,
    #[serde(default = "default_sample")]
    pub(super) sample_rate: Spanned<f64>,
    /// A file to append JSON lines to; standard output when absent.
    #[serde(default)]
    pub(super) path: Option<String>,
}

impl Default for RawDecisionLog {
    fn default() -> Self {
        RawDecisionLog {
            mode: default_log_mode(),
            sample_rate: Spanned::new(0..0, 1.0),
            path: None,
        }
    }
}

pub(super) fn default_log_mode() -> DecisionLogMode {
    DecisionLogMode::All
}
pub(super) fn default_sample() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    #[serde(default = "default_listen")]
    pub(super) listen: Spanned<Vec<String>>,
    #[serde(default = "default_threads")]
    pub(super) threads: usize,
    #[serde(default = "default_grace")]
    pub(super) grace_period_seconds: u64,
    #[serde(default = "default_grace")]
    pub(super) graceful_shutdown_timeout_seconds: u64,
    /// Proxies whose `X-Forwarded-For` is believed when finding the client address.
    #[serde(default)]
    pub(super) trusted_proxies: Option<Spanned<Vec<String>>>,
    /// The Unix socket listening sockets are handed over on (`portier run --upgrade`).
    #[serde(default = "default_upgrade_sock")]
    pub(super) upgrade_sock: String,
    /// A client that sends no byte of its request body (or of its next request on a kept-alive
    /// connection) for this long is answered 408 and disconnected.
    #[serde(default = "default_body_idle")]
    pub(super) body_idle_timeout_seconds: u64,
    /// A request head must arrive whole within this long of its first byte (of the accept,
    /// for a connection's first request): slow-loris clients are cut.
    #[serde(default = "default_header_timeout")]
    pub(super) request_header_timeout_seconds: u64,
}

pub(super) fn default_header_timeout() -> u64 {
    10
}

pub(super) fn default_body_idle() -> u64 {
    60
}

pub(super) fn default_upgrade_sock() -> String {
    "/tmp/portier_upgrade.sock".into()
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: default_listen(),
            threads: default_threads(),
            grace_period_seconds: default_grace(),
            graceful_shutdown_timeout_seconds: default_grace(),
            trusted_proxies: None,
            upgrade_sock: default_upgrade_sock(),
            body_idle_timeout_seconds: default_body_idle(),
            request_header_timeout_seconds: default_header_timeout(),
        }
    }
}

pub(super) fn default_listen() -> Spanned<Vec<String>> {
    Spanned::new(0..0, vec!["127.0.0.1:8080".to_string()])
}
pub(super) fn default_threads() -> usize {
    1
}
pub(super) fn default_grace() -> u64 {
    5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClerk {
    pub(super) issuer: Spanned<String>,
    #[serde(default)]
    pub(super) authorized_parties: Vec<String>,
    #[serde(default = "default_missing_azp")]
    pub(super) missing_azp: MissingAzp,
    #[serde(default = "default_leeway")]
    pub(super) leeway_seconds: u64,
    #[serde(default = "default_algorithms")]
    pub(super) algorithms: Spanned<Vec<String>>,
    #[serde(default = "default_max_token")]
    pub(super) max_token_bytes: usize,
    #[serde(default = "default_token_cache")]
    pub(super) token_cache_capacity: u64,
    #[serde(default)]
    pub(super) cookie_suffix: Option<Spanned<String>>,
    /// The instance's publishable key (public): the session cookie suffix is derived from it.
    #[serde(default)]
    pub(super) publishable_key: Option<Spanned<String>>,
    pub(super) jwks: Spanned<RawJwks>,
}

pub(super) fn default_missing_azp() -> MissingAzp {
    MissingAzp::Reject
}
pub(super) fn default_leeway() -> u64 {
    5
}
pub(super) fn default_algorithms() -> Spanned<Vec<String>> {
    Spanned::new(0..0, vec!["RS256".to_string()])
}
pub(super) fn default_max_token() -> usize {
    8192
}
pub(super) fn default_token_cache() -> u64 {
    100_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJwks {
    /// Clerk Frontend API base URL; keys at `<url>/.well-known/jwks.json`.
    #[serde(default)]
    pub(super) frontend_api: Option<Spanned<String>>,
    /// Clerk Backend API base URL (normally `https://api.clerk.com`); keys at `/v1/jwks`.
    #[serde(default)]
    pub(super) backend_api: Option<Spanned<String>>,
    /// Env var holding the Clerk secret key, for `backend_api`.
    #[serde(default)]
    pub(super) secret_key_env: Option<Spanned<String>>,
    /// A full JWKS URL.
    #[serde(default)]
    pub(super) url: Option<Spanned<String>>,
    /// A PEM public key file (networkless verification).
    #[serde(default)]
    pub(super) pem_file: Option<Spanned<String>>,
    /// Env var holding the PEM public key (Clerk's `CLERK_JWT_KEY`).
    #[serde(default)]
    pub(super) pem_env: Option<Spanned<String>>,
    #[serde(default = "default_ttl")]
    pub(super) ttl_seconds: u64,
    #[serde(default = "default_cooldown")]
    pub(super) unknown_kid_cooldown_seconds: u64,
    #[serde(default = "default_fetch_timeout")]
    pub(super) fetch_timeout_ms: u64,
    #[serde(default = "default_backoff")]
    pub(super) failure_backoff_seconds: u64,
    #[serde(default = "default_max_stale")]
    pub(super) max_stale_seconds: u64,
}

pub(super) fn default_ttl() -> u64 {
    300
}
pub(super) fn default_cooldown() -> u64 {
    10
}
pub(super) fn default_fetch_timeout() -> u64 {
    5000
}
pub(super) fn default_backoff() -> u64 {
    5
}
pub(super) fn default_max_stale() -> u64 {
    86_400
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaders {
    pub(super) user_id: Option<Spanned<String>>,
    pub(super) session_id: Option<Spanned<String>>,
    pub(super) org_id: Option<Spanned<String>>,
    pub(super) org_slug: Option<Spanned<String>>,
    pub(super) org_role: Option<Spanned<String>>,
    pub(super) org_permissions: Option<Spanned<String>>,
    pub(super) plans: Option<Spanned<String>>,
    pub(super) features: Option<Spanned<String>>,
    pub(super) actor: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) peers: Spanned<Vec<String>>,
    #[serde(default)]
    pub(super) tls: bool,
    #[serde(default)]
    pub(super) sni: Option<String>,
    #[serde(default = "default_connect_timeout")]
    pub(super) connect_timeout_ms: u64,
    #[serde(default = "default_read_timeout")]
    pub(super) read_timeout_ms: u64,
    #[serde(default = "default_credentials")]
    pub(super) credentials: Credentials,
    #[serde(default)]
    pub(super) health_check: Option<Spanned<RawHealthCheck>>,
}

pub(super) fn default_connect_timeout() -> u64 {
    2000
}
pub(super) fn default_read_timeout() -> u64 {
    30_000
}
pub(super) fn default_credentials() -> Credentials {
    Credentials::Strip
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    pub(super) kind: HealthCheckKind,
    #[serde(default)]
    pub(super) path: Option<String>,
    #[serde(default = "default_hc_interval")]
    pub(super) interval_seconds: u64,
}

pub(super) fn default_hc_interval() -> u64 {
    5
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicies {
    #[serde(default)]
    pub(super) dir: Option<String>,
    /// How often the policies directory and config file are checked for changes; 0 = never
    /// (SIGHUP still reloads).
    #[serde(default)]
    pub(super) reload_poll_ms: Option<u64>,
    /// Declared plan names: `check` refuses policies naming others. Empty = not declared.
    #[serde(default)]
    pub(super) plans: Vec<String>,
    #[serde(default)]
    pub(super) features: Vec<String>,
}
