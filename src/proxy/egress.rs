//! The egress side's phases: verify and authorize in `request_filter` (over
//! [`crate::egress`]), re-sign for the real bucket in `upstream_request_filter`, check a signed
//! payload hash while the body streams (the last piece is held until the hash is known, so a
//! tampered body never completes at the store), and answer in S3's XML.

use std::time::SystemTime;

use aws_lc_rs::digest;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::ctx::Ctx;
use super::Portier;
use crate::egress::errors::S3Error;
use crate::egress::ops::{self, Operation};
use crate::egress::sigv4::{self, Inbound, PayloadMode};
use crate::s3::{encode_key_for_path, kind_folder, sign_headers, Payload};

/// An admitted egress request: what the store request will be.
pub struct EgressCall {
    pub method: String,
    /// The absolute store URI (the real bucket).
    pub uri: http::Uri,
    pub payload: PayloadMode,
    /// `x-amz-copy-source` rewritten for the real bucket.
    pub copy_source: Option<String>,
    /// The body's running SHA-256 when the client signed a hash, and the piece held back.
    pub hasher: Option<digest::Context>,
    pub held: Option<Bytes>,
    /// A store answer being replaced by Portier's own error (the store refused Portier).
    pub replaced: Option<S3Error>,
}

/// Client headers S3 defines for the object operations egress performs; everything else
/// (the client's Authorization, its date and hash, SDK headers) is dropped before re-signing.
fn keep(name: &str) -> bool {
    matches!(
        name,
        "content-type"
            | "content-length"
            | "content-md5"
            | "content-encoding"
            | "content-disposition"
            | "content-language"
            | "cache-control"
            | "expires"
            | "range"
            | "if-match"
            | "if-none-match"
            | "if-modified-since"
            | "if-unmodified-since"
            | "expect"
            | "x-amz-sdk-checksum-algorithm"
            | "x-amz-trailer"
            | "x-amz-decoded-content-length"
            | "x-amz-copy-source-range"
            | "x-amz-metadata-directive"
            | "x-amz-storage-class"
            | "x-amz-tagging"
            | "x-amz-tagging-directive"
    ) || name.starts_with("x-amz-meta-")
        || name.starts_with("x-amz-checksum-")
        || name.starts_with("x-amz-copy-source-if-")
        || name.starts_with("x-amz-server-side-encryption")
}

