//! Verifying a Clerk session token: header checks, key lookup, RS256 signature, then claims,
//! in that order (claims are never trusted before the signature, Clerk JS #8332). A verified
//! token is cached by its full text until its `exp`, so a repeated token costs one hash lookup
//! and no RSA work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::identity::{ClaimsError, Identity};
use super::jwks::{JwksCache, KeyError};
use crate::error::Reason;

/// Clerk's `cat` header for session tokens; JWT-template and M2M tokens carry other values.
pub const SESSION_TOKEN_CATEGORY: &str = "cl_B7d4PD111AAA";

/// What to do with a token that has no `azp` (top-level navigations, Backend API tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingAzp {
    Reject,
    Allow,
}

/// Checked verification settings (built from `config.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct VerifierSettings {
    /// Exact expected `iss`.
    pub issuer: String,
    /// Accepted `azp` origins; empty means any (a `check` warning).
    pub authorized_parties: Vec<String>,
    pub missing_azp: MissingAzp,
    pub leeway: Duration,
    /// Algorithm allow-list; only RSA algorithms can be configured.
    pub algorithms: Vec<Algorithm>,
    pub max_token_bytes: usize,
    pub token_cache_capacity: u64,
    pub cookie_suffix: Option<String>,
}

/// Why a token was refused. Details go to the log; the client sees only [`Reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("token is {0} bytes, over the limit")]
    TooLarge(usize),
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("algorithm {0:?} is not allowed")]
    Algorithm(String),
    #[error("header typ is not JWT")]
    Typ,
    #[error("header cat is not a session token category")]
    Category,
    #[error("no key for this kid")]
    UnknownKey,
    #[error("no signing keys available")]
    KeysUnavailable,
    #[error("signature does not verify")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("iat is in the future")]
    IatInFuture,
    #[error("issuer mismatch")]
    Issuer,
    #[error("azp missing")]
    AzpMissing,
    #[error("azp is not an authorized party")]
    AzpMismatch,
    #[error("session is pending")]
    Pending,
    #[error("claims: {0}")]
    Claims(#[from] ClaimsError),
}

impl VerifyError {
    pub fn reason(&self) -> Reason {
        match self {
            VerifyError::TooLarge(_) => Reason::TokenTooLarge,
            VerifyError::Malformed(_)
            | VerifyError::Typ
            | VerifyError::Category
            | VerifyError::Claims(_) => Reason::TokenInvalid,
            VerifyError::Algorithm(_) => Reason::TokenInvalidAlgorithm,
            VerifyError::UnknownKey => Reason::TokenUnknownKey,
            VerifyError::KeysUnavailable => Reason::JwksUnavailable,
            VerifyError::Signature => Reason::TokenInvalidSignature,
            VerifyError::Expired => Reason::TokenExpired,
            VerifyError::NotYetValid => Reason::TokenNotYetValid,
            VerifyError::IatInFuture => Reason::TokenIatInFuture,
            VerifyError::Issuer => Reason::IssuerMismatch,
            VerifyError::AzpMissing | VerifyError::AzpMismatch => Reason::AzpMismatch,
            VerifyError::Pending => Reason::SessionPending,
        }
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    cat: Option<String>,
}

struct UntilExp;

impl moka::Expiry<String, Arc<Identity>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Identity>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let left = value.expires_at.saturating_sub(unix_now());
        Some(Duration::from_secs(left.max(0) as u64))
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub struct Verifier {
    settings: VerifierSettings,
    validation: Validation,
    pub jwks: JwksCache,
    /// Keyed by the whole token (equality decides a hit, so no hash collision can give one
    /// token another's identity), hashed with foldhash: SipHash over a ~800-byte token was the
    /// bulk of a hit's cost. The hasher is seeded per process, so collisions cannot be planned.
    cache: moka::sync::Cache<String, Arc<Identity>, foldhash::fast::RandomState>,
    /// Verified-token cache hits and misses (full verifications), for metrics.
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
}

impl Verifier {
    pub fn new(settings: VerifierSettings, jwks: JwksCache) -> Verifier {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = settings.algorithms.clone();
        validation.leeway = settings.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        let cache = moka::sync::Cache::builder()
            .max_capacity(settings.token_cache_capacity)
            .expire_after(UntilExp)
            .build_with_hasher(foldhash::fast::RandomState::default());
        Verifier {
            settings,
            validation,
            jwks,
            cache,
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> &VerifierSettings {
        &self.settings
    }

    /// Cached identity for a token verified earlier, if still within its lifetime.
    pub fn cached(&self, token: &str) -> Option<Arc<Identity>> {
        let id = self.cache.get(token)?;
        (id.expires_at > unix_now()).then_some(id)
    }

    /// Number of verified tokens held (for metrics).
    pub fn cache_len(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Verifies `token` and returns the caller's identity.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, VerifyError> {
        if token.len() > self.settings.max_token_bytes {
            return Err(VerifyError::TooLarge(token.len()));
        }
        if let Some(id) = self.cached(token) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(id);
        }
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
        let id = Arc::new(self.verify_uncached(token).await?);
        self.cache.insert(token.to_string(), id.clone());
        Ok(id)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Identity, VerifyError> {
        let header = parse_header(token)?;
        let alg: Algorithm = header
            .alg
            .parse()
            .map_err(|_| VerifyError::Algorithm(truncate(&header.alg)))?;
        if !self.settings.algorithms.contains(&alg) {
            return Err(VerifyError::Algorithm(truncate(&header.alg)));
        }
        if header.typ.as_deref().is_some_and(|t| t != "JWT") {
            return Err(VerifyError::Typ);
        }
        if header
            .cat
            .as_deref()
            .is_some_and(|c| c != SESSION_TOKEN_CATEGORY)
        {
            return Err(VerifyError::Category);
        }
        let key = self
            .jwks
            .key(header.kid.as_deref())
            .await
            .map_err(|e| match e {
                KeyError::Unknown => VerifyError::UnknownKey,
                KeyError::Unavailable => VerifyError::KeysUnavailable,
            })?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => VerifyError::Signature,
                ErrorKind::ExpiredSignature => VerifyError::Expired,
                ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
                ErrorKind::InvalidAlgorithm => VerifyError::Algorithm(truncate(&header.alg)),
                ErrorKind::MissingRequiredClaim(_) => VerifyError::Malformed("missing exp"),
                ErrorKind::InvalidClaimFormat(_) => VerifyError::Malformed("claim of wrong type"),
                _ => VerifyError::Malformed("undecodable token"),
            })?;
        self.check_claims(data.claims)
    }

