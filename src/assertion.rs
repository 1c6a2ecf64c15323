//! The identity assertion: a short-lived JWT Portier signs for an upstream on every allowed,
//! signed-in request (`x-portier-assertion`), so the upstream trusts a signature rather than
//! plain headers anything on its network could set. What is signed: `iss` (Portier's name),
//! `aud` (the upstream), the caller (`sub`, `sid`, `org`, `plans`, `features`, `act`) as
//! verified, `iat`/`exp`, and the request (`htm` method, `htu` path as sent upstream), so an
//! assertion captured on one route is refused on another. `python/portier_flask` verifies it.
//!
//! Keys are P-256 (ES256) or Ed25519 (EdDSA) private keys in PEM, from files or env vars; all
//! configured keys are published in the JWKS, one signs. An assertion is reused for the same
//! caller, upstream, method and path while at least half its lifetime is left, so a repeated
//! request costs a cache lookup, not a signature.
//!
//! The compact JWS is assembled here (base64url header and payload, one signature) rather than
//! with `jsonwebtoken::encode`, which parses the PKCS#8 key again on every call; the key pair
//! is parsed once, at start and on reload.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use serde_json::{json, Value};

use crate::auth::identity::Entitlement;
use crate::auth::Identity;
use crate::config::{AssertionConfig, KeySource};

/// The header carrying the assertion; a client's is always removed first.
pub const HEADER: &str = "x-portier-assertion";

/// Where the admin listener serves the public keys.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Why the assertion keys cannot be used. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("assertion key {kid}: cannot read {path}: {source}")]
    Read {
        kid: String,
        path: String,
        source: std::io::Error,
    },
    #[error("assertion key {kid}: environment variable {env} is not set")]
    MissingEnv { kid: String, env: String },
    #[error("assertion key {kid}: not a PEM document")]
    NotPem { kid: String },
    #[error("assertion key {kid}: not a P-256 EC or Ed25519 private key (PEM {label:?})")]
    Unsupported { kid: String, label: String },
    #[error("signing failed")]
    Sign,
}

enum Pair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// One configured key: its id, its pair, its public JWK.
struct Key {
    kid: String,
    pair: Pair,
    /// `base64url(header JSON) + "."`, prepared once.
    header_prefix: String,
    jwk: Value,
}

impl Key {
    fn load(kid: &str, source: &KeySource) -> Result<Key, AssertionError> {
        let text = match source {
            KeySource::File(p) => std::fs::read(p).map_err(|source| AssertionError::Read {
                kid: kid.to_owned(),
                path: p.display().to_string(),
                source,
            })?,
            KeySource::Env(env) => std::env::var(env)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| AssertionError::MissingEnv {
                    kid: kid.to_owned(),
                    env: env.clone(),
                })?
                .into_bytes(),
        };
        Self::from_pem(kid, &text)
    }

    fn from_pem(kid: &str, text: &[u8]) -> Result<Key, AssertionError> {
        let doc = pem::parse(text).map_err(|_| AssertionError::NotPem {
            kid: kid.to_owned(),
        })?;
        let der = doc.contents();
        let unsupported = || AssertionError::Unsupported {
            kid: kid.to_owned(),
            label: doc.tag().to_owned(),
        };
        let pair = match doc.tag() {
            "PRIVATE KEY" => EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                .map(Pair::Es256)
                .or_else(|_| Ed25519KeyPair::from_pkcs8(der).map(Pair::EdDsa))
                .map_err(|_| unsupported())?,
            "EC PRIVATE KEY" => {
                EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map(Pair::Es256)
                    .map_err(|_| unsupported())?
            }
            _ => return Err(unsupported()),
        };
        let (alg, jwk) = match &pair {
            Pair::Es256(p) => {
                // Uncompressed point: 0x04 || x (32 bytes) || y (32 bytes).
                let point = p.public_key().as_ref();
                let (x, y) = point
                    .get(1..)
                    .unwrap_or_default()
                    .split_at(32.min(point.len() / 2));
                (
                    "ES256",
                    json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(x),
                           "y": URL_SAFE_NO_PAD.encode(y)}),
                )
            }
            Pair::EdDsa(p) => (
                "EdDSA",
                json!({"kty": "OKP", "crv": "Ed25519",
                       "x": URL_SAFE_NO_PAD.encode(p.public_key().as_ref())}),
            ),
        };
        let mut jwk = jwk;
        if let Some(o) = jwk.as_object_mut() {
            o.insert("kid".into(), kid.into());
            o.insert("alg".into(), alg.into());
            o.insert("use".into(), "sig".into());
        }
        let header = json!({"alg": alg, "typ": "JWT", "kid": kid}).to_string();
        Ok(Key {
            kid: kid.to_owned(),
            pair,
            header_prefix: format!("{}.", URL_SAFE_NO_PAD.encode(header)),
            jwk,
        })
    }

    fn alg(&self) -> &'static str {
        match self.pair {
            Pair::Es256(_) => "ES256",
            Pair::EdDsa(_) => "EdDSA",
        }
    }

    /// `header.payload.signature` for `payload` (JSON).
    fn sign(&self, payload: &[u8], rng: &SystemRandom) -> Result<String, AssertionError> {
        let mut out = String::with_capacity(self.header_prefix.len() + payload.len() * 4 / 3 + 100);
        out.push_str(&self.header_prefix);
        URL_SAFE_NO_PAD.encode_string(payload, &mut out);
        let sig = match &self.pair {
            Pair::Es256(p) => p
                .sign(rng, out.as_bytes())
                .map_err(|_| AssertionError::Sign)?
                .as_ref()
                .to_vec(),
            Pair::EdDsa(p) => p.sign(out.as_bytes()).as_ref().to_vec(),
        };
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(sig, &mut out);
        Ok(out)
    }
}

