//! The AWS credentials Portier signs with, found the way the AWS SDKs find them (`aws-config`:
//! env, shared config and profiles with assume-role and SSO, web identity (IRSA), the ECS/EKS
//! container endpoint, IMDSv2), or from named env vars. They are fetched at start, kept in
//! memory, and refreshed ahead of expiry by a background task, never on the request path: a
//! request only loads the current set. A refresh that fails keeps the current set until it
//! expires (logged and counted); after that requests get 503 `s3_credentials_unavailable`
//! rather than a signature the store would refuse.
//!
//! No credential, session token or provider error text that could hold one reaches a log line
//! or a metric label: errors are logged by kind.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::ecs::EcsCredentialsProvider;
use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::web_identity_token::{StaticConfiguration, WebIdentityTokenCredentialsProvider};
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider as TlsProvider};

use super::{Credentials, EnvNames};

/// Where credentials come from (`[s3.credentials] source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// Named env vars holding a static key pair (`access_key_id_env`, ...).
    Static(EnvNames),
    /// The AWS SDKs' default chain, in its order.
    Default { profile: Option<String> },
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`.
    Env,
    /// A profile of the shared config files (static keys, assume-role, SSO, credential_process).
    Profile {
        name: String,
        config_file: Option<PathBuf>,
        credentials_file: Option<PathBuf>,
    },
    /// A web identity token exchanged with STS (EKS IRSA).
    WebIdentity {
        token_file: PathBuf,
        role_arn: String,
        session_name: String,
    },
    /// The ECS / EKS Pod Identity container endpoint (`AWS_CONTAINER_CREDENTIALS_*`).
    Container,
    /// The EC2 instance metadata service (IMDSv2); `endpoint` only for tests.
    InstanceMetadata { endpoint: Option<String> },
}

impl CredentialSource {
    pub fn name(&self) -> &'static str {
        match self {
            CredentialSource::Static(_) => "static",
            CredentialSource::Default { .. } => "default",
            CredentialSource::Env => "env",
            CredentialSource::Profile { .. } => "profile",
            CredentialSource::WebIdentity { .. } => "web_identity",
            CredentialSource::Container => "container",
            CredentialSource::InstanceMetadata { .. } => "instance_metadata",
        }
    }
}

/// A role assumed on top of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRole {
    pub role_arn: String,
    pub session_name: String,
    pub external_id: Option<String>,
    pub duration: Option<Duration>,
    /// Where STS is (tests); `None` is the regional STS endpoint.
    pub sts_endpoint: Option<String>,
}

/// The checked `[s3.credentials]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSpec {
    pub source: CredentialSource,
    pub assume_role: Option<AssumeRole>,
    /// Refresh this long before expiry (at most half of what is left).
    pub refresh_before: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("the credential source returned an error ({0})")]
    Provider(&'static str),
    #[error("the credential source did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the returned credentials cannot be used: {0}")]
    Invalid(#[from] super::SignError),
    #[error("instance metadata endpoint: {0}")]
    Endpoint(String),
}

/// One provider call may take at most this long (some aws-config providers have no timeout
/// of their own: `credential_process`, STS without a read timeout).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// A usable set of credentials, as [`CredentialCache::signing_set`] hands it out.
#[derive(Clone)]
pub struct SigningSet {
    pub creds: Arc<Credentials>,
    /// When it stops being handed out (`None`: static keys, no expiry).
    pub until: Option<SystemTime>,
    /// When Portier fetched it.
    pub fetched: SystemTime,
}

/// The set in use and when it was fetched.
struct Held {
    creds: Arc<Credentials>,
    fetched: SystemTime,
}

/// When the next fetch is due, and the backoff after failures.
struct Schedule {
    due: Instant,
    backoff: Duration,
}

/// The credentials of one bucket backend.
pub struct CredentialCache {
    pub spec: CredentialSpec,
    region: String,
    provider: tokio::sync::OnceCell<SharedCredentialsProvider>,
    current: ArcSwapOption<Held>,
    schedule: Mutex<Schedule>,
    pub refresh_ok: AtomicU64,
    pub refresh_failed: AtomicU64,
    /// What the last failure was, for `/readyz` (never provider text).
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialCache")
            .field("source", &self.spec.source.name())
            .finish()
    }
}