    /// Claim rules after the signature verified. Time claims must be integers: a string `exp`
    /// is refused here even if a library were to skip it.
    fn check_claims(&self, claims: Map<String, Value>) -> Result<Identity, VerifyError> {
        let now = unix_now();
        let leeway = self.settings.leeway.as_secs() as i64;
        let time = |k: &'static str| -> Result<Option<i64>, VerifyError> {
            match claims.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_i64()
                    .map(Some)
                    .ok_or(VerifyError::Claims(ClaimsError::WrongType(k))),
            }
        };
        let exp = time("exp")?.ok_or(VerifyError::Claims(ClaimsError::Missing("exp")))?;
        if exp <= now - leeway {
            return Err(VerifyError::Expired);
        }
        if time("nbf")?.is_some_and(|nbf| nbf > now + leeway) {
            return Err(VerifyError::NotYetValid);
        }
        if time("iat")?.is_some_and(|iat| iat > now + leeway) {
            return Err(VerifyError::IatInFuture);
        }
        match claims.get("iss") {
            Some(Value::String(iss)) if *iss == self.settings.issuer => {}
            _ => return Err(VerifyError::Issuer),
        }
        match claims.get("azp") {
            None | Some(Value::Null) => {
                if self.settings.missing_azp == MissingAzp::Reject {
                    return Err(VerifyError::AzpMissing);
                }
            }
            Some(Value::String(azp)) => {
                let parties = &self.settings.authorized_parties;
                if !parties.is_empty() && !parties.iter().any(|p| p == azp) {
                    return Err(VerifyError::AzpMismatch);
                }
            }
            Some(_) => return Err(VerifyError::Claims(ClaimsError::WrongType("azp"))),
        }
        if claims.get("sts").and_then(Value::as_str) == Some("pending") {
            return Err(VerifyError::Pending);
        }
        Ok(Identity::from_claims(claims)?)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(16).collect()
}

fn parse_header(token: &str) -> Result<RawHeader, VerifyError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed("not three dot-separated parts"));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| VerifyError::Malformed("header is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| VerifyError::Malformed("header is not a JWT header"))
}
