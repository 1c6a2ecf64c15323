//! `config.toml`: the raw serde schema (unknown keys are errors) and its conversion into the
//! checked [`Config`] the server runs on. Every problem is reported at once, as
//! `file:line:col: key: message`. Secrets are never in this file: it names the environment
//! variables or files that hold them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use toml::Spanned;

use crate::auth::jwks::JwksTiming;
use crate::auth::{MissingAzp, VerifierSettings};
use crate::diag::{from_toml_error, Diagnostic, Diagnostics};

// === raw schema ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    clerk: Spanned<RawClerk>,
    #[serde(default)]
    identity_headers: RawHeaders,
    upstreams: Spanned<BTreeMap<String, Spanned<RawUpstream>>>,
    #[serde(default)]
    policies: RawPolicies,
    #[serde(default)]
    admin: Option<Spanned<RawAdmin>>,
    #[serde(default)]
    decision_log: RawDecisionLog,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    rate_limit: Option<Spanned<RawRateLimit>>,
    #[serde(default)]
    webhooks: BTreeMap<String, Spanned<RawWebhook>>,
    #[serde(default)]
    s3: Option<Spanned<RawS3>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    /// `https://s3.<region>.amazonaws.com`, or any S3-compatible endpoint.
    endpoint: Spanned<String>,
    region: String,
    bucket: String,
    #[serde(default = "default_addressing")]
    addressing: S3Addressing,
    #[serde(default = "default_ak_env")]
    access_key_id_env: String,
    #[serde(default = "default_sk_env")]
    secret_access_key_env: String,
    #[serde(default = "default_token_env")]
    session_token_env: String,
    #[serde(default = "default_presign")]
    presign_default_seconds: u64,
    #[serde(default = "default_presign")]
    presign_max_seconds: u64,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_ms: u64,
    #[serde(default = "default_s3_read_timeout")]
    read_timeout_ms: u64,
}

fn default_addressing() -> S3Addressing {
    S3Addressing::VirtualHosted
}
fn default_ak_env() -> String {
    "AWS_ACCESS_KEY_ID".into()
}
fn default_sk_env() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}
fn default_token_env() -> String {
    "AWS_SESSION_TOKEN".into()
}
fn default_presign() -> u64 {
    3600
}
fn default_s3_read_timeout() -> u64 {
    60_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum S3Addressing {
    Path,
    VirtualHosted,
}

/// The bucket behind the reserved upstream `s3`.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Config {
    pub target: crate::s3::S3Target,
    pub env: crate::s3::EnvNames,
    pub presign_default: Duration,
    pub presign_max: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default = "default_max_body")]
    max_body_bytes: u64,
    #[serde(default = "default_max_header")]
    max_header_bytes: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_body_bytes: default_max_body(),
            max_header_bytes: default_max_header(),
        }
    }
}

fn default_max_body() -> u64 {
    10 * 1024 * 1024
}
fn default_max_header() -> usize {
    32 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    store: RateStoreKind,
    /// Env var holding the Redis URL (it may carry a password).
    #[serde(default)]
    redis_url_env: Option<String>,
    /// A Redis URL without credentials, for local setups.
    #[serde(default)]
    redis_url: Option<String>,
    #[serde(default = "default_redis_failure")]
    on_redis_failure: crate::guards::ratelimit::RedisFailure,
    #[serde(default = "default_redis_timeout")]
    redis_timeout_ms: u64,
}

fn default_redis_failure() -> crate::guards::ratelimit::RedisFailure {
    crate::guards::ratelimit::RedisFailure::Open
}
fn default_redis_timeout() -> u64 {
    200
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    /// Env vars each holding one secret (`whsec_...`); several for rotation.
    secrets_env: Vec<String>,
    #[serde(default = "default_tolerance")]
    tolerance_seconds: i64,
}

fn default_tolerance() -> i64 {
    300
}

/// Where rate-limit counters and webhook replay ids live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateStoreKind {
    /// In this process: exact for one replica.
    Memory,
    /// In Redis: shared by every replica.
    Redis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    pub store: RateStoreKind,
    /// Resolved at start-up from the env var or the plain URL.
    pub redis_url_env: Option<String>,
    pub redis_url: Option<String>,
    pub on_redis_failure: crate::guards::ratelimit::RedisFailure,
    pub redis_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub name: String,
    pub secrets_env: Vec<String>,
    pub tolerance_seconds: i64,
}