/// A new P-256 private key in PEM (PKCS#8), for `portier dev` and for operators who want
/// one without openssl. Never called from a config: a configured key is always read.
pub fn generate_pem() -> Result<String, AssertionError> {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| AssertionError::Sign)?;
    Ok(pem::encode(&pem::Pem::new(
        "PRIVATE KEY",
        doc.as_ref().to_vec(),
    )))
}

/// What an assertion says, without its times: also the cache key, so two requests share an
/// assertion only when everything signed but `iat`/`exp` is the same.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    sid: &'a str,
    htm: &'a str,
    htu: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    org: Option<OrgClaim<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    plans: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    features: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    act: Option<Actor<'a>>,
}

#[derive(Debug, Serialize)]
struct OrgClaim<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    slug: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    permissions: &'a [String],
}

#[derive(Debug, Serialize)]
struct Actor<'a> {
    sub: &'a str,
}

fn entitlements(list: &[Entitlement]) -> Vec<String> {
    list.iter()
        .map(|e| {
            let scope = match (e.user, e.org) {
                (true, true) => "uo:",
                (false, true) => "o:",
                _ => "u:",
            };
            format!("{scope}{}", e.name)
        })
        .collect()
}

fn claims<'a>(issuer: &'a str, id: &'a Identity, b: Binding<'a>) -> Claims<'a> {
    Claims {
        iss: issuer,
        aud: b.upstream,
        sub: &id.user_id,
        sid: &id.session_id,
        htm: b.method,
        htu: b.path,
        org: id.org.as_ref().map(|o| OrgClaim {
            id: &o.id,
            slug: o.slug.as_deref(),
            role: o.role.as_deref(),
            permissions: &o.permissions,
        }),
        plans: entitlements(&id.plans),
        features: entitlements(&id.features),
        act: id.actor.as_deref().map(|sub| Actor { sub }),
    }
}

/// The claims an assertion for `id` on `b` carries (times excluded), as JSON: what
/// `portier explain` shows, without reading any key.
pub fn claims_json(config: &AssertionConfig, id: &Identity, b: Binding<'_>) -> Value {
    serde_json::to_value(claims(&config.issuer, id, b)).unwrap_or(Value::Null)
}

/// The request an assertion is for.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// The upstream's name: the `aud`.
    pub upstream: &'a str,
    pub method: &'a str,
    /// The path as sent upstream (percent-encoded as on the wire, no query).
    pub path: &'a str,
}

