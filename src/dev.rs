//! `portier dev`: a local Clerk-like issuer (a generated RSA key whose JWKS is served over HTTP
//! on loopback) and an echo upstream, so Portier runs end to end offline through exactly the
//! production verification path. The issuer's `iss` is an `http://127.0.0.1` URL, which a
//! config file can never name (issuers must be https), so production never trusts it.
//!
//! The same issuer signs the tokens the integration tests use: real RS256 over a real key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};

use crate::auth::verify::{unix_now, SESSION_TOKEN_CATEGORY};
pub use crate::serve::{json_response, serve, Handler};

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("RSA key: {0}")]
    Key(String),
    #[error("dev state {0}: {1}")]
    State(PathBuf, String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A token issuer with a real RSA key.
pub struct DevIssuer {
    key: RsaKeyPair,
    pkcs8: Vec<u8>,
    pub kid: String,
    pub issuer: String,
}

impl DevIssuer {
    /// A fresh 2048-bit key.
    pub fn generate(issuer: &str, kid: &str) -> Result<DevIssuer, DevError> {
        let pkcs8 = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .map_err(|e| DevError::Key(e.to_string()))
            .and_then(|k| {
                use aws_lc_rs::encoding::AsDer;
                k.as_der()
                    .map(|d| d.as_ref().to_vec())
                    .map_err(|e| DevError::Key(e.to_string()))
            })?;
        Self::from_pkcs8(issuer, kid, pkcs8)
    }

    fn from_pkcs8(issuer: &str, kid: &str, pkcs8: Vec<u8>) -> Result<DevIssuer, DevError> {
        let key = RsaKeyPair::from_pkcs8(&pkcs8).map_err(|e| DevError::Key(e.to_string()))?;
        Ok(DevIssuer {
            key,
            pkcs8,
            kid: kid.to_string(),
            issuer: issuer.to_string(),
        })
    }

    /// The public key as a JWK (`kty`, `kid`, `use`, `alg`, `n`, `e`).
    pub fn jwk(&self) -> Value {
        let pk = self.key.public_key();
        let comps: aws_lc_rs::rsa::PublicKeyComponents<Vec<u8>> = pk.into();
        json!({
            "kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(&comps.n),
            "e": URL_SAFE_NO_PAD.encode(&comps.e),
        })
    }

    /// The public key as PEM (`-----BEGIN PUBLIC KEY-----`), for networkless verification.
    pub fn public_pem(&self) -> String {
        use aws_lc_rs::encoding::AsDer;
        let comps: aws_lc_rs::rsa::PublicKeyComponents<Vec<u8>> = self.key.public_key().into();
        let der = comps
            .as_der()
            .map(|d| d.as_ref().to_vec())
            .unwrap_or_default();
        let b64 = STANDARD.encode(der);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// Signs any header and payload with RS256 (the header is taken as given, so tests can
    /// craft wrong `typ`, `cat`, `kid` or `alg` values).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        // Signing with a key we generated cannot fail short of a library bug; an empty
        // signature then simply fails verification.
        if self
            .key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                msg.as_bytes(),
                &mut sig,
            )
            .is_err()
        {
            sig.clear();
        }
        format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// The header Clerk puts on session tokens.
    pub fn header(&self) -> Value {
        json!({"alg": "RS256", "typ": "JWT", "kid": self.kid, "cat": SESSION_TOKEN_CATEGORY})
    }

    /// Standard session claims for `sub`, valid for `ttl_secs`, issued now.
    pub fn claims(&self, sub: &str, azp: &str, ttl_secs: i64) -> Value {
        let now = unix_now();
        json!({
            "iss": self.issuer, "sub": sub, "sid": format!("sess_{}", sub.trim_start_matches("user_")),
            "azp": azp, "iat": now, "nbf": now - 10, "exp": now + ttl_secs, "v": 2,
            "jti": format!("{:x}", rand::random::<u64>()),
        })
    }

    pub fn token(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }

    /// Saves the key so `portier token` can mint against a running `portier dev`.
    pub fn save(&self, file: &Path) -> Result<(), DevError> {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let state =
            json!({"issuer": self.issuer, "kid": self.kid, "pkcs8": STANDARD.encode(&self.pkcs8)});
        std::fs::write(file, state.to_string())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }

    pub fn load(file: &Path) -> Result<DevIssuer, DevError> {
        let bad = |m: &str| DevError::State(file.to_path_buf(), m.to_string());
        let text = std::fs::read_to_string(file)
            .map_err(|e| bad(&format!("{e} (is `portier dev` running?)")))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
        let issuer = v["issuer"].as_str().ok_or_else(|| bad("no issuer"))?;
        let kid = v["kid"].as_str().ok_or_else(|| bad("no kid"))?;
        let pkcs8 = v["pkcs8"]
            .as_str()
            .and_then(|s| STANDARD.decode(s).ok())
            .ok_or_else(|| bad("no key"))?;
        Self::from_pkcs8(issuer, kid, pkcs8)
    }
}

/// A fresh Standard Webhooks secret (`whsec_` + 32 random bytes, base64).
pub fn random_webhook_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// Where `portier dev` keeps its issuer key for `portier token`.
pub fn state_file() -> PathBuf {
    std::env::temp_dir().join("portier-dev").join("issuer.json")
}

/// The echo upstream's answer: the method, path and headers it received.
pub fn echo(parts: &http::request::Parts) -> Value {
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                Value::String(v.to_str().unwrap_or("<binary>").to_string()),
            )
        })
        .collect();
    json!({"method": parts.method.as_str(), "path": parts.uri.to_string(), "headers": headers})
}