/// An address range (`10.0.0.0/8`, `::1/128`, or a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecisionLog {
    #[serde(default = "default_log_mode")]
    mode: DecisionLogMode,
    #[serde(default = "default_sample")]
    sample_rate: Spanned<f64>,
    /// A file to append JSON lines to; standard output when absent.
    #[serde(default)]
    path: Option<String>,
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

fn default_log_mode() -> DecisionLogMode {
    DecisionLogMode::All
}
fn default_sample() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_listen")]
    listen: Spanned<Vec<String>>,
    #[serde(default = "default_threads")]
    threads: usize,
    #[serde(default = "default_grace")]
    grace_period_seconds: u64,
    #[serde(default = "default_grace")]
    graceful_shutdown_timeout_seconds: u64,
    /// Proxies whose `X-Forwarded-For` is believed when finding the client address.
    #[serde(default)]
    trusted_proxies: Option<Spanned<Vec<String>>>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: default_listen(),
            threads: default_threads(),
            grace_period_seconds: default_grace(),
            graceful_shutdown_timeout_seconds: default_grace(),
            trusted_proxies: None,
        }
    }
}

fn default_listen() -> Spanned<Vec<String>> {
    Spanned::new(0..0, vec!["127.0.0.1:8080".to_string()])
}
fn default_threads() -> usize {
    1
}
fn default_grace() -> u64 {
    5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClerk {
    issuer: Spanned<String>,
    #[serde(default)]
    authorized_parties: Vec<String>,
    #[serde(default = "default_missing_azp")]
    missing_azp: MissingAzp,
    #[serde(default = "default_leeway")]
    leeway_seconds: u64,
    #[serde(default = "default_algorithms")]
    algorithms: Spanned<Vec<String>>,
    #[serde(default = "default_max_token")]
    max_token_bytes: usize,
    #[serde(default = "default_token_cache")]
    token_cache_capacity: u64,
    #[serde(default)]
    cookie_suffix: Option<Spanned<String>>,
    jwks: Spanned<RawJwks>,
}

fn default_missing_azp() -> MissingAzp {
    MissingAzp::Reject
}
fn default_leeway() -> u64 {
    5
}
fn default_algorithms() -> Spanned<Vec<String>> {
    Spanned::new(0..0, vec!["RS256".to_string()])
}
fn default_max_token() -> usize {
    8192
}
fn default_token_cache() -> u64 {
    100_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwks {
    /// Clerk Frontend API base URL; keys at `<url>/.well-known/jwks.json`.
    #[serde(default)]
    frontend_api: Option<Spanned<String>>,
    /// Clerk Backend API base URL (normally `https://api.clerk.com`); keys at `/v1/jwks`.
    #[serde(default)]
    backend_api: Option<Spanned<String>>,
    /// Env var holding the Clerk secret key, for `backend_api`.
    #[serde(default)]
    secret_key_env: Option<Spanned<String>>,
    /// A full JWKS URL.
    #[serde(default)]
    url: Option<Spanned<String>>,
    /// A PEM public key file (networkless verification).
    #[serde(default)]
    pem_file: Option<Spanned<String>>,
    /// Env var holding the PEM public key (Clerk's `CLERK_JWT_KEY`).
    #[serde(default)]
    pem_env: Option<Spanned<String>>,
    #[serde(default = "default_ttl")]
    ttl_seconds: u64,
    #[serde(default = "default_cooldown")]
    unknown_kid_cooldown_seconds: u64,
    #[serde(default = "default_fetch_timeout")]
    fetch_timeout_ms: u64,
    #[serde(default = "default_backoff")]
    failure_backoff_seconds: u64,
    #[serde(default = "default_max_stale")]
    max_stale_seconds: u64,
}

fn default_ttl() -> u64 {
    300
}
fn default_cooldown() -> u64 {
    10
}
fn default_fetch_timeout() -> u64 {
    5000
}
fn default_backoff() -> u64 {
    5
}
fn default_max_stale() -> u64 {
    86_400
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHeaders {
    user_id: Option<Spanned<String>>,
    session_id: Option<Spanned<String>>,
    org_id: Option<Spanned<String>>,
    org_slug: Option<Spanned<String>>,
    org_role: Option<Spanned<String>>,
    org_permissions: Option<Spanned<String>>,
    plans: Option<Spanned<String>>,
    features: Option<Spanned<String>>,
    actor: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    peers: Spanned<Vec<String>>,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    sni: Option<String>,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_ms: u64,
    #[serde(default = "default_read_timeout")]
    read_timeout_ms: u64,
    #[serde(default = "default_credentials")]
    credentials: Credentials,
    #[serde(default)]
    health_check: Option<Spanned<RawHealthCheck>>,
}

fn default_connect_timeout() -> u64 {
    2000
}
fn default_read_timeout() -> u64 {
    30_000
}
fn default_credentials() -> Credentials {
    Credentials::Strip
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    kind: HealthCheckKind,
    #[serde(default)]
    path: Option<String>,
    #[serde(default = "default_hc_interval")]
    interval_seconds: u64,
}

fn default_hc_interval() -> u64 {
    5
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicies {
    #[serde(default)]
    dir: Option<String>,
    /// How often the policies directory and config file are checked for changes; 0 = never
    /// (SIGHUP still reloads).
    #[serde(default)]
    reload_poll_ms: Option<u64>,
    /// Declared plan names: `check` refuses policies naming others. Empty = not declared.
    #[serde(default)]
    plans: Vec<String>,
    #[serde(default)]
    features: Vec<String>,
}

/// Which decisions the decision log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionLogMode {
    /// Every request (allowed ones sampled by `sample_rate`).
    All,
    /// Refusals and shadow refusals only.
    Deny,
    Off,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecisionLogConfig {
    pub mode: DecisionLogMode,
    pub sample_rate: f64,
    pub path: Option<PathBuf>,
}

// === checked runtime types ===

/// Whether the caller's Clerk credentials (`Authorization`, `__session`/`__client_uat`/`__clerk*`
/// cookies) go on to an upstream. Next.js needs them for its own middleware; Flask does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credentials {
    Forward,
    Strip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    Tcp,
    Http,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    pub path: String,
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub peers: Vec<SocketAddr>,
    pub tls: bool,
    pub sni: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub credentials: Credentials,
    pub health_check: Option<HealthCheck>,
}

/// Where signing keys come from, with secrets still named (resolved at start-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSourceConfig {
    Url {
        url: http::Uri,
        secret_key_env: Option<String>,
    },
    PemFile(PathBuf),
    PemEnv(String),
}

/// Names of the identity headers set on allowed requests (lower-case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    pub user_id: String,
    pub session_id: String,
    pub org_id: String,
    pub org_slug: String,
    pub org_role: String,
    pub org_permissions: String,
    pub plans: String,
    pub features: String,
    pub actor: String,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders {
            user_id: "x-portier-user-id".into(),
            session_id: "x-portier-session-id".into(),
            org_id: "x-portier-org-id".into(),
            org_slug: "x-portier-org-slug".into(),
            org_role: "x-portier-org-role".into(),
            org_permissions: "x-portier-org-permissions".into(),
            plans: "x-portier-plans".into(),
            features: "x-portier-features".into(),
            actor: "x-portier-actor".into(),
        }
    }
}

