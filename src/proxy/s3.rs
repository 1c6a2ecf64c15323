//! The S3 parts of the proxy phases: signing the store request, and replacing store error
//! answers with Portier's JSON (the store's error code goes to the log, never to the client).

use std::time::SystemTime;

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType, Result};

use super::ctx::{Ctx, S3Call};
use crate::error::Reason;
use crate::s3::front::{error_code, keep_client_header, map_store_status, S3Backend};
use crate::s3::{sign_headers, Payload};

/// Turns an admitted S3 request into the store's request: only allow-listed client headers
/// stay (no Authorization, cookie, identity or other `x-amz-*` header), the URI is the
/// bucket's, and a fresh SigV4 signature over `UNSIGNED-PAYLOAD` lets the body stream.
pub(super) fn sign(
    backend: &S3Backend,
    req: &mut RequestHeader,
    call: &S3Call,
    continue_sent: bool,
) -> Result<()> {
    let dropped: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|n| {
            !keep_client_header(n.as_str()) || (continue_sent && *n == http::header::EXPECT)
        })
        .cloned()
        .collect();
    for name in dropped {
        req.remove_header(&name);
    }
    if let Some(mime) = call.store_type {
        // A checked kind is stored as what its bytes are, and never with a disposition the
        // client chose: a PNG that says text/html would be served back as a page.
        req.insert_header(http::header::CONTENT_TYPE, mime)?;
        req.remove_header(&http::header::CONTENT_DISPOSITION);
    }
    let origin_form: http::Uri = call
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .parse()
        .map_err(|e| Error::because(ErrorType::InternalError, "S3 URI", e))?;
    req.set_uri(origin_form);
    let payload = if call.method == "PUT" {
        Payload::Unsigned
    } else {
        Payload::Empty
    };
    let creds = backend.credentials().map_err(|_| {
        let mut e = Error::explain(ErrorType::ConnectRefused, "S3 credentials unavailable");
        e.esource = pingora::ErrorSource::Upstream;
        e
    })?;
    let signed = sign_headers(
        &creds,
        backend.config.target.region(),
        call.method,
        &call.uri,
        &req.headers,
        payload,
        SystemTime::now(),
    )
    .map_err(|e| {
        log::error!("SigV4 signing failed: {e}");
        Error::explain(ErrorType::InternalError, "SigV4 signing failed")
    })?;
    for (k, v) in signed {
        req.insert_header(k, v)?;
    }
    Ok(())
}

/// A successful download is never rendered as something it was not checked to be:
/// `nosniff`, and inline only when its type is one of the kind's checked types.
pub(super) fn download_headers(resp: &mut ResponseHeader, call: &S3Call) -> Result<()> {
    if !(200..300).contains(&resp.status.as_u16()) || !matches!(call.method, "GET" | "HEAD") {
        return Ok(());
    }
    if call.operation == "ListObjectsV2" {
        return Ok(());
    }
    let stored = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let inline = stored.is_some_and(|t| call.inline_types.contains(&t.as_str()));
    resp.insert_header("x-content-type-options", "nosniff")?;
    resp.insert_header(
        http::header::CONTENT_DISPOSITION,
        if inline { "inline" } else { "attachment" },
    )?;
    Ok(())
}

/// A store error status becomes Portier's JSON answer; the body is replaced in
/// [`error_body`]. Returns the reason when the answer was replaced.
pub(super) fn map_response(resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<Option<Reason>> {
    let status = resp.status.as_u16();
    let Some(reason) = map_store_status(status) else {
        return Ok(None);
    };
    let body_len = reason.body().len();
    for h in [
        "content-length",
        "transfer-encoding",
        "content-type",
        "etag",
        "last-modified",
        "content-range",
        "accept-ranges",
    ] {
        resp.remove_header(h);
    }
    resp.set_status(reason.status())?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body_len.to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    ctx.s3_error = Some(Box::new((reason, status, Vec::new())));
    Ok(Some(reason))
}

/// Collects the store's error document (for the log) and, at its end, puts Portier's JSON in
/// its place.
pub(super) fn error_body(
    body: &mut Option<bytes::Bytes>,
    end_of_stream: bool,
    head_only: bool,
    error: &mut (Reason, u16, Vec<u8>),
) {
    let (reason, status, doc) = error;
    if let Some(b) = body.take() {
        if doc.len() < 16 * 1024 {
            doc.extend_from_slice(&b);
        }
    }
    if end_of_stream {
        let code = error_code(doc).unwrap_or_else(|| "-".into());
        if *reason == Reason::UpstreamAuthFailed {
            log::error!(
                "the S3 store refused Portier's credentials or signature: HTTP {status} {code}"
            );
        } else {
            log::info!("S3 answered HTTP {status} {code} -> {}", reason.code());
        }
        if !head_only {
            *body = Some(bytes::Bytes::from(reason.body()));
        }
    }
}
