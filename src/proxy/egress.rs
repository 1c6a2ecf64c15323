//! The egress side's phases: verify and authorize in `request_filter` (over
//! [`crate::egress`]), re-sign for the real bucket in `upstream_request_filter` with only the
//! headers S3 defines for the operation and the query Portier checked, check the body against
//! what the client declared while it streams (the last piece is held until the check is done,
//! so a body that does not match never completes at the store), and answer in S3's XML.

use std::time::SystemTime;

use aws_lc_rs::digest;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::ctx::Ctx;
use super::Portier;
use crate::egress::body::{BodyCheck, BodySpec};
use crate::egress::errors::S3Error;
use crate::egress::ops::{self, HeaderUse, Operation};
use crate::egress::sigv4::{self, Inbound, PayloadMode};
use crate::s3::{encode_key_for_path, kind_folder, sign_headers, Payload};

/// An admitted egress request: what the store request will be.
pub struct EgressCall {
    pub method: String,
    pub op: Operation,
    /// The absolute store URI (the real bucket, the checked query).
    pub uri: http::Uri,
    pub payload: PayloadMode,
    /// `x-amz-copy-source` rewritten for the real bucket.
    pub copy_source: Option<String>,
    /// What the body is checked against, and the running check of the current attempt.
    pub body_spec: Option<BodySpec>,
    pub check: Option<BodyCheck>,
    /// The newest piece of body, held back until the next one (or the check's end).
    pub held: Option<Bytes>,
    /// A store answer being replaced by Portier's own error (the store refused Portier).
    pub replaced: Option<S3Error>,
    /// The start of the store's replaced answer, to log its error code.
    pub store_answer: Vec<u8>,
}

/// Largest DeleteObjects body: 1,000 keys of up to 1,024 bytes, with their XML.
const MAX_DELETE_BODY: u64 = 2 * 1024 * 1024;