/// Whether an assertion came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cached,
    Signed,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Cached => "cached",
            Source::Signed => "signed",
        }
    }
}

/// The running assertion state: keys, the active one, the cache of recent assertions.
pub struct Signer {
    pub config: AssertionConfig,
    keys: Vec<Key>,
    active: usize,
    rng: SystemRandom,
    /// Time-free claims JSON -> (assertion, exp).
    cache: moka::sync::Cache<Vec<u8>, Arc<(String, i64)>>,
    jwks: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("active", &self.active_kid())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Reads every configured key; refuses to start on any unreadable or unsupported one.
    pub fn new(config: &AssertionConfig) -> Result<Signer, AssertionError> {
        let mut keys = Vec::with_capacity(config.keys.len());
        let mut active = 0;
        for (i, k) in config.keys.iter().enumerate() {
            keys.push(Key::load(&k.kid, &k.source)?);
            if k.active {
                active = i;
            }
        }
        Ok(Self::with_keys(config, keys, active))
    }

    fn with_keys(config: &AssertionConfig, keys: Vec<Key>, active: usize) -> Signer {
        let jwks =
            json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string();
        // Reused while at least half the lifetime is left.
        let reuse = (config.ttl / 2).max(Duration::from_secs(1));
        Signer {
            config: config.clone(),
            keys,
            active,
            rng: SystemRandom::new(),
            cache: moka::sync::Cache::builder()
                .weigher(|k: &Vec<u8>, v: &Arc<(String, i64)>| {
                    u32::try_from(k.len() + v.0.len() + 64).unwrap_or(u32::MAX)
                })
                .max_capacity(config.cache_max_bytes)
                .time_to_live(reuse)
                .build(),
            jwks,
        }
    }

    /// A signer with a freshly generated key (tests).
    #[cfg(test)]
    pub fn ephemeral(config: &AssertionConfig, kid: &str) -> Result<Signer, AssertionError> {
        let pem = generate_pem()?;
        Ok(Self::with_keys(
            config,
            vec![Key::from_pem(kid, pem.as_bytes())?],
            0,
        ))
    }

    pub fn active_kid(&self) -> &str {
        self.keys.get(self.active).map_or("", |k| k.kid.as_str())
    }