/// Why a provider error is unusable, without its text (which may quote what it read).
fn error_kind(e: &aws_credential_types::provider::error::CredentialsError) -> &'static str {
    use aws_credential_types::provider::error::CredentialsError as E;
    match e {
        E::CredentialsNotLoaded(_) => "no credentials configured",
        E::ProviderTimedOut(_) => "provider timed out",
        E::InvalidConfiguration(_) => "invalid configuration",
        E::ProviderError(_) => "provider error",
        E::Unhandled(_) => "unhandled error",
        _ => "error",
    }
}

impl CredentialCache {
    /// A cache for `spec`; static keys are read now, other sources on the first refresh.
    pub fn new(spec: CredentialSpec, region: &str) -> Result<CredentialCache, super::SignError> {
        let cache = CredentialCache {
            spec,
            region: region.to_string(),
            provider: tokio::sync::OnceCell::new(),
            current: ArcSwapOption::empty(),
            schedule: Mutex::new(Schedule {
                due: Instant::now(),
                backoff: RETRY_MIN,
            }),
            refresh_ok: AtomicU64::new(0),
            refresh_failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
        };
        if let CredentialSource::Static(names) = &cache.spec.source {
            cache.store(Credentials::from_env(names)?);
        }
        Ok(cache)
    }

    fn store(&self, c: Credentials) {
        self.current.store(Some(Arc::new(Held {
            creds: Arc::new(c),
            fetched: SystemTime::now(),
        })));
    }

    /// How long before expiry a set stops being handed out: 10 s, or a fifth of a short
    /// lifetime (time for a signed request to reach the store, and for clock skew).
    fn margin(held: &Held) -> Duration {
        match held.creds.expiry() {
            Some(exp) => {
                let life = exp.duration_since(held.fetched).unwrap_or_default();
                Duration::from_secs(10).min(life / 5)
            }
            None => Duration::ZERO,
        }
    }

    /// The request path: the current credentials while they are usable.
    pub fn current(&self) -> Option<Arc<Credentials>> {
        let held = self.current.load_full()?;
        if let Some(exp) = held.creds.expiry() {
            if SystemTime::now() + Self::margin(&held) >= exp {
                return None;
            }
        }
        Some(held.creds.clone())
    }

    /// Seconds until the current set expires (`None`: static keys, or none loaded).
    pub fn seconds_to_expiry(&self) -> Option<f64> {
        let held = self.current.load_full()?;
        let exp = held.creds.expiry()?;
        Some(match exp.duration_since(SystemTime::now()) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        })
    }

    /// How long a URL signed now may live: until the credentials stop being handed out.
    pub fn usable_for(&self) -> Option<Duration> {
        let held = self.current.load_full()?;
        let exp = held.creds.expiry()?;
        exp.duration_since(SystemTime::now() + Self::margin(&held))
            .ok()
    }

    /// The set to sign with now, with when it stops being handed out and when it was
    /// fetched, read together (a refresh in between cannot mix two sets).
    pub fn signing_set(&self) -> Option<SigningSet> {
        let held = self.current.load_full()?;
        let until = held
            .creds
            .expiry()
            .map(|exp| exp.checked_sub(Self::margin(&held)).unwrap_or(exp));
        if until.is_some_and(|u| SystemTime::now() >= u) {
            return None;
        }
        Some(SigningSet {
            creds: held.creds.clone(),
            until,
            fetched: held.fetched,
        })
    }

    /// Whether this cache already serves `spec` in `region`: a reload that changes other
    /// `[s3]` settings keeps it (and its refresher) instead of starting empty.
    pub fn serves(&self, spec: &CredentialSpec, region: &str) -> bool {
        self.spec == *spec && self.region == region
    }

    /// Why requests cannot be signed now, if they cannot.
    pub fn not_ready(&self) -> Option<String> {
        if self.current().is_some() {
            return None;
        }
        let last = self.last_error.lock().ok().and_then(|g| g.clone());
        Some(match last {
            Some(e) => format!(
                "S3 credentials unavailable ({} source: {e})",
                self.spec.source.name()
            ),
            None => format!(
                "S3 credentials not loaded yet ({} source)",
                self.spec.source.name()
            ),
        })
    }

    /// Fetches when a refresh is due; called by the background refresher (and once at start).
    /// Returns when the next refresh is due.
    pub async fn tick(&self) -> Instant {
        if matches!(self.spec.source, CredentialSource::Static(_)) {
            return Instant::now() + Duration::from_secs(3600);
        }
        let due = self
            .schedule
            .lock()
            .map(|s| s.due)
            .unwrap_or_else(|_| Instant::now());
        if Instant::now() < due {
            return due;
        }
        let result = self.fetch().await;
        let now = Instant::now();
        let mut sched = match self.schedule.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match result {
            Ok(c) => {
                let delay = refresh_delay(SystemTime::now(), c.expiry(), self.spec.refresh_before);
                let first = self.current.load().is_none();
                self.store(c);
                self.refresh_ok.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut e) = self.last_error.lock() {
                    *e = None;
                }
                if first {
                    log::info!("S3 credentials loaded ({} source)", self.spec.source.name());
                }
                sched.due = now + delay;
                sched.backoff = RETRY_MIN;
            }
            Err(e) => {
                self.refresh_failed.fetch_add(1, Ordering::Relaxed);
                let left = self.usable_for().unwrap_or_default();
                // While the current set lives, retry at least four times in what is left.
                let wait = if left > Duration::ZERO {
                    sched.backoff.min((left / 4).max(RETRY_MIN))
                } else {
                    sched.backoff
                };
                log::warn!(
                    "S3 credential refresh failed ({} source): {e}; the current set has {}s left; retry in {}s",
                    self.spec.source.name(),
                    left.as_secs(),
                    wait.as_secs()
                );
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e.to_string());
                }
                sched.due = now + wait;
                sched.backoff = (sched.backoff * 2).min(RETRY_MAX);
            }
        }
        sched.due
    }

    async fn fetch(&self) -> Result<Credentials, CredentialError> {
        let provider = self
            .provider
            .get_or_try_init(|| build_provider(&self.spec, &self.region))
            .await?;
        match tokio::time::timeout(CALL_TIMEOUT, provider.provide_credentials()).await {
            Ok(Ok(c)) => Ok(Credentials::from_provided(c)?),
            Ok(Err(e)) => Err(CredentialError::Provider(error_kind(&e))),
            Err(_) => Err(CredentialError::Timeout(CALL_TIMEOUT)),
        }
    }
}