/// How much of a replaced store answer is kept to find its error code.
const STORE_ANSWER_KEPT: usize = 8 * 1024;

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
        // Who is asking and what for, named before any check so a refusal is counted for the
        // service its key id belongs to (an unknown key id stays `-`). Nothing is decided on
        // these until the signature verifies.
        if let Some(s) = sigv4::claimed_access_key(&inbound).and_then(|ak| state.service(&ak)) {
            ctx.egress_service = Some(s.name.clone());
        }
        let classified = ops::classify(
            inbound.method,
            inbound.raw_path,
            inbound.query,
            inbound.headers,
            &state.config.bucket,
        );
        if let Ok(r) = &classified {
            ctx.operation = Some(r.op.name());
            ctx.key_kind = r
                .key
                .as_deref()
                .or(r.prefix.as_deref())
                .and_then(kind_folder)
                .map(str::to_string);
        }
        let verified = match sigv4::verify(
            &inbound,
            |ak| state.secret_of(ak),
            &state.config.region,
            SystemTime::now(),
            &state.keys,
        ) {
            Ok(v) => v,
            Err(e) => {
                log::info!(
                    "egress request of {} refused: {e}",
                    ctx.egress_service.as_deref().unwrap_or("an unknown key id")
                );
                return self.refuse_s3(session, ctx, S3Error::from(&e)).await;
            }
        };
        let Some(service) = state.service(&verified.access_key) else {
            return self.refuse_s3(session, ctx, S3Error::INTERNAL).await;
        };
        ctx.egress_service = Some(service.name.clone());
        let s3req = match classified {
            Ok(r) => r,
            Err(e) => return self.refuse_s3(session, ctx, e).await,
        };
        if verified.payload == PayloadMode::StreamingSigned {
            return self.refuse_s3(session, ctx, S3Error::CHUNK_SIGNED).await;
        }
        if let Err(e) = ops::check_headers(s3req.op, inbound.headers) {
            log::info!(
                "egress: {} sent a header egress does not pass on ({})",
                service.name,
                s3req.op.name()
            );
            return self.refuse_s3(session, ctx, e).await;
        }
        let upload = matches!(s3req.op, Operation::PutObject | Operation::UploadPart);
        if upload {
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
                .delete_objects(session, ctx, service, &backend, &verified)
                .await;
        }
        let has_body = matches!(inbound.method, "PUT" | "POST");
        let body_spec =
            match BodySpec::for_request(&verified.payload, inbound.headers, has_body, upload) {
                Ok(s) => s,
                Err(e) => return self.refuse_s3(session, ctx, e).await,
            };
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
        // The query Portier checked, rebuilt: never the client's bytes.
        let query = s3req.store_query();
        let uri = match &s3req.key {
            Some(k) => target.object_uri(k).and_then(|u| {
                if query.is_empty() {
                    Ok(u)
                } else {
                    format!("{u}?{query}")
                        .parse()
                        .map_err(|_| crate::s3::SignError::InvalidUri)
                }
            }),
            None => target.bucket_uri(&query),
        };
        let Ok(uri) = uri else {
            return self.refuse_s3(session, ctx, S3Error::INTERNAL).await;
        };
        let copy_source = s3req
            .copy_source
            .as_deref()
            .map(|src| format!("{}/{}", target.bucket(), encode_key_for_path(src)));
        ctx.egress = Some(Box::new(EgressCall {
            method: inbound.method.to_string(),
            op: s3req.op,
            uri,
            payload: verified.payload.clone(),
            copy_source,
            check: body_spec.as_ref().map(BodyCheck::new),
            body_spec,
            held: None,
            replaced: None,
            store_answer: Vec::new(),
        }));
        Ok(false)
    }

    /// DeleteObjects: the body names the keys, so it is read (bounded), checked against its
    /// declared hash and checksum, every key authorized, and a document rebuilt from the
    /// checked keys is sent to the store by Portier itself (never the client's bytes).
    async fn delete_objects(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        service: &crate::egress::Service,
        backend: &crate::s3::front::S3Backend,
        verified: &sigv4::Verified,
    ) -> Result<bool> {
        if matches!(
            verified.payload,
            PayloadMode::StreamingUnsignedTrailer | PayloadMode::StreamingSigned
        ) {
            return self.refuse_s3(session, ctx, S3Error::NOT_IMPLEMENTED).await;
        }
        let headers = session.req_header().headers.clone();
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_DELETE_BODY) {
            return self.refuse_s3(session, ctx, S3Error::TOO_LARGE).await;
        }
        let spec = match BodySpec::for_request(&verified.payload, &headers, true, true) {
            Ok(s) => s,
            Err(e) => return self.refuse_s3(session, ctx, e).await,
        };
        ctx.continue_sent |= super::body::continue_if_expected(session).await?;
        let body = match super::body::read_bounded(session, MAX_DELETE_BODY, false).await? {
            Ok(b) => b,
            Err(_) => return self.refuse_s3(session, ctx, S3Error::TOO_LARGE).await,
        };
        if let Some(spec) = &spec {
            let mut check = BodyCheck::new(spec);
            if let Err(e) = check.update(&body).and_then(|()| check.finish()) {
                return self.refuse_s3(session, ctx, e).await;
            }
        }
        let batch = match ops::delete_batch(&body) {
            Ok(b) => b,
            Err(e) => return self.refuse_s3(session, ctx, e).await,
        };
        if let Some(refused) = ops::refused_delete_key(&service.rules, &batch.keys) {
            ctx.key_kind = kind_folder(refused).map(str::to_string);
            log::info!(
                "egress: {} may not DeleteObjects {} (the whole batch is refused)",
                service.name,
                ctx.key_kind.as_deref().unwrap_or("-")
            );
            return self.refuse_s3(session, ctx, S3Error::ACCESS_DENIED).await;
        }
        let Ok(doc) = ops::delete_document(&batch) else {
            return self.refuse_s3(session, ctx, S3Error::INTERNAL).await;
        };
        let Ok(bucket) = backend.bucket() else {
            return self
                .refuse_s3(session, ctx, S3Error::CREDENTIALS_UNAVAILABLE)
                .await;
        };
        let hash = hex::encode(digest::digest(&digest::SHA256, doc.as_bytes()));
        let md5 = {
            use base64::Engine;
            use s3s::crypto::Checksum;
            base64::engine::general_purpose::STANDARD
                .encode(s3s::crypto::Md5::checksum(doc.as_bytes()))
        };
        let mut out = http::HeaderMap::new();
        out.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/xml"),
        );
        // S3 requires Content-MD5 (or an SDK checksum) on DeleteObjects: it is the rebuilt
        // document's, since the client's covered other bytes.
        if let Ok(v) = http::HeaderValue::from_str(&md5) {
            out.insert("content-md5", v);
        }
        let answer = backend
            .client
            .send_raw(
                bucket,
                http::Method::POST,
                "delete=",
                out,
                Bytes::from(doc),
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
                    "the store refused Portier's DeleteObjects: HTTP {status} {}",
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

/// `upstream_request_filter` on the egress side: only the headers S3 defines for the
/// operation stay, the copy source names the real bucket, and Portier signs with its
/// credentials, keeping the client's payload hash or trailer mode so the store itself checks
/// integrity too.
pub(super) fn sign(
    backend: &crate::s3::front::S3Backend,
    req: &mut RequestHeader,
    call: &mut EgressCall,
) -> Result<()> {
    let dropped: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|n| ops::header_use(call.op, n.as_str()) != HeaderUse::Forward)
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
    call.check = call.body_spec.as_ref().map(BodyCheck::new);
    call.held = None;
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

/// `request_body_filter` on the egress side: the body is checked while it streams; the newest
/// piece is held back until the next arrives, and the last until the check is done, so a body
/// that does not match never completes at the store (it sees a short body and stores nothing).
pub(super) fn check_body(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    call: &mut EgressCall,
) -> std::result::Result<(), S3Error> {
    let Some(check) = call.check.as_mut() else {
        return Ok(());
    };
    let incoming = body.take().filter(|b| !b.is_empty());
    if let Some(b) = &incoming {
        check.update(b)?;
    }
    if !end_of_stream {
        *body = Some(match incoming {
            Some(b) => call.held.replace(b).unwrap_or_default(),
            None => Bytes::new(),
        });
        return Ok(());
    }
    if let Some(check) = call.check.take() {
        check.finish()?;
    }
    *body = match (call.held.take(), incoming) {
        (Some(p), Some(b)) => {
            let mut rest = Vec::with_capacity(p.len() + b.len());
            rest.extend_from_slice(&p);
            rest.extend_from_slice(&b);
            Some(Bytes::from(rest))
        }
        (p, b) => Some(p.or(b).unwrap_or_default()),
    };
    Ok(())
}

/// `response_filter` on the egress side: the store's answers pass as they are (SDKs parse
/// them), except a refusal of Portier's own request (401/403), which is replaced: whatever
/// the store's reason, it is Portier's setup (its credentials, or a bucket or IAM policy that
/// does not grant what the egress rules allow), not something the service can change, and the
/// store's message may name the real bucket and role. The store's code is logged.
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
        log::error!(
            "the store refused Portier's {} (HTTP {status}); its code follows when it sent one",
            call.op.name()
        );
    }
    Ok(())
}

/// `response_body_filter` for a replaced answer: the store's document is kept (bounded) for
/// its code, Portier's sent instead.
pub(super) fn replace_body(body: &mut Option<Bytes>, end_of_stream: bool, call: &mut EgressCall) {
    let Some(err) = call.replaced else {
        return;
    };
    if let Some(b) = body.take() {
        let room = STORE_ANSWER_KEPT.saturating_sub(call.store_answer.len());
        call.store_answer.extend_from_slice(&b[..b.len().min(room)]);
    }
    if end_of_stream {
        if let Some(code) = crate::s3::front::error_code(&call.store_answer) {
            log::error!("the store's refusal of Portier's request: {code}");
        }
        *body = Some(Bytes::from(err.document("portier")));
    }
}
