//! Signing keys for one issuer: a JWKS fetched over HTTP and cached with moka, or a static PEM.
//!
//! The cache is built to survive the failure modes peers shipped as bugs (see `peers.md`):
//! - keys are cached for a TTL and loaded by one fetch however many requests wait on it;
//! - an unknown `kid` forces at most one refresh per cooldown window for the whole process, so
//!   tokens with random kids cannot turn Portier into an amplifier against the key server;
//! - when a fetch fails the last good keys keep serving (up to `max_stale`), and a failed fetch
//!   backs off instead of being retried by every request;
//! - when no key can be had the caller gets `KeyError::Unavailable` (503), never a 401.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::DecodingKey;

/// Largest JWKS document accepted; Clerk's holds one or two keys.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Why no key set could be loaded. Sources are kept (behind `Arc`: one failed load is shared
/// by every request that waited on it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum JwksError {
    #[error("loading the system's CA roots for the JWKS client: {0}")]
    Roots(#[source] Arc<std::io::Error>),
    #[error("building the JWKS request: {0}")]
    Request(#[source] Arc<http::Error>),
    #[error("fetching the JWKS failed: {0}")]
    Transport(#[source] Arc<hyper_util::client::legacy::Error>),
    #[error("reading the JWKS body failed (or it is over {MAX_JWKS_BYTES} bytes): {0}")]
    Body(#[source] Arc<dyn std::error::Error + Send + Sync>),
    #[error("the JWKS fetch did not finish within {0:?}")]
    Timeout(Duration),
    #[error("the JWKS endpoint answered HTTP {0}")]
    Status(u16),
    #[error("the JWKS document is invalid: {0}")]
    Parse(#[source] Arc<serde_json::Error>),
    #[error("the JWKS holds no usable RS256 signing key")]
    NoKeys,
    #[error("backing off after a failed fetch")]
    Backoff,
    #[error("the PEM key is invalid: {0}")]
    Pem(#[source] Arc<jsonwebtoken::errors::Error>),
}

/// Why no key was returned for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The key set is known and current, and holds no such kid.
    Unknown,
    /// No key set could be had (fetch failing and nothing usable cached).
    Unavailable,
}

/// A set of verification keys, by kid. A PEM source has one key that matches any kid, like
/// Clerk's networkless verification.
#[derive(Debug)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<DecodingKey>>,
    any: Option<Arc<DecodingKey>>,
    fetched_at: Instant,
}

impl KeySet {
    pub fn get(&self, kid: Option<&str>) -> Option<Arc<DecodingKey>> {
        if let Some(k) = &self.any {
            return Some(k.clone());
        }
        self.by_kid.get(kid?).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + usize::from(self.any.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Parses a JWKS document, keeping RSA keys meant for RS256 signatures.
    pub fn from_jwks(body: &[u8]) -> Result<KeySet, JwksError> {
        let set: JwkSet =
            serde_json::from_slice(body).map_err(|e| JwksError::Parse(Arc::new(e)))?;
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            if !matches!(jwk.algorithm, AlgorithmParameters::RSA(_)) {
                continue;
            }
            if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            if matches!(jwk.common.key_algorithm, Some(a) if a != KeyAlgorithm::RS256) {
                continue;
            }
            match DecodingKey::from_jwk(jwk) {
                Ok(k) => {
                    by_kid.insert(kid, Arc::new(k));
                }
                Err(e) => log::warn!("jwks: skipping key {kid:?}: {e}"),
            }
        }
        if by_kid.is_empty() {
            return Err(JwksError::NoKeys);
        }
        Ok(KeySet {
            by_kid,
            any: None,
            fetched_at: Instant::now(),
        })
    }

    /// A single RSA public key in PEM form, used whatever kid a token names.
    pub fn from_pem(pem: &[u8]) -> Result<KeySet, JwksError> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(|e| JwksError::Pem(Arc::new(e)))?;
        Ok(KeySet {
            by_kid: HashMap::new(),
            any: Some(Arc::new(key)),
            fetched_at: Instant::now(),
        })
    }
}

/// Where keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    Remote {
        url: http::Uri,
        /// Clerk secret key for the Backend API endpoint. Sent only to `url`, never logged.
        bearer: Option<String>,
    },
    Static(Arc<KeySet>),
}

/// Timing knobs of the cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JwksTiming {
    pub ttl: Duration,
    pub unknown_kid_cooldown: Duration,
    pub fetch_timeout: Duration,
    pub failure_backoff: Duration,
    pub max_stale: Duration,
}

impl Default for JwksTiming {
    fn default() -> Self {
        JwksTiming {
            ttl: Duration::from_secs(300),
            unknown_kid_cooldown: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
            failure_backoff: Duration::from_secs(5),
            max_stale: Duration::from_secs(24 * 3600),
        }
    }
}

/// Counters for `/metrics` and for tests.
#[derive(Debug, Default)]
pub struct JwksStats {
    pub fetches: AtomicU64,
    pub failures: AtomicU64,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

pub struct JwksCache {
    source: JwksSource,
    timing: JwksTiming,
    client: Option<HttpsClient>,
    current: moka::future::Cache<(), Arc<KeySet>>,
    forced: moka::future::Cache<(), Arc<KeySet>>,
    last_good: RwLock<Option<Arc<KeySet>>>,
    backoff_until: Mutex<Option<Instant>>,
    pub stats: JwksStats,
}

impl JwksCache {
    pub fn new(source: JwksSource, timing: JwksTiming) -> Result<JwksCache, JwksError> {
        let client = match &source {
            JwksSource::Static(_) => None,
            JwksSource::Remote { .. } => {
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_native_roots()
                    .map_err(|e| JwksError::Roots(Arc::new(e)))?
                    .https_or_http()
                    .enable_http1()
                    .build();
                // No idle pool: fetches are rare and may come from different Pingora runtimes.
                Some(
                    Client::builder(TokioExecutor::new())
                        .pool_max_idle_per_host(0)
                        .build(https),
                )
            }
        };
        Ok(JwksCache {
            source,
            timing,
            client,
            current: moka::future::Cache::builder()
                .max_capacity(1)
                .time_to_live(timing.ttl)
                .build(),
            forced: moka::future::Cache::builder()
                .max_capacity(1)
                .time_to_live(timing.unknown_kid_cooldown)
                .build(),
            last_good: RwLock::new(None),
            backoff_until: Mutex::new(None),
            stats: JwksStats::default(),
        })
    }

