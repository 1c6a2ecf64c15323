//! Answers Portier writes itself: JSON refusals with their reason code, and JSON results
//! (presigned URLs). One writer, so every answer carries the same headers.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::admission::has_body;
use crate::error::Reason;

/// Sends a JSON body with `status` and any extra headers. The answer is never cached, and a
/// request body left unread closes the connection (it would be parsed as the next request).
pub(super) async fn send_json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    for (k, v) in extra {
        resp.insert_header(*k, v.as_str())?;
    }
    let unread = has_body(&session.req_header().headers) && !session.is_body_done();
    if unread {
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    if unread {
        linger(session).await;
    }
    Ok(())
}

/// Reads (and drops) a little of an unread request body after an early answer, so closing
/// the connection does not reset it under a client that is still sending: the client then
/// reads the answer instead of a broken pipe. Bounded in bytes and time; a larger body is cut.
async fn linger(session: &mut Session) {
    const LINGER_BYTES: usize = 2 * 1024 * 1024;
    const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let mut seen = 0;
        while seen < LINGER_BYTES {
            match session.read_request_body().await {
                Ok(Some(b)) => seen += b.len(),
                _ => break,
            }
        }
    })
    .await;
}

/// Sends a JSON refusal with any extra headers (`Allow`, `Retry-After`, `RateLimit`...).
pub(super) async fn send_error(
    session: &mut Session,
    reason: Reason,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let mut headers = Vec::with_capacity(extra.len() + 1);
    if reason.is_unauthenticated() {
        headers.push(("www-authenticate", reason.www_authenticate()));
    }
    headers.extend(extra.iter().cloned());
    send_json(
        session,
        reason.status(),
        Bytes::from(reason.body()),
        &headers,
    )
    .await
}

/// Sends an S3 XML document (egress refusals).
pub(super) async fn send_xml(session: &mut Session, status: u16, body: Bytes) -> Result<()> {
    send_raw(session, status, Some("application/xml"), body).await
}

/// Sends a status, a content type and a body as they are (a store answer relayed).
pub(super) async fn send_raw(
    session: &mut Session,
    status: u16,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3))?;
    if let Some(ct) = content_type {
        resp.insert_header("content-type", ct)?;
    }
    resp.insert_header("content-length", body.len().to_string())?;
    let unread = has_body(&session.req_header().headers) && !session.is_body_done();
    if unread {
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    if unread {
        linger(session).await;
    }
    Ok(())
}