/// When to refresh a set that expires at `exp`: `lead` before (at most half of what is left),
/// with up to a tenth of the lead as jitter so a fleet does not refresh at once; never sooner
/// than a second.
fn refresh_delay(now: SystemTime, exp: Option<SystemTime>, lead: Duration) -> Duration {
    let Some(exp) = exp else {
        // Credentials without an expiry (a profile's static keys): look again in an hour.
        return Duration::from_secs(3600);
    };
    let remaining = exp.duration_since(now).unwrap_or_default();
    let lead = lead.min(remaining / 2);
    let jitter = lead.mul_f64(rand::random::<f64>() * 0.1);
    remaining.saturating_sub(lead + jitter).max(RETRY_MIN)
}

/// Builds the provider of a source. Every provider gets the same HTTP client (rustls with
/// ring), the bucket's region (without one aws-config would ask IMDS for it) and timeouts.
async fn build_provider(
    spec: &CredentialSpec,
    region: &str,
) -> Result<SharedCredentialsProvider, CredentialError> {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(TlsProvider::Rustls(CryptoMode::Ring))
        .build_https();
    let region = Region::new(region.to_string());
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .read_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(10))
        .operation_timeout(Duration::from_secs(25))
        .build();
    let conf = ProviderConfig::default()
        .with_http_client(http.clone())
        .with_region(Some(region.clone()))
        .with_timeout_config(timeouts.clone());
    let base = match &spec.source {
        CredentialSource::Static(_) => {
            return Err(CredentialError::Provider("static keys have no provider"))
        }
        CredentialSource::Default { profile } => {
            let mut b = DefaultCredentialsChain::builder()
                .configure(conf.clone())
                .region(region.clone());
            if let Some(p) = profile {
                b = b.profile_name(p);
            }
            SharedCredentialsProvider::new(b.build().await)
        }
        CredentialSource::Env => {
            SharedCredentialsProvider::new(EnvironmentVariableCredentialsProvider::new())
        }
        CredentialSource::Profile {
            name,
            config_file,
            credentials_file,
        } => {
            let mut b = ProfileFileCredentialsProvider::builder()
                .configure(&conf)
                .profile_name(name);
            if config_file.is_some() || credentials_file.is_some() {
                let mut files = EnvConfigFiles::builder();
                if let Some(f) = config_file {
                    files = files.with_file(EnvConfigFileKind::Config, f);
                }
                if let Some(f) = credentials_file {
                    files = files.with_file(EnvConfigFileKind::Credentials, f);
                }
                b = b.profile_files(files.build());
            }
            SharedCredentialsProvider::new(b.build())
        }
        CredentialSource::WebIdentity {
            token_file,
            role_arn,
            session_name,
        } => SharedCredentialsProvider::new(
            WebIdentityTokenCredentialsProvider::builder()
                .configure(&conf)
                .static_configuration(StaticConfiguration {
                    web_identity_token_file: token_file.clone(),
                    role_arn: role_arn.clone(),
                    session_name: session_name.clone(),
                })
                .build(),
        ),
        CredentialSource::Container => SharedCredentialsProvider::new(
            EcsCredentialsProvider::builder().configure(&conf).build(),
        ),
        CredentialSource::InstanceMetadata { endpoint } => {
            let mut client = aws_config::imds::Client::builder().configure(&conf);
            if let Some(e) = endpoint {
                client = client
                    .endpoint(e.as_str())
                    .map_err(|e| CredentialError::Endpoint(e.to_string()))?;
            }
            SharedCredentialsProvider::new(
                ImdsCredentialsProvider::builder()
                    .configure(&conf)
                    .imds_client(client.build())
                    .build(),
            )
        }
    };
    let Some(ar) = &spec.assume_role else {
        return Ok(base);
    };
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(region)
        .timeout_config(timeouts)
        .credentials_provider(base.clone());
    if let Some(e) = &ar.sts_endpoint {
        loader = loader.endpoint_url(e);
    }
    let sdk = loader.load().await;
    let mut b = AssumeRoleProvider::builder(ar.role_arn.clone())
        .session_name(ar.session_name.clone())
        .configure(&sdk);
    if let Some(id) = &ar.external_id {
        b = b.external_id(id);
    }
    if let Some(d) = ar.duration {
        b = b.session_length(d);
    }
    Ok(SharedCredentialsProvider::new(
        b.build_from_provider(base).await,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_is_ahead_of_expiry_and_never_immediate() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Some(now + Duration::from_secs(3600));
        let d = refresh_delay(now, hour, Duration::from_secs(600));
        assert!(
            d <= Duration::from_secs(3000) && d >= Duration::from_secs(2940),
            "{d:?}"
        );
        // Short lifetimes refresh at half time at the latest.
        let d = refresh_delay(
            now,
            Some(now + Duration::from_secs(12)),
            Duration::from_secs(600),
        );
        assert!(
            d <= Duration::from_secs(6) && d >= Duration::from_millis(5400),
            "{d:?}"
        );
        // Expired or nearly: a second, not a spin.
        assert_eq!(
            refresh_delay(now, Some(now), Duration::from_secs(600)),
            RETRY_MIN
        );
        assert_eq!(
            refresh_delay(now, None, Duration::from_secs(600)),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn credentials_stop_being_handed_out_before_they_expire() {
        let spec = CredentialSpec {
            source: CredentialSource::Container,
            assume_role: None,
            refresh_before: Duration::from_secs(600),
        };
        let cache = CredentialCache::new(spec, "us-east-1").unwrap();
        assert!(cache.current().is_none());
        assert!(cache.not_ready().unwrap().contains("not loaded yet"));
        let live = aws_credential_types::Credentials::new(
            "AKIDLIVE",
            "secret",
            Some("token".into()),
            Some(SystemTime::now() + Duration::from_secs(100)),
            "test",
        );
        cache.store(Credentials::from_provided(live).unwrap());
        assert!(cache.current().is_some());
        let left = cache.usable_for().unwrap();
        assert!(
            left <= Duration::from_secs(90) && left >= Duration::from_secs(85),
            "{left:?}"
        );
        let dying = aws_credential_types::Credentials::new(
            "AKIDDYING",
            "secret",
            Some("token".into()),
            Some(SystemTime::now() + Duration::from_secs(1)),
            "test",
        );
        cache.current.store(Some(Arc::new(Held {
            creds: Arc::new(Credentials::from_provided(dying).unwrap()),
            fetched: SystemTime::now() - Duration::from_secs(300),
        })));
        assert!(
            cache.current().is_none(),
            "within the margin: not handed out"
        );
    }
}
