//! The checked configuration the server runs on: every value validated, every default
//! applied, secrets still named (env vars, files) and resolved only when the running state is
//! built.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::jwks::JwksTiming;
use crate::auth::VerifierSettings;
use crate::guards::ratelimit::RedisFailure;
pub use crate::s3::S3Config;

/// Lower-case, with `_` and `.` folded to `-`: the spelling-insensitive form of a header name
/// (WSGI/CGI backends map `-`, `_` and `.` in header names to the same environ key).
pub fn fold_header_name(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' | b'.' => '-',
            b => b.to_ascii_lowercase() as char,
        })
        .collect()
}

/// Names a platform team declared (in `config.toml`'s `[policies]`); empty means undeclared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Declared {
    pub plans: Vec<String>,
    pub features: Vec<String>,
}

/// How bucket URLs are formed (`[s3] addressing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum S3Addressing {
    Path,
    VirtualHosted,
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
    pub on_redis_failure: RedisFailure,
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
    /// On SIGTERM (or SIGQUIT after a hand-over): the longest drain of requests in flight.
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub upgrade_sock: PathBuf,
    /// The longest wait for the next byte of a request body.
    pub body_idle_timeout: Duration,
    /// The longest a request head may take from its first byte (from the accept, for a
    /// connection's first request).
    pub request_header_timeout: Duration,
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
    pub declared: Declared,
    pub admin_listen: Option<SocketAddr>,
    pub decision_log: DecisionLogConfig,
    pub limits: Limits,
    pub rate_limit: RateLimitConfig,
    pub webhooks: BTreeMap<String, WebhookConfig>,
    /// Proxies whose `X-Forwarded-For` is believed when finding the client address.
    pub trusted_proxies: Vec<Cidr>,
    pub s3: Option<S3Config>,
    pub egress: Option<EgressConfig>,
    pub assertion: Option<AssertionConfig>,
    pub pages: PagesConfig,
}

/// `[pages]`, checked: where refused navigations on `page = true` routes are sent. Without a
/// URL the refusal stays JSON.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PagesConfig {
    /// Signed-out navigations: 307 here, with `redirect_url` back.
    pub sign_in_url: Option<String>,
    /// Navigations that lack a plan or feature: 307 here, with `required` and `redirect_url`.
    pub upgrade_url: Option<String>,
    /// `scheme://host` that `redirect_url` is built on; a path when unset (never the Host
    /// header, so a redirect cannot be pointed elsewhere).
    pub public_origin: Option<String>,
    /// The Clerk instance `clerk.publishable_key` names: Clerk's middleware applies some
    /// handshake rules only to development instances. `None` without a publishable key.
    pub instance: Option<ClerkInstance>,
}

/// What a publishable key says about its Clerk instance (`@clerk/shared`
/// `parsePublishableKey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClerkInstance {
    /// `pk_test_`: a development instance (dev-browser rules); `pk_live_`: production.
    pub development: bool,
    /// The Frontend API host, e.g. `clerk.example.com`.
    pub frontend_api: String,
}

/// `[assertion]`, checked: the signed identity assertion some upstreams get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionConfig {
    /// The `iss` claim: Portier's name, as the upstream's verifier expects it.
    pub issuer: String,
    /// Upstreams that get an assertion on every allowed, signed-in request.
    pub upstreams: Vec<String>,
    /// `exp - iat`.
    pub ttl: Duration,
    /// `max-age` of the published JWKS.
    pub jwks_max_age: Duration,
    /// Also publish the JWKS on the public listener at this path.
    pub public_jwks_path: Option<String>,
    /// Bytes of assertions (and their cache keys) kept for reuse: bounded in bytes, since
    /// one caller on many distinct paths makes one entry per path.
    pub cache_max_bytes: u64,
    /// Every published key; exactly one is `active` (signs).
    pub keys: Vec<AssertionKey>,
}

/// One assertion signing key: P-256 or Ed25519, private, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionKey {
    pub kid: String,
    pub source: KeySource,
    pub active: bool,
}

/// Where a private key's PEM is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    Env(String),
}

/// `[egress]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressConfig {
    pub listen: SocketAddr,
    /// The bucket name services use in their requests.
    pub bucket: String,
    /// The region services sign for.
    pub region: String,
    pub services: BTreeMap<String, EgressService>,
}

/// One internal service: its local key pair (the secret from an env var) and its rules.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressService {
    pub name: String,
    pub access_key_id: String,
    pub secret_env: String,
    pub rules: Vec<super::egress_rules::Rule>,
}
