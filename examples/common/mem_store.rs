//! An S3 store that keeps objects in memory, for benches that must not be bound by the
//! store: `s3s` parses every request and checks its SigV4 signature (header signatures and
//! presigned URLs, one key pair), as the embedded s3s-fs store does, but objects live in
//! `Bytes` and a GET streams them in 1 MiB slices without copying (s3s-fs reads its file
//! through tokio's blocking pool in 4 KiB pieces, ~70-170 MiB/s here). PutObject,
//! GetObject (whole object), HeadObject and DeleteObject only; one bucket, path-style.
//!
//! Shared by `examples/s3_store.rs` (`s3_store mem ...`) and `examples/s3_stream.rs`
//! (`--store mem`) through `#[path]`: an example cannot depend on another one.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::dto::{
    DeleteObjectInput, DeleteObjectOutput, ETag, GetObjectInput, GetObjectOutput, HeadObjectInput,
    HeadObjectOutput, PutObjectInput, PutObjectOutput, StreamingBlob,
};
use s3s::service::S3ServiceBuilder;
use s3s::stream::{ByteStream, RemainingLength};
use s3s::{s3_error, S3Request, S3Response, S3Result, StdError, S3};

/// The size of the slices a GET streams (hyper writes each as it comes).
const SLICE: usize = 1 << 20;

#[derive(Clone)]
struct Object {
    /// Whole body, kept in the chunks it arrived in (no copy into one buffer).
    chunks: Arc<Vec<Bytes>>,
    len: u64,
    content_type: Option<String>,
}

#[derive(Default, Clone)]
struct MemStore {
    bucket: String,
    objects: Arc<Mutex<HashMap<String, Object>>>,
}

impl MemStore {
    fn check_bucket(&self, bucket: &str) -> S3Result<()> {
        if bucket == self.bucket {
            Ok(())
        } else {
            Err(s3_error!(NoSuchBucket))
        }
    }

    fn get(&self, key: &str) -> S3Result<Object> {
        let objects = self
            .objects
            .lock()
            .map_err(|_| s3_error!(InternalError, "store lock poisoned"))?;
        objects
            .get(key)
            .cloned()
            .ok_or_else(|| s3_error!(NoSuchKey))
    }
}

/// An object's chunks re-sliced to at most [`SLICE`] bytes, with an exact length.
struct Slices {
    chunks: Arc<Vec<Bytes>>,
    next: usize,
    rest: Bytes,
    remaining: usize,
}

impl futures_util::Stream for Slices {
    type Item = Result<Bytes, StdError>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        while this.rest.is_empty() {
            let Some(chunk) = this.chunks.get(this.next) else {
                return Poll::Ready(None);
            };
            this.rest = chunk.clone();
            this.next += 1;
        }
        let piece = this.rest.split_to(this.rest.len().min(SLICE));
        this.remaining -= piece.len();
        Poll::Ready(Some(Ok(piece)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, None)
    }
}

impl ByteStream for Slices {
    fn remaining_length(&self) -> RemainingLength {
        RemainingLength::new_exact(self.remaining)
    }
}

#[async_trait::async_trait]
impl S3 for MemStore {
    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let Some(mut body) = input.body else {
            return Err(s3_error!(IncompleteBody));
        };
        // Small pieces (the client's writes) are gathered into 1 MiB chunks.
        let mut chunks = Vec::new();
        let mut pending = BytesMut::new();
        let mut len = 0u64;
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| s3_error!(IncompleteBody, "body: {e}"))?;
            len += piece.len() as u64;
            if pending.is_empty() && piece.len() >= SLICE {
                chunks.push(piece);
                continue;
            }
            pending.extend_from_slice(&piece);
            if pending.len() >= SLICE {
                chunks.push(pending.split().freeze());
            }
        }
        if !pending.is_empty() {
            chunks.push(pending.freeze());
        }
        if input.content_length.is_some_and(|n| n as u64 != len) {
            return Err(s3_error!(
                IncompleteBody,
                "length differs from Content-Length"
            ));
        }
        let object = Object {
            chunks: Arc::new(chunks),
            len,
            content_type: input.content_type,
        };
        self.objects
            .lock()
            .map_err(|_| s3_error!(InternalError, "store lock poisoned"))?
            .insert(input.key, object);
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(format!("mem-{len}"))),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        if input.range.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "ranges are not served from memory"
            ));
        }
        let object = self.get(&input.key)?;
        let remaining = usize::try_from(object.len).map_err(|_| s3_error!(InternalError))?;
        let body = Slices {
            chunks: object.chunks.clone(),
            next: 0,
            rest: Bytes::new(),
            remaining,
        };
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::new(body)),
            content_length: Some(object.len as i64),
            content_type: object.content_type,
            e_tag: Some(ETag::Strong(format!("mem-{}", object.len))),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let object = self.get(&input.key)?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(object.len as i64),
            content_type: object.content_type,
            e_tag: Some(ETag::Strong(format!("mem-{}", object.len))),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        self.objects
            .lock()
            .map_err(|_| s3_error!(InternalError, "store lock poisoned"))?
            .remove(&input.key);
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }
}

/// Serves `bucket` from memory on an ephemeral 127.0.0.1 port, accepting requests signed with
/// the one key pair, on the current tokio runtime; returns the address.
pub async fn start(
    bucket: &str,
    access_key: &str,
    secret_key: &str,
) -> std::io::Result<SocketAddr> {
    let store = MemStore {
        bucket: bucket.to_owned(),
        ..MemStore::default()
    };
    let mut builder = S3ServiceBuilder::new(store);
    builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