    pub fn active_alg(&self) -> &'static str {
        self.keys.get(self.active).map_or("", Key::alg)
    }

    /// Whether `upstream` gets assertions.
    pub fn covers(&self, upstream: &str) -> bool {
        self.config.upstreams.iter().any(|u| u == upstream)
    }

    /// The public keys, as served on the admin listener (and `public_jwks_path`).
    pub fn jwks_json(&self) -> &str {
        &self.jwks
    }

    /// `Cache-Control` of the JWKS document.
    pub fn jwks_cache_control(&self) -> String {
        format!("public, max-age={}", self.config.jwks_max_age.as_secs())
    }

    /// The assertion for `id` on `b` at `now` (unix seconds): a cached one while at least
    /// half its lifetime is left, else a new signature.
    pub fn assertion(
        &self,
        id: &Identity,
        b: Binding<'_>,
        now: i64,
    ) -> Result<(String, Source), AssertionError> {
        let key_json = serde_json::to_vec(&claims(&self.config.issuer, id, b))
            .map_err(|_| AssertionError::Sign)?;
        let half = i64::try_from(self.config.ttl.as_secs() / 2).unwrap_or(i64::MAX);
        if let Some(hit) = self.cache.get(&key_json) {
            if hit.1 - now >= half {
                return Ok((hit.0.clone(), Source::Cached));
            }
        }
        let key = self.keys.get(self.active).ok_or(AssertionError::Sign)?;
        let exp = now.saturating_add(i64::try_from(self.config.ttl.as_secs()).unwrap_or(0));
        // The claims object with the times appended: `{...,"iat":n,"exp":m}`.
        let mut payload = key_json.clone();
        payload.pop();
        let times = format!(",\"iat\":{now},\"exp\":{exp}}}");
        payload.extend_from_slice(times.as_bytes());
        let jwt = key.sign(&payload, &self.rng)?;
        self.cache.insert(key_json, Arc::new((jwt.clone(), exp)));
        Ok((jwt, Source::Signed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AssertionKey;
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519};

    fn config(keys: Vec<AssertionKey>) -> AssertionConfig {
        AssertionConfig {
            issuer: "portier".into(),
            upstreams: vec!["flask".into()],
            ttl: Duration::from_secs(120),
            jwks_max_age: Duration::from_secs(300),
            public_jwks_path: None,
            cache_max_bytes: 1 << 20,
            keys,
        }
    }

    fn identity() -> Identity {
        let claims = json!({
            "sub": "user_2abc", "sid": "sess_2abc", "exp": 4_000_000_000_i64,
            "org_id": "org_1", "org_slug": "acme", "org_role": "org:admin",
            "org_permissions": ["org:read", "org:manage"],
            "pla": "u:pro,o:business", "fea": "uo:support-chat",
            "act": {"sub": "user_admin"}
        });
        Identity::from_claims(claims.as_object().cloned().unwrap_or_default()).expect("identity")
    }

    fn parts(jwt: &str) -> (Value, Value, Vec<u8>, String) {
        let mut it = jwt.split('.');
        let (h, p, s) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let dec = |x: &str| URL_SAFE_NO_PAD.decode(x).expect("base64url");
        (
            serde_json::from_slice(&dec(h)).expect("header"),
            serde_json::from_slice(&dec(p)).expect("payload"),
            dec(s),
            format!("{h}.{p}"),
        )
    }

    fn verify(jwks: &str, jwt: &str) -> bool {
        let (header, _, sig, signed) = parts(jwt);
        let keys: Value = serde_json::from_str(jwks).expect("jwks");
        let Some(k) = keys["keys"]
            .as_array()
            .and_then(|ks| ks.iter().find(|k| k["kid"] == header["kid"]))
        else {
            return false;
        };
        let b = |n: &str| {
            URL_SAFE_NO_PAD
                .decode(k[n].as_str().unwrap_or(""))
                .unwrap_or_default()
        };
        match k["kty"].as_str() {
            Some("EC") => {
                let mut point = vec![4u8];
                point.extend(b("x"));
                point.extend(b("y"));
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .verify(signed.as_bytes(), &sig)
                    .is_ok()
            }
            Some("OKP") => UnparsedPublicKey::new(&ED25519, b("x"))
                .verify(signed.as_bytes(), &sig)
                .is_ok(),
            _ => false,
        }
    }

    const B: Binding<'static> = Binding {
        upstream: "flask",
        method: "GET",
        path: "/api/books/7",
    };

    #[test]
    fn claims_say_who_and_which_request_and_verify_against_the_jwks() {
        let s = Signer::ephemeral(&config(vec![]), "k1").expect("signer");
        let (jwt, src) = s.assertion(&identity(), B, 1_000).expect("assertion");
        assert_eq!(src, Source::Signed);
        let (header, claims, _, _) = parts(&jwt);
        assert_eq!(header, json!({"alg": "ES256", "typ": "JWT", "kid": "k1"}));
        assert_eq!(
            claims,
            json!({
                "iss": "portier", "aud": "flask", "sub": "user_2abc", "sid": "sess_2abc",
                "htm": "GET", "htu": "/api/books/7",
                "org": {"id": "org_1", "slug": "acme", "role": "org:admin",
                        "permissions": ["org:read", "org:manage"]},
                "plans": ["u:pro", "o:business"], "features": ["uo:support-chat"],
                "act": {"sub": "user_admin"}, "iat": 1000, "exp": 1120
            })
        );
        assert!(verify(s.jwks_json(), &jwt));
        let mut tampered = jwt.clone();
        tampered.replace_range(jwt.len() - 4.., "AAAA");
        assert!(!verify(s.jwks_json(), &tampered));
    }

    #[test]
    fn reused_while_half_the_lifetime_is_left_and_never_across_requests() {
        let s = Signer::ephemeral(&config(vec![]), "k1").expect("signer");
        let id = identity();
        let (a, _) = s.assertion(&id, B, 1_000).expect("a");
        let (b, src) = s.assertion(&id, B, 1_060).expect("b");
        assert_eq!(
            (a.as_str(), src),
            (b.as_str(), Source::Cached),
            "60 s of 120 left"
        );
        let (c, src) = s.assertion(&id, B, 1_061).expect("c");
        assert_eq!(src, Source::Signed, "less than half left: signed again");
        assert_ne!(a, c);
        let other_path = Binding {
            path: "/api/books/8",
            ..B
        };
        let other_method = Binding {
            method: "POST",
            ..B
        };
        let other_aud = Binding {
            upstream: "nextjs",
            ..B
        };
        for b in [other_path, other_method, other_aud] {
            let (_, src) = s.assertion(&id, b, 1_062).expect("other");
            assert_eq!(src, Source::Signed, "{b:?} has its own assertion");
        }
        let mut someone = id.clone();
        someone.user_id = "user_other".into();
        let (d, src) = s.assertion(&someone, B, 1_062).expect("d");
        assert_eq!(src, Source::Signed);
        assert_eq!(parts(&d).1["sub"], "user_other");
    }

    #[test]
    fn the_cache_of_assertions_is_bounded_in_bytes() {
        // One caller on many distinct paths (a `{rest..}` route) makes one entry per path.
        let mut cfg = config(vec![]);
        cfg.cache_max_bytes = 64 * 1024;
        let s = Signer::ephemeral(&cfg, "k1").expect("signer");
        let id = identity();
        let paths: Vec<String> = (0..2000).map(|i| format!("/api/books/{i}")).collect();
        for p in &paths {
            s.assertion(&id, Binding { path: p, ..B }, 1_000)
                .expect("sign");
        }
        s.cache.run_pending_tasks();
        assert!(
            s.cache.weighted_size() <= 64 * 1024,
            "{} bytes cached",
            s.cache.weighted_size()
        );
        assert!(
            s.cache.entry_count() > 10,
            "recent assertions are still kept"
        );
    }

    #[test]
    fn pem_keys_of_both_kinds_and_refusals_that_name_the_kid() {
        let dir = std::env::temp_dir().join(format!("portier-assertion-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let rng = SystemRandom::new();
        let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("ec");
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).expect("ed");
        let write = |name: &str, der: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec())))
                .expect("write");
            p
        };
        let (ec_path, ed_path) = (write("ec.pem", ec.as_ref()), write("ed.pem", ed.as_ref()));
        std::env::set_var(
            "PORTIER_UT_ASSERTION_ED",
            std::fs::read_to_string(&ed_path).expect("ed"),
        );
        let s = Signer::new(&config(vec![
            AssertionKey {
                kid: "old".into(),
                source: KeySource::File(ec_path.clone()),
                active: false,
            },
            AssertionKey {
                kid: "new".into(),
                source: KeySource::Env("PORTIER_UT_ASSERTION_ED".into()),
                active: true,
            },
        ]))
        .expect("signer");
        assert_eq!((s.active_kid(), s.active_alg()), ("new", "EdDSA"));
        let jwks: Value = serde_json::from_str(s.jwks_json()).expect("jwks");
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(kids, ["old", "new"], "both published");
        assert!(!s.jwks_json().contains("\"d\""), "no private part");
        let (jwt, _) = s.assertion(&identity(), B, 5).expect("jwt");
        assert_eq!(parts(&jwt).0["alg"], "EdDSA");
        assert!(verify(s.jwks_json(), &jwt));

        let rsa_like = dir.join("cert.pem");
        std::fs::write(
            &rsa_like,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let one = |source| {
            Signer::new(&config(vec![AssertionKey {
                kid: "k".into(),
                source,
                active: true,
            }]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        let e = one(KeySource::File(rsa_like));
        assert!(
            e.contains("assertion key k: not a P-256 EC or Ed25519"),
            "{e}"
        );
        let e = one(KeySource::File(dir.join("missing.pem")));
        assert!(
            e.contains("cannot read") && e.contains("missing.pem"),
            "{e}"
        );
        let e = one(KeySource::Env("PORTIER_UT_ASSERTION_UNSET".into()));
        assert!(e.contains("PORTIER_UT_ASSERTION_UNSET is not set"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