impl IdentityHeaders {
    pub fn all(&self) -> [&str; 9] {
        [
            &self.user_id,
            &self.session_id,
            &self.org_id,
            &self.org_slug,
            &self.org_role,
            &self.org_permissions,
            &self.plans,
            &self.features,
            &self.actor,
        ]
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub server: ServerSettings,
    pub verifier: VerifierSettings,
    pub jwks_source: JwksSourceConfig,
    pub jwks_timing: JwksTiming,
    pub headers: IdentityHeaders,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub policies_dir: PathBuf,
    pub reload_poll: Option<Duration>,
    pub declared: crate::policy::lint::Declared,
    pub admin_listen: Option<SocketAddr>,
    pub decision_log: DecisionLogConfig,
    pub limits: Limits,
    pub rate_limit: RateLimitConfig,
    pub webhooks: BTreeMap<String, WebhookConfig>,
    /// Proxies whose `X-Forwarded-For` is believed when finding the client address.
    pub trusted_proxies: Vec<Cidr>,
    pub s3: Option<S3Config>,
}

impl Config {
    pub fn load(file: &Path) -> Result<Config, Diagnostics> {
        let src = std::fs::read_to_string(file).map_err(|e| {
            Diagnostics(vec![Diagnostic::file(
                file,
                "file",
                format!("cannot read: {e}"),
            )])
        })?;
        Self::parse(file, &src)
    }

