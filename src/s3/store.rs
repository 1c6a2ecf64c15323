//! The embedded S3-compatible store used by `portier dev` and the tests: s3s-fs serving one
//! directory on 127.0.0.1 with SigV4 checking on, so the default setup exercises the same
//! signing path as a real bucket. It runs on the current tokio runtime and stops when the
//! [`EmbeddedStore`] is dropped. It answers path-style requests only.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use rand::distr::{Alphanumeric, SampleString};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{s3_error, S3Result};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::sign::check_bucket_name;

/// Why the embedded store could not start.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("invalid bucket for the embedded store: {0}")]
    InvalidBucket(super::sign::SignError),
    #[error("embedded store access key and secret key must be non-empty visible ASCII")]
    InvalidKeys,
    #[error("cannot create the bucket directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the store root {path}: {reason}")]
    Backend { path: PathBuf, reason: String },
    #[error("cannot bind the embedded store on 127.0.0.1: {0}")]
    Bind(std::io::Error),
}

/// A running embedded store. `Debug` hides the secret key.
pub struct EmbeddedStore {
    /// Where it listens (127.0.0.1, an ephemeral port).
    pub addr: SocketAddr,
    pub access_key: String,
    pub secret_key: String,
    /// The pairs it accepts (rotate temporary credentials through it).
    pub keys: KeyRing,
    /// The directory whose subdirectories are buckets.
    pub root: PathBuf,
    pub bucket: String,
    task: JoinHandle<()>,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("addr", &self.addr)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("root", &self.root)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// The endpoint to put in an `S3Target` (`http://127.0.0.1:<port>`, path-style).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and closes every open connection (also done on drop).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The key pairs a store accepts, changeable while it runs (tests rotate temporary
/// credentials through it). A pair with a session token is accepted only with that token; a
/// pair with an expiry only until then, as S3 does with temporary credentials.
#[derive(Clone, Default)]
pub struct KeyRing(Arc<Mutex<HashMap<String, RingKey>>>);

#[derive(Clone)]
struct RingKey {
    secret: String,
    token: Option<String>,
    expiry: Option<SystemTime>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("KeyRing").field("keys", &n).finish()
    }
}

impl KeyRing {
    pub fn single(access_key: &str, secret_key: &str) -> KeyRing {
        let ring = KeyRing::default();
        ring.add(access_key, secret_key, None, None);
        ring
    }

    /// Accepts a pair (with its session token and expiry, for temporary credentials).
    pub fn add(
        &self,
        access_key: &str,
        secret_key: &str,
        token: Option<&str>,
        expiry: Option<SystemTime>,
    ) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(
                access_key.to_string(),
                RingKey {
                    secret: secret_key.to_string(),
                    token: token.map(str::to_string),
                    expiry,
                },
            );
        }
    }

    /// Stops accepting a pair.
    pub fn remove(&self, access_key: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(access_key);
        }
    }

    fn get(&self, access_key: &str) -> Option<RingKey> {
        let key = self.0.lock().ok()?.get(access_key)?.clone();
        match key.expiry {
            Some(exp) if SystemTime::now() >= exp => None,
            _ => Some(key),
        }
    }
}

struct RingAuth(KeyRing);

#[async_trait::async_trait]
impl S3Auth for RingAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.get(access_key) {
            Some(k) => Ok(SecretKey::from(k.secret)),
            None => Err(s3_error!(
                InvalidAccessKeyId,
                "unknown or expired access key"
            )),
        }
    }
}

#[async_trait::async_trait]
impl S3Access for RingAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(ak) = cx.credentials().map(|c| c.access_key.clone()) else {
            return Err(s3_error!(AccessDenied, "Signature is required"));
        };
        let Some(key) = self.0.get(&ak) else {
            return Err(s3_error!(
                InvalidAccessKeyId,
                "unknown or expired access key"
            ));
        };
        if let Some(want) = key.token {
            let header = cx
                .headers()
                .get("x-amz-security-token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let query = cx.uri().query().and_then(|q| {
                q.split('&').find_map(|p| {
                    p.strip_prefix("X-Amz-Security-Token=")
                        .map(super::front::decode_query_value)
                })
            });
            if header.or(query.flatten()).as_deref() != Some(want.as_str()) {
                return Err(s3_error!(InvalidToken, "the session token does not match"));
            }
        }
        Ok(())
    }
}

struct RingAccess(KeyRing);

/// A fresh random key pair for a dev store (20 and 40 alphanumerics, AWS-shaped).
pub fn generate_keys() -> (String, String) {
    let mut rng = rand::rng();
    (
        Alphanumeric.sample_string(&mut rng, 20).to_uppercase(),
        Alphanumeric.sample_string(&mut rng, 40),
    )
}

/// Starts the store: creates `root/bucket`, binds 127.0.0.1:0 and serves on the current tokio
/// runtime, accepting only requests signed with `access_key`/`secret_key` (header signatures
/// and presigned URLs).
pub async fn start(
    root: PathBuf,
    bucket: &str,
    access_key: &str,
    secret_key: &str,
) -> Result<EmbeddedStore, StoreError> {
    let visible = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if !visible(access_key) || access_key.contains('/') || !visible(secret_key) {
        return Err(StoreError::InvalidKeys);
    }
    let mut store = start_with_keys(root, bucket, KeyRing::single(access_key, secret_key)).await?;
    store.access_key = access_key.to_owned();
    store.secret_key = secret_key.to_owned();
    Ok(store)
}

/// Starts a store that accepts the pairs of `keys`, which can change while it runs.
pub async fn start_with_keys(
    root: PathBuf,
    bucket: &str,
    keys: KeyRing,
) -> Result<EmbeddedStore, StoreError> {
    check_bucket_name(bucket).map_err(StoreError::InvalidBucket)?;
    let bucket_dir = root.join(bucket);
    tokio::fs::create_dir_all(&bucket_dir)
        .await
        .map_err(|source| StoreError::CreateDir {
            path: bucket_dir.clone(),
            source,
        })?;
    // s3s_fs::Error has no Display; its Debug names the failing io error and path only.
    let fs = s3s_fs::FileSystem::new(&root).map_err(|e| StoreError::Backend {
        path: root.clone(),
        reason: format!("{e:?}"),
    })?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(RingAuth(keys.clone()));
    builder.set_access(RingAccess(keys.clone()));
    let service = builder.build();

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(StoreError::Bind)?;
    let addr = listener.local_addr().map_err(StoreError::Bind)?;
    let task = tokio::spawn(accept_loop(listener, service));
    Ok(EmbeddedStore {
        addr,
        access_key: String::new(),
        secret_key: String::new(),
        keys,
        root,
        bucket: bucket.to_owned(),
        task,
    })
}

/// Serves connections until aborted. Connections live in a `JoinSet` owned by this task, so
/// aborting the task drops the set and closes them all.
async fn accept_loop(listener: TcpListener, service: S3Service) {
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Typically EMFILE; back off instead of spinning.
                log::warn!("embedded S3 store: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = service.clone();
        connections.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                log::debug!("embedded S3 store: connection ended: {e}");
            }
        });
    }
}