    /// The key for `kid`, fetching or refreshing the key set as needed.
    pub async fn key(&self, kid: Option<&str>) -> Result<Arc<DecodingKey>, KeyError> {
        if let JwksSource::Static(set) = &self.source {
            return set.get(kid).ok_or(KeyError::Unknown);
        }
        // A remote JWKS names keys by kid; a token without one cannot pick a key.
        let kid = kid.ok_or(KeyError::Unknown)?;
        let set = match self.current.try_get_with((), self.load()).await {
            Ok(set) => Some(set),
            Err(e) => {
                log::warn!("jwks: {e}; serving last good keys if any");
                self.stale()
            }
        };
        if let Some(k) = set.as_ref().and_then(|s| s.get(Some(kid))) {
            return Ok(k);
        }
        // Unknown kid (or nothing cached): one forced refresh per cooldown window, shared by
        // every waiter, whatever kid they carry.
        match self.forced.try_get_with((), self.load()).await {
            Ok(fresh) => {
                let newer = set.as_ref().is_none_or(|s| fresh.fetched_at > s.fetched_at);
                if newer {
                    self.current.insert((), fresh.clone()).await;
                }
                fresh.get(Some(kid)).ok_or(KeyError::Unknown)
            }
            Err(e) => {
                log::warn!("jwks: refresh for an unknown kid failed: {e}");
                Err(KeyError::Unavailable)
            }
        }
    }

    /// Loads keys before traffic arrives so the first request does not wait; failures are
    /// logged, not fatal, because the key server may come up after Portier.
    pub async fn warm(&self) -> Result<(), JwksError> {
        if matches!(self.source, JwksSource::Static(_)) {
            return Ok(());
        }
        match self.current.try_get_with((), self.load()).await {
            Ok(_) => Ok(()),
            Err(e) => Err((*e).clone()),
        }
    }

    /// True when a key set is available now (for readiness).
    pub fn has_keys(&self) -> bool {
        matches!(self.source, JwksSource::Static(_)) || self.stale().is_some()
    }

    /// Age of the key set in use, if any.
    pub fn key_age(&self) -> Option<Duration> {
        match &self.source {
            JwksSource::Static(_) => Some(Duration::ZERO),
            JwksSource::Remote { .. } => self.stale().map(|s| s.fetched_at.elapsed()),
        }
    }

    fn stale(&self) -> Option<Arc<KeySet>> {
        let guard = self.last_good.read().ok()?;
        guard
            .as_ref()
            .filter(|s| s.fetched_at.elapsed() <= self.timing.max_stale)
            .cloned()
    }

    async fn load(&self) -> Result<Arc<KeySet>, JwksError> {
        if let Ok(guard) = self.backoff_until.lock() {
            if guard.is_some_and(|until| Instant::now() < until) {
                return Err(JwksError::Backoff);
            }
        }
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(self.timing.fetch_timeout, self.fetch())
            .await
            .unwrap_or_else(|_| Err(JwksError::Timeout(self.timing.fetch_timeout)));
        match result {
            Ok(set) => {
                let set = Arc::new(set);
                if let Ok(mut g) = self.last_good.write() {
                    *g = Some(set.clone());
                }
                if let Ok(mut g) = self.backoff_until.lock() {
                    *g = None;
                }
                log::info!("jwks: loaded {} key(s)", set.len());
                Ok(set)
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut g) = self.backoff_until.lock() {
                    *g = Some(Instant::now() + self.timing.failure_backoff);
                }
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let (JwksSource::Remote { url, bearer }, Some(client)) = (&self.source, &self.client)
        else {
            return Err(JwksError::NoKeys);
        };
        let mut req = http::Request::get(url.clone()).header("accept", "application/json");
        if let Some(secret) = bearer {
            req = req.header("authorization", format!("Bearer {secret}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| JwksError::Request(Arc::new(e)))?;
        let resp = client
            .request(req)
            .await
            .map_err(|e| JwksError::Transport(Arc::new(e)))?;
        if !resp.status().is_success() {
            return Err(JwksError::Status(resp.status().as_u16()));
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| JwksError::Body(Arc::from(e)))?
            .to_bytes();
        KeySet::from_jwks(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_parsing_keeps_only_rsa_signing_keys() {
        let doc = br#"{"keys":[
            {"kty":"RSA","kid":"a","use":"sig","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"sXch","e":"AQAB"},
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"RSA","use":"sig","n":"sXch","e":"AQAB"}
        ]}"#;
        let set = KeySet::from_jwks(doc).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.get(Some("a")).is_some());
        assert!(set.get(Some("h")).is_none());
        assert!(set.get(None).is_none());
    }

    #[test]
    fn empty_or_bad_documents_are_errors() {
        assert!(matches!(
            KeySet::from_jwks(br#"{"keys":[]}"#),
            Err(JwksError::NoKeys)
        ));
        assert!(matches!(
            KeySet::from_jwks(b"nope"),
            Err(JwksError::Parse(_))
        ));
    }
}