    /// Parses config text; `file` names it in diagnostics and anchors relative paths.
    pub fn parse(file: &Path, src: &str) -> Result<Config, Diagnostics> {
        let raw: RawConfig =
            toml::from_str(src).map_err(|e| Diagnostics(vec![from_toml_error(file, src, &e)]))?;
        Checker {
            file,
            src,
            diags: Diagnostics::default(),
        }
        .check(raw)
    }

    pub fn upstream_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
        if self.s3.is_some() {
            names.push(crate::S3_UPSTREAM);
        }
        names
    }

    pub fn webhook_names(&self) -> Vec<&str> {
        self.webhooks.keys().map(String::as_str).collect()
    }

    /// Loads and compiles the policies this config names.
    pub fn load_policies(&self) -> Result<crate::policy::PolicySet, Diagnostics> {
        let ups = self.upstream_names();
        let hooks = self.webhook_names();
        crate::policy::PolicySet::load_dir_with(
            &self.policies_dir,
            crate::policy::Known {
                upstreams: &ups,
                webhooks: &hooks,
            },
        )
    }
}

struct Checker<'a> {
    file: &'a Path,
    src: &'a str,
    diags: Diagnostics,
}

fn is_loopback_host(uri: &http::Uri) -> bool {
    match uri.host() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

impl Checker<'_> {
    fn err(&mut self, at: usize, key: &str, msg: impl Into<String>) {
        self.diags
            .push(Diagnostic::at(self.file, self.src, at, key, msg.into()));
    }

    fn header_name(&mut self, v: Option<Spanned<String>>, key: &str, default: String) -> String {
        let Some(v) = v else { return default };
        let at = v.span().start;
        let name = v.into_inner().to_ascii_lowercase();
        if http::header::HeaderName::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
            self.err(at, key, format!("{name:?} is not a valid header name"));
        }
        name
    }

    /// A JWKS URL: https, or http to a loopback address only (tests, local issuers).
    fn jwks_url(&mut self, s: &Spanned<String>, key: &str) -> Option<http::Uri> {
        let at = s.span().start;
        match s.get_ref().parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => Some(u),
            Ok(u) if u.scheme_str() == Some("http") && is_loopback_host(&u) => Some(u),
            Ok(_) => {
                self.err(
                    at,
                    key,
                    "must be an https:// URL (http:// only to a loopback address)",
                );
                None
            }
            Err(e) => {
                self.err(at, key, format!("not a URL: {e}"));
                None
            }
        }
    }

    fn check(mut self, mut raw: RawConfig) -> Result<Config, Diagnostics> {
        let base = self.file.parent().unwrap_or(Path::new(".")).to_path_buf();

        // server
        let listen_at = raw.server.listen.span().start;
        let mut listen = Vec::new();
        for l in raw.server.listen.get_ref() {
            match l.parse::<SocketAddr>() {
                Ok(a) => listen.push(a),
                Err(_) => self.err(
                    listen_at,
                    "server.listen",
                    format!("{l:?} is not an address:port"),
                ),
            }
        }
        if listen.is_empty() {
            self.err(
                listen_at,
                "server.listen",
                "at least one listen address is required",
            );
        }
        if raw.server.threads == 0 {
            self.err(listen_at, "server.threads", "must be at least 1");
        }
        let server = ServerSettings {
            listen,
            threads: raw.server.threads.max(1),
            grace_period: Duration::from_secs(raw.server.grace_period_seconds),
            graceful_shutdown_timeout: Duration::from_secs(
                raw.server.graceful_shutdown_timeout_seconds,
            ),
        };

        // clerk
        let clerk_at = raw.clerk.span().start;
        let clerk = raw.clerk.into_inner();
        let iss_at = clerk.issuer.span().start;
        let issuer = clerk.issuer.into_inner();
        match issuer.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() && !issuer.ends_with('/') => {}
            _ => self.err(
                iss_at,
                "clerk.issuer",
                "must be the exact https:// Frontend API URL, without a trailing '/' (development issuers are never trusted here)",
            ),
        }
        for p in &clerk.authorized_parties {
            if p.ends_with('/') || !(p.starts_with("https://") || p.starts_with("http://")) {
                self.err(
                    clerk_at,
                    "clerk.authorized_parties",
                    format!("{p:?} must be an origin like https://app.example.com"),
                );
            }
        }
        let alg_at = clerk.algorithms.span().start;
        let mut algorithms = Vec::new();
        for a in clerk.algorithms.get_ref() {
            match a.as_str() {
                "RS256" => algorithms.push(Algorithm::RS256),
                "RS384" => algorithms.push(Algorithm::RS384),
                "RS512" => algorithms.push(Algorithm::RS512),
                other => self.err(alg_at, "clerk.algorithms", format!("{other:?} is not accepted: Clerk signs with RS256; only RSA algorithms can be listed")),
            }
        }
        if clerk.algorithms.get_ref().is_empty() {
            self.err(alg_at, "clerk.algorithms", "list at least RS256");
        }
        if clerk.leeway_seconds > 60 {
            self.err(
                clerk_at,
                "clerk.leeway_seconds",
                "at most 60 (Clerk tokens live 60 s)",
            );
        }
        if !(512..=65_536).contains(&clerk.max_token_bytes) {
            self.err(
                clerk_at,
                "clerk.max_token_bytes",
                "must be between 512 and 65536",
            );
        }
        let cookie_suffix = clerk.cookie_suffix.map(|s| {
            let at = s.span().start;
            let s = s.into_inner();
            if s.len() != 8
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                self.err(
                    at,
                    "clerk.cookie_suffix",
                    "must be the 8-character suffix of __session_<suffix>",
                );
            }
            s
        });

        // jwks
        let jwks_at = clerk.jwks.span().start;
        let j = clerk.jwks.into_inner();
        let mut sources = Vec::new();
        if let Some(u) = &j.frontend_api {
            if let Some(base) = self.jwks_url(u, "clerk.jwks.frontend_api") {
                let s = format!(
                    "{}/.well-known/jwks.json",
                    base.to_string().trim_end_matches('/')
                );
                if let Ok(url) = s.parse() {
                    sources.push(JwksSourceConfig::Url {
                        url,
                        secret_key_env: None,
                    });
                }
            }
        }
        if let Some(u) = &j.backend_api {
            if let Some(base) = self.jwks_url(u, "clerk.jwks.backend_api") {
                let s = format!("{}/v1/jwks", base.to_string().trim_end_matches('/'));
                match &j.secret_key_env {
                    Some(env) => {
                        if let Ok(url) = s.parse() {
                            sources.push(JwksSourceConfig::Url { url, secret_key_env: Some(env.get_ref().clone()) });
                        }
                    }
                    None => self.err(u.span().start, "clerk.jwks.secret_key_env", "backend_api needs secret_key_env (the env var holding the Clerk secret key)"),
                }
            }
        } else if let Some(env) = &j.secret_key_env {
            self.err(
                env.span().start,
                "clerk.jwks.secret_key_env",
                "only used with backend_api",
            );
        }
        if let Some(u) = &j.url {
            if let Some(url) = self.jwks_url(u, "clerk.jwks.url") {
                sources.push(JwksSourceConfig::Url {
                    url,
                    secret_key_env: None,
                });
            }
        }
        if let Some(p) = &j.pem_file {
            let path = base.join(p.get_ref());
            sources.push(JwksSourceConfig::PemFile(path));
        }
        if let Some(e) = &j.pem_env {
            sources.push(JwksSourceConfig::PemEnv(e.get_ref().clone()));
        }
        let given = [
            &j.frontend_api,
            &j.backend_api,
            &j.url,
            &j.pem_file,
            &j.pem_env,
        ]
        .iter()
        .filter(|o| o.is_some())
        .count();
        if given != 1 {
            self.err(
                jwks_at,
                "clerk.jwks",
                "set exactly one of frontend_api, backend_api, url, pem_file, pem_env",
            );
        }
        if j.ttl_seconds == 0 || j.unknown_kid_cooldown_seconds == 0 {
            self.err(
                jwks_at,
                "clerk.jwks",
                "ttl_seconds and unknown_kid_cooldown_seconds must be positive",
            );
        }
        let jwks_timing = JwksTiming {
            ttl: Duration::from_secs(j.ttl_seconds.max(1)),
            unknown_kid_cooldown: Duration::from_secs(j.unknown_kid_cooldown_seconds.max(1)),
            fetch_timeout: Duration::from_millis(j.fetch_timeout_ms.max(1)),
            failure_backoff: Duration::from_secs(j.failure_backoff_seconds),
            max_stale: Duration::from_secs(j.max_stale_seconds),
        };

        // identity headers
        let d = IdentityHeaders::default();
        let h = raw.identity_headers;
        let headers = IdentityHeaders {
            user_id: self.header_name(h.user_id, "identity_headers.user_id", d.user_id),
            session_id: self.header_name(h.session_id, "identity_headers.session_id", d.session_id),
            org_id: self.header_name(h.org_id, "identity_headers.org_id", d.org_id),
            org_slug: self.header_name(h.org_slug, "identity_headers.org_slug", d.org_slug),
            org_role: self.header_name(h.org_role, "identity_headers.org_role", d.org_role),
            org_permissions: self.header_name(
                h.org_permissions,
                "identity_headers.org_permissions",
                d.org_permissions,
            ),
            plans: self.header_name(h.plans, "identity_headers.plans", d.plans),
            features: self.header_name(h.features, "identity_headers.features", d.features),
            actor: self.header_name(h.actor, "identity_headers.actor", d.actor),
        };
        let mut seen = std::collections::HashSet::new();
        for n in headers.all() {
            if !seen.insert(crate::headers::fold(n)) {
                self.err(
                    0,
                    "identity_headers",
                    format!("{n:?} is used twice (after folding case, '_' and '.')"),
                );
            }
        }

        // upstreams
        let ups_at = raw.upstreams.span().start;
        let mut upstreams = BTreeMap::new();
        if raw.upstreams.get_ref().is_empty() {
            self.err(ups_at, "upstreams", "declare at least one upstream");
        }
        for (name, u) in raw.upstreams.into_inner() {
            let at = u.span().start;
            let u = u.into_inner();
            let key = format!("upstreams.{name}");
            let mut peers = Vec::new();
            for p in u.peers.get_ref() {
                match p.parse::<SocketAddr>() {
                    Ok(a) => peers.push(a),
                    Err(_) => self.err(
                        u.peers.span().start,
                        &format!("{key}.peers"),
                        format!("{p:?} is not an ip:port"),
                    ),
                }
            }
            if u.peers.get_ref().is_empty() {
                self.err(at, &format!("{key}.peers"), "list at least one peer");
            }
            let health_check = u.health_check.map(|hc| {
                let hat = hc.span().start;
                let hc = hc.into_inner();
                let path = hc.path.unwrap_or_else(|| "/".into());
                if hc.kind == HealthCheckKind::Http && !path.starts_with('/') {
                    self.err(
                        hat,
                        &format!("{key}.health_check.path"),
                        "must start with '/'",
                    );
                }
                if hc.interval_seconds == 0 {
                    self.err(
                        hat,
                        &format!("{key}.health_check.interval_seconds"),
                        "must be positive",
                    );
                }
                HealthCheck {
                    kind: hc.kind,
                    path,
                    interval: Duration::from_secs(hc.interval_seconds.max(1)),
                }
            });
            if u.tls && u.sni.as_deref().unwrap_or("").is_empty() {
                self.err(
                    at,
                    &format!("{key}.sni"),
                    "a TLS upstream needs sni (the name its certificate is for)",
                );
            }
            upstreams.insert(
                name.clone(),
                UpstreamConfig {
                    name,
                    peers,
                    tls: u.tls,
                    sni: u.sni.unwrap_or_default(),
                    connect_timeout: Duration::from_millis(u.connect_timeout_ms),
                    read_timeout: Duration::from_millis(u.read_timeout_ms),
                    credentials: u.credentials,
                    health_check,
                },
            );
        }

        let policies_dir = base.join(raw.policies.dir.unwrap_or_else(|| "policies".into()));
        let reload_poll = match raw.policies.reload_poll_ms.unwrap_or(1000) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        let admin_listen = raw.admin.and_then(|a| {
            let at = a.span().start;
            let l = a.into_inner().listen;
            match l.get_ref().parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.err(
                        at,
                        "admin.listen",
                        format!("{:?} is not an address:port", l.get_ref()),
                    );
                    None
                }
            }
        });
        let rate = *raw.decision_log.sample_rate.get_ref();
        if !(0.0..=1.0).contains(&rate) {
            self.err(
                raw.decision_log.sample_rate.span().start,
                "decision_log.sample_rate",
                "must be between 0 and 1",
            );
        }
        let limits = Limits {
            max_body_bytes: raw.limits.max_body_bytes,
            max_header_bytes: raw.limits.max_header_bytes,
        };
        if limits.max_header_bytes < 1024 {
            self.err(0, "limits.max_header_bytes", "must be at least 1024");
        }
        let rate_limit = match raw.rate_limit {
            None => RateLimitConfig {
                store: RateStoreKind::Memory,
                redis_url_env: None,
                redis_url: None,
                on_redis_failure: default_redis_failure(),
                redis_timeout: Duration::from_millis(default_redis_timeout()),
            },
            Some(rl) => {
                let at = rl.span().start;
                let rl = rl.into_inner();
                if rl.store == RateStoreKind::Redis
                    && rl.redis_url_env.is_none() == rl.redis_url.is_none()
                {
                    self.err(
                        at,
                        "rate_limit",
                        "store = \"redis\" needs exactly one of redis_url_env, redis_url",
                    );
                }
                if let Some(u) = &rl.redis_url {
                    if u.contains('@') {
                        self.err(
                            at,
                            "rate_limit.redis_url",
                            "credentials do not belong in config: use redis_url_env",
                        );
                    }
                }
                RateLimitConfig {
                    store: rl.store,
                    redis_url_env: rl.redis_url_env,
                    redis_url: rl.redis_url,
                    on_redis_failure: rl.on_redis_failure,
                    redis_timeout: Duration::from_millis(rl.redis_timeout_ms.max(1)),
                }
            }
        };
        let mut webhooks = BTreeMap::new();
        for (name, w) in raw.webhooks {
            let at = w.span().start;
            let w = w.into_inner();
            if w.secrets_env.is_empty() {
                self.err(
                    at,
                    &format!("webhooks.{name}.secrets_env"),
                    "name at least one env var holding a whsec_ secret",
                );
            }
            if !(1..=3600).contains(&w.tolerance_seconds) {
                self.err(
                    at,
                    &format!("webhooks.{name}.tolerance_seconds"),
                    "must be between 1 and 3600",
                );
            }
            webhooks.insert(
                name.clone(),
                WebhookConfig {
                    name,
                    secrets_env: w.secrets_env,
                    tolerance_seconds: w.tolerance_seconds,
                },
            );
        }
        let mut trusted_proxies = Vec::new();
        if let Some(tp) = raw.server.trusted_proxies.take() {
            let at = tp.span().start;
            for p in tp.into_inner() {
                match Cidr::parse(&p) {
                    Some(c) => trusted_proxies.push(c),
                    None => self.err(
                        at,
                        "trusted_proxies",
                        format!("{p:?} is not an address or CIDR range"),
                    ),
                }
            }
        }
        if upstreams.contains_key(crate::S3_UPSTREAM) {
            self.err(
                ups_at,
                "upstreams.s3",
                "\"s3\" is reserved for the bucket configured in [s3]",
            );
        }
        let s3 = raw.s3.take().and_then(|s3| {
            let at = s3.span().start;
            let r = s3.into_inner();
            let addressing = match r.addressing {
                S3Addressing::Path => crate::s3::Addressing::Path,
                S3Addressing::VirtualHosted => crate::s3::Addressing::VirtualHosted,
            };
            let max = crate::s3::MAX_PRESIGN_EXPIRY.as_secs();
            if r.presign_max_seconds == 0
                || r.presign_max_seconds > max
                || r.presign_default_seconds == 0
                || r.presign_default_seconds > r.presign_max_seconds
            {
                self.err(
                    at,
                    "s3.presign_max_seconds",
                    format!("0 < presign_default_seconds <= presign_max_seconds <= {max}"),
                );
            }
            match crate::s3::S3Target::new(r.endpoint.get_ref(), &r.region, &r.bucket, addressing) {
                Ok(target) => Some(S3Config {
                    target,
                    env: crate::s3::EnvNames {
                        access_key_id: r.access_key_id_env,
                        secret_access_key: r.secret_access_key_env,
                        session_token: r.session_token_env,
                    },
                    presign_default: Duration::from_secs(r.presign_default_seconds),
                    presign_max: Duration::from_secs(r.presign_max_seconds),
                    connect_timeout: Duration::from_millis(r.connect_timeout_ms),
                    read_timeout: Duration::from_millis(r.read_timeout_ms),
                }),
                Err(e) => {
                    self.err(r.endpoint.span().start, "s3.endpoint", e.to_string());
                    None
                }
            }
        });
        let decision_log = DecisionLogConfig {
            mode: raw.decision_log.mode,
            sample_rate: rate.clamp(0.0, 1.0),
            path: raw.decision_log.path.map(|p| base.join(p)),
        };

        if self.diags.has_errors() {
            return Err(self.diags.sorted());
        }
        let jwks_source = sources.into_iter().next().ok_or_else(|| {
            Diagnostics(vec![Diagnostic::at(
                self.file,
                self.src,
                jwks_at,
                "clerk.jwks",
                "no key source",
            )])
        })?;
        Ok(Config {
            file: self.file.to_path_buf(),
            server,
            verifier: VerifierSettings {
                issuer,
                authorized_parties: clerk.authorized_parties,
                missing_azp: clerk.missing_azp,
                leeway: Duration::from_secs(clerk.leeway_seconds),
                algorithms,
                max_token_bytes: clerk.max_token_bytes,
                token_cache_capacity: clerk.token_cache_capacity,
                cookie_suffix,
            },
            jwks_source,
            jwks_timing,
            headers,
            upstreams,
            policies_dir,
            reload_poll,
            declared: crate::policy::lint::Declared {
                plans: raw.policies.plans,
                features: raw.policies.features,
            },
            admin_listen,
            decision_log,
            limits,
            rate_limit,
            webhooks,
            trusted_proxies,
            s3,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:8080"]

[clerk]
issuer = "https://clerk.example.com"
authorized_parties = ["https://app.example.com"]

[clerk.jwks]
frontend_api = "https://clerk.example.com"

[upstreams.flask]
peers = ["127.0.0.1:9006"]
"#;

    #[test]
    fn good_config_loads_with_defaults() {
        let c = Config::parse(Path::new("/etc/portier/config.toml"), GOOD).unwrap();
        assert_eq!(c.verifier.leeway, Duration::from_secs(5));
        assert_eq!(c.verifier.missing_azp, MissingAzp::Reject);
        assert_eq!(c.verifier.algorithms, vec![Algorithm::RS256]);
        assert_eq!(c.policies_dir, Path::new("/etc/portier/policies"));
        assert_eq!(
            c.jwks_source,
            JwksSourceConfig::Url {
                url: "https://clerk.example.com/.well-known/jwks.json"
                    .parse()
                    .unwrap(),
                secret_key_env: None
            }
        );
        assert_eq!(c.upstreams["flask"].credentials, Credentials::Strip);
    }

    #[test]
    fn every_error_is_reported_with_line_and_key() {
        let bad = r#"
[clerk]
issuer = "http://127.0.0.1:9999"
algorithms = ["HS256"]

[clerk.jwks]
url = "http://example.com/jwks"

[upstreams.flask]
peers = ["nope"]
"#;
        let errs = Config::parse(Path::new("c.toml"), bad).unwrap_err();
        let text = errs.to_string();
        assert!(text.contains("c.toml:3:10: clerk.issuer:"), "{text}");
        assert!(text.contains("c.toml:4:14: clerk.algorithms:"), "{text}");
        assert!(text.contains("c.toml:7:7: clerk.jwks.url:"), "{text}");
        assert!(
            text.contains("c.toml:10:9: upstreams.flask.peers:"),
            "{text}"
        );
        assert_eq!(errs.0.len(), 4, "{text}");
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1/128")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope").is_none());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let bad = GOOD.replace("[upstreams.flask]", "[upstreams.flask]\ntimeout = 5");
        let errs = Config::parse(Path::new("c.toml"), &bad).unwrap_err();
        assert!(
            errs.to_string()
                .contains("c.toml:13:1: timeout: unknown field `timeout`"),
            "{errs}"
        );
    }
}