/// The client's query without the presign parameters of its own signature.
fn store_query(query: Option<&str>) -> String {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("X-Amz-"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Largest DeleteObjects body: 1,000 keys of up to 1,024 bytes, with their XML.
const MAX_DELETE_BODY: u64 = 2 * 1024 * 1024;

impl Portier {
    /// Writes an S3 error document and records it.
    async fn refuse_s3(&self, session: &mut Session, ctx: &mut Ctx, err: S3Error) -> Result<bool> {
        ctx.egress_error = Some(err);
        super::respond::send_xml(session, err.status, Bytes::from(err.document("portier"))).await?;
        Ok(true)
    }

    /// `request_filter` on the egress side.
    pub(super) async fn admit_egress(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let live = self.gw.live();
        ctx.live = Some(live.clone());
        let (Some(state), Some(backend)) = (live.egress.clone(), live.s3.clone()) else {
            log::error!("the egress listener runs without [egress] or [s3]");
            return self.refuse_s3(session, ctx, S3Error::INTERNAL).await;
        };
        let req = session.req_header();
        let inbound = Inbound {
            method: req.method.as_str(),
            raw_path: req.uri.path(),
            query: req.uri.query(),
            headers: &req.headers,
        };
        let verified = match sigv4::verify(
            &inbound,
            |ak| state.secret_of(ak),
            &state.config.region,
            SystemTime::now(),
            &state.keys,
        ) {
            Ok(v) => v,
            Err(e) => {
                log::info!("egress request refused: {e}");
                return self.refuse_s3(session, ctx, S3Error::from(&e)).await;
            }
        };
        let Some(service) = state.service(&verified.access_key) else {
            return self.refuse_s3(session, ctx, S3Error::INTERNAL).await;
        };
        ctx.egress_service = Some(service.name.clone());
        let s3req = match ops::classify(
            inbound.method,
            inbound.raw_path,
            inbound.query,
            inbound.headers,
            &state.config.bucket,
        ) {
            Ok(r) => r,
            Err(e) => return self.refuse_s3(session, ctx, e).await,
        };
        ctx.operation = Some(s3req.op.name());
        ctx.key_kind = s3req
            .key
            .as_deref()
            .or(s3req.prefix.as_deref())
            .and_then(kind_folder)
            .map(str::to_string);
        if verified.payload == PayloadMode::StreamingSigned {
            return self.refuse_s3(session, ctx, S3Error::CHUNK_SIGNED).await;
        }
        if matches!(s3req.op, Operation::PutObject | Operation::UploadPart) {
            let framed = verified.payload == PayloadMode::StreamingUnsignedTrailer;
            let length = if framed {
                req.headers.contains_key("x-amz-decoded-content-length")
            } else {
                req.headers.contains_key(http::header::CONTENT_LENGTH)
            };
            if !length {
                return self.refuse_s3(session, ctx, S3Error::MISSING_LENGTH).await;
            }
        }
        if s3req.op == Operation::DeleteObjects {
            return self
                .delete_objects(session, ctx, &state, service, &backend, &verified)
                .await;
        }
        if let Err(e) = ops::authorize(&service.rules, &s3req, &[]) {
            log::info!(
                "egress: {} may not {} {}",
                service.name,
                s3req.op.name(),
                ctx.key_kind.as_deref().unwrap_or("-")
            );
            return self.refuse_s3(session, ctx, e).await;
        }
        if backend.credentials().is_err() {
            return self
                .refuse_s3(session, ctx, S3Error::CREDENTIALS_UNAVAILABLE)
                .await;
        }
        let target = &backend.config.target;
        let query = store_query(inbound.query);
        let uri = match &s3req.key {
            Some(k) => {
                let base = target.object_uri(k);
                base.and_then(|u| {
                    if query.is_empty() {
                        Ok(u)
                    } else {
                        format!("{u}?{query}")
                            .parse()
                            .map_err(|_| crate::s3::SignError::InvalidUri)
                    }
                })
            }
            None => target.bucket_uri(&query),
        };
        let Ok(uri) = uri else {
            return self.refuse_s3(session, ctx, S3Error::INTERNAL).await;
        };
        let copy_source = s3req
            .copy_source
            .as_deref()
            .map(|src| format!("{}/{}", target.bucket(), encode_key_for_path(src)));
        let hashes_body = matches!(verified.payload, PayloadMode::Sha256(_))
            && matches!(inbound.method, "PUT" | "POST");
        ctx.egress = Some(EgressCall {
            method: inbound.method.to_string(),
            uri,
            payload: verified.payload.clone(),
            copy_source,
            hasher: hashes_body.then(|| digest::Context::new(&digest::SHA256)),
            held: None,
            replaced: None,
        });
        Ok(false)
    }

    /// DeleteObjects: the body names the keys, so it is read (bounded), its hash checked, every
    /// key authorized, and the same bytes sent to the store by Portier itself.
    async fn delete_objects(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        state: &crate::egress::EgressState,
        service: &crate::egress::Service,
        backend: &crate::s3::front::S3Backend,
        verified: &sigv4::Verified,
    ) -> Result<bool> {
        let _ = state;
        ctx.continue_sent |= super::body::continue_if_expected(session).await?;
        let body = match super::body::read_bounded(session, MAX_DELETE_BODY, false).await? {
            Ok(b) => b,
            Err(_) => return self.refuse_s3(session, ctx, S3Error::TOO_LARGE).await,
        };
        let hash = hex::encode(digest::digest(&digest::SHA256, &body));
        if let PayloadMode::Sha256(claimed) = &verified.payload {
            if *claimed != hash {
                return self.refuse_s3(session, ctx, S3Error::SHA256_MISMATCH).await;
            }
        }
        let keys = match ops::delete_keys(&body) {
            Ok(k) => k,
            Err(e) => return self.refuse_s3(session, ctx, e).await,
        };
        let req = ops::S3Request {
            op: Operation::DeleteObjects,
            key: None,
            copy_source: None,
            prefix: None,
        };
        if let Err(e) = ops::authorize(&service.rules, &req, &keys) {
            log::info!(
                "egress: {} may not delete every key of a batch",
                service.name
            );
            return self.refuse_s3(session, ctx, e).await;
        }
        let Ok(bucket) = backend.bucket() else {
            return self
                .refuse_s3(session, ctx, S3Error::CREDENTIALS_UNAVAILABLE)
                .await;
        };
        let mut headers = http::HeaderMap::new();
        for (k, v) in &session.req_header().headers {
            if keep(k.as_str()) && k != http::header::EXPECT {
                headers.append(k.clone(), v.clone());
            }
        }
        let answer = backend
            .client
            .send_raw(
                bucket,
                http::Method::POST,
                "delete=",
                headers,
                Bytes::from(body),
                &hash,
            )
            .await;
        match answer {
            Ok((status, ct, doc)) if !matches!(status, 401 | 403) => {
                super::respond::send_raw(session, status, ct.as_deref(), doc).await?;
                Ok(true)
            }
            Ok((status, _, doc)) => {
                log::error!(
                    "the store refused Portier's credentials on DeleteObjects: HTTP {status} {}",
                    crate::s3::front::error_code(&doc).unwrap_or_else(|| "-".into())
                );
                self.refuse_s3(session, ctx, S3Error::STORE_REFUSED_PORTIER)
                    .await
            }
            Err(e) => {
                log::warn!("egress DeleteObjects: {e}");
                self.refuse_s3(
                    session,
                    ctx,
                    S3Error::new("ServiceUnavailable", 503, "The store could not be reached"),
                )
                .await
            }
        }
    }
}

/// `upstream_request_filter` on the egress side: only S3's headers stay, the copy source
/// names the real bucket, and Portier signs with its credentials, keeping the client's
/// payload hash or trailer mode so the store itself checks integrity.
pub(super) fn sign(
    backend: &crate::s3::front::S3Backend,
    req: &mut RequestHeader,
    call: &mut EgressCall,
) -> Result<()> {
    let dropped: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|n| !keep(n.as_str()))
        .cloned()
        .collect();
    for name in dropped {
        req.remove_header(&name);
    }
    if let Some(src) = &call.copy_source {
        req.insert_header("x-amz-copy-source", src.as_str())?;
    }
    let origin_form: http::Uri = call
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .parse()
        .map_err(|e| Error::because(ErrorType::InternalError, "store URI", e))?;
    req.set_uri(origin_form);
    // Each attempt (Pingora may retry) streams the body from its start again.
    if call.hasher.is_some() {
        call.hasher = Some(digest::Context::new(&digest::SHA256));
        call.held = None;
    }
    let payload = match &call.payload {
        PayloadMode::Sha256(h) => Payload::Sha256(h.clone()),
        PayloadMode::Unsigned => Payload::Unsigned,
        PayloadMode::StreamingUnsignedTrailer => Payload::StreamingUnsignedTrailer,
        PayloadMode::StreamingSigned => {
            return Err(Error::explain(
                ErrorType::InternalError,
                "chunk-signed body",
            ))
        }
    };
    let creds = backend.credentials().map_err(|_| {
        let mut e = Error::explain(ErrorType::ConnectRefused, "S3 credentials unavailable");
        e.esource = pingora::ErrorSource::Upstream;
        e
    })?;
    let signed = sign_headers(
        &creds,
        backend.config.target.region(),
        &call.method,
        &call.uri,
        &req.headers,
        payload,
        SystemTime::now(),
    )
    .map_err(|e| {
        log::error!("egress SigV4 signing failed: {e}");
        Error::explain(ErrorType::InternalError, "SigV4 signing failed")
    })?;
    for (k, v) in signed {
        req.insert_header(k, v)?;
    }
    Ok(())
}

/// `request_body_filter` on the egress side: the signed hash is checked while the body streams;
/// the last piece is held back until the hash is known, so a body that does not match never
/// completes at the store (it sees a short body and stores nothing).
pub(super) fn check_body(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    call: &mut EgressCall,
) -> Result<()> {
    let Some(hasher) = call.hasher.as_mut() else {
        return Ok(());
    };
    let incoming = body.take();
    if let Some(b) = &incoming {
        hasher.update(b);
    }
    let previous = call.held.take();
    if !end_of_stream {
        call.held = incoming;
        *body = Some(previous.unwrap_or_default());
        return Ok(());
    }
    let got = hex::encode(hasher.clone().finish());
    let PayloadMode::Sha256(want) = &call.payload else {
        return Ok(());
    };
    if got != *want {
        return Err(Error::explain(
            ErrorType::HTTPStatus(400),
            "egress body does not match its signed SHA-256",
        ));
    }
    let mut rest = Vec::new();
    if let Some(p) = previous {
        rest.extend_from_slice(&p);
    }
    if let Some(b) = incoming {
        rest.extend_from_slice(&b);
    }
    *body = Some(Bytes::from(rest));
    Ok(())
}

/// `response_filter` on the egress side: the store's answers pass as they are (SDKs parse
/// them), except a refusal of Portier's own credentials, which is Portier's problem.
pub(super) fn map_response(resp: &mut ResponseHeader, call: &mut EgressCall) -> Result<()> {
    let status = resp.status.as_u16();
    if matches!(status, 401 | 403) {
        let err = S3Error::STORE_REFUSED_PORTIER;
        for h in ["content-length", "transfer-encoding", "content-type"] {
            resp.remove_header(h);
        }
        resp.set_status(err.status)?;
        resp.insert_header("content-type", "application/xml")?;
        resp.insert_header("content-length", err.document("portier").len().to_string())?;
        call.replaced = Some(err);
        log::error!("the store refused Portier's credentials for an egress request: HTTP {status}");
    }
    Ok(())
}

/// `response_body_filter` for a replaced answer.
pub(super) fn replace_body(body: &mut Option<Bytes>, end_of_stream: bool, call: &EgressCall) {
    if let Some(err) = call.replaced {
        body.take();
        if end_of_stream {
            *body = Some(Bytes::from(err.document("portier")));
        }
    }
}
