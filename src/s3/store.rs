//! The embedded S3-compatible store used by `portier dev` and the tests: s3s-fs serving one
//! directory on 127.0.0.1 with SigV4 checking on, so the default setup exercises the same
//! signing path as a real bucket. It runs on the current tokio runtime and stops when the
//! [`EmbeddedStore`] is dropped. It answers path-style requests only.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rand::distr::{Alphanumeric, SampleString};
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
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
    check_bucket_name(bucket).map_err(StoreError::InvalidBucket)?;
    let visible = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if !visible(access_key) || access_key.contains('/') || !visible(secret_key) {
        return Err(StoreError::InvalidKeys);
    }
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
    builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
    let service = builder.build();

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(StoreError::Bind)?;
    let addr = listener.local_addr().map_err(StoreError::Bind)?;
    let task = tokio::spawn(accept_loop(listener, service));
    Ok(EmbeddedStore {
        addr,
        access_key: access_key.to_owned(),
        secret_key: secret_key.to_owned(),
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