/// Handles for the servers `portier dev` runs besides Portier itself.
pub struct DevServers {
    pub issuer: Arc<DevIssuer>,
    pub jwks_addr: SocketAddr,
    pub echo_addr: SocketAddr,
    /// The embedded S3-compatible store (signature checking on), and where it keeps objects.
    pub s3: crate::s3::EmbeddedStore,
    _runtime: tokio::runtime::Runtime,
}

/// Starts the JWKS server and the echo upstream on loopback ports chosen by the OS.
pub fn start_dev_servers() -> Result<DevServers, DevError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (jwks_listener, echo_listener) = runtime.block_on(async {
        Ok::<_, std::io::Error>((
            tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        ))
    })?;
    let jwks_addr = jwks_listener.local_addr()?;
    let echo_addr = echo_listener.local_addr()?;
    let issuer = Arc::new(DevIssuer::generate(
        &format!("http://{jwks_addr}"),
        "ins_portier_dev",
    )?);
    let doc = json!({"keys": [issuer.jwk()]});
    runtime.spawn(serve(
        jwks_listener,
        Arc::new(move |parts| match parts.uri.path() {
            "/.well-known/jwks.json" => json_response(200, &doc),
            _ => json_response(404, &json!({"error": "not found"})),
        }),
    ));
    runtime.spawn(serve(
        echo_listener,
        Arc::new(|parts| json_response(200, &echo(&parts))),
    ));
    let (ak, sk) = crate::s3::generate_keys();
    let root = std::env::temp_dir().join("portier-dev").join("s3");
    let s3 = runtime
        .block_on(crate::s3::start(root, "portier-dev", &ak, &sk))
        .map_err(|e| DevError::Key(format!("embedded S3 store: {e}")))?;
    Ok(DevServers {
        issuer,
        jwks_addr,
        echo_addr,
        s3,
        _runtime: runtime,
    })
}

/// The policies shipped in `policies/`, embedded so `portier dev` runs from anywhere.
pub const EMBEDDED_POLICIES: &[(&str, &str)] = &[
    ("policies/api.toml", include_str!("../policies/api.toml")),
    ("policies/web.toml", include_str!("../policies/web.toml")),
    (
        "policies/files.toml",
        include_str!("../policies/files.toml"),
    ),
];

/// The dev configuration: the shipped upstream names all pointing at the echo server.
/// Where `portier dev` publishes its assertion keys on the public listener.
pub const DEV_JWKS_PATH: &str = "/.well-known/portier/jwks.json";

/// The local access key id of the dev egress service (its secret is made up per run).
pub const DEV_EGRESS_KEY_ID: &str = "PORTIERDEVSERVICE1";

/// A local egress secret: 40 characters, like an AWS secret access key.
pub fn random_local_secret() -> String {
    let bytes: [u8; 30] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn dev_config_toml(listen: SocketAddr, egress: SocketAddr, servers: &DevServers) -> String {
    format!(
        r#"
[server]
listen = ["{listen}"]
threads = 1
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1

[clerk]
# Replaced in code by the dev issuer's http:// URL, which no config file may name.
issuer = "https://dev-issuer.invalid"
authorized_parties = ["http://localhost:3000"]
missing_azp = "allow"

[clerk.jwks]
url = "http://{jwks}/.well-known/jwks.json"

[upstreams.flask]
peers = ["{echo}"]
credentials = "strip"

[upstreams.nextjs]
peers = ["{echo}"]
credentials = "forward"

[webhooks.workers]
secrets_env = ["PORTIER_DEV_WORKER_WEBHOOK_SECRET"]

[webhooks.clerk]
secrets_env = ["PORTIER_DEV_CLERK_WEBHOOK_SECRET"]

[s3]
endpoint = "http://{s3}"
region = "us-east-1"
bucket = "portier-dev"
addressing = "path"
access_key_id_env = "PORTIER_DEV_S3_ACCESS_KEY_ID"
secret_access_key_env = "PORTIER_DEV_S3_SECRET_ACCESS_KEY"
session_token_env = "PORTIER_DEV_S3_SESSION_TOKEN"

[egress]
listen = "{egress}"
bucket = "app-media"

[egress.services.dev]
access_key_id = "{DEV_EGRESS_KEY_ID}"
secret_env = "PORTIER_DEV_EGRESS_SECRET"
[[egress.services.dev.allow]]
operations = ["read", "write", "delete"]
keys = ["user_*/**"]

[assertion]
upstreams = ["flask"]
public_jwks_path = "{DEV_JWKS_PATH}"
[[assertion.keys]]
kid = "dev"
pem_env = "PORTIER_DEV_ASSERTION_KEY"
"#,
        s3 = servers.s3.addr,
        jwks = servers.jwks_addr,
        echo = servers.echo_addr,
    )
}
