//! Reading request bodies before anything is forwarded, always bounded. Bytes read here stay
//! in Pingora's retry buffer and are sent upstream first, unchanged.

use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

/// Answers `Expect: 100-continue` before Portier itself reads the body: a client that asked
/// waits for the 100 before it sends a byte (curl for a second, some clients for ever).
/// Returns whether a 100 was sent, so the upstream is not asked to send another.
pub(super) async fn continue_if_expected(session: &mut Session) -> Result<bool> {
    let expects = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects && !session.is_body_done() {
        session.write_continue_response().await?;
        return Ok(true);
    }
    Ok(false)
}

/// The body was longer than the caller allows.
pub(super) struct TooLarge;

/// Reads the whole body, at most `limit` bytes. With `replay`, the bytes are kept so the
/// upstream receives them (Pingora's retry buffer holds 64 KiB); without, they are consumed.
pub(super) async fn read_bounded(
    session: &mut Session,
    limit: u64,
    replay: bool,
) -> Result<std::result::Result<Vec<u8>, TooLarge>> {
    if replay {
        session.as_mut().enable_retry_buffering();
    }
    let mut body = Vec::new();
    // A read that fails is the client's (stalled: 408 `client_timeout`), not the upstream's.
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|e| e.into_down())?
    {
        if (body.len() + chunk.len()) as u64 > limit {
            return Ok(Err(TooLarge));
        }
        body.extend_from_slice(&chunk);
    }
    if replay && session.as_ref().retry_buffer_truncated() {
        return Ok(Err(TooLarge));
    }
    Ok(Ok(body))
}

/// Reads body bytes until `n` are in hand (or the body ends) without consuming them.
pub(super) async fn sniff(session: &mut Session, n: usize) -> Result<Vec<u8>> {
    session.as_mut().enable_retry_buffering();
    let mut head = Vec::new();
    while head.len() < n {
        match session
            .read_request_body()
            .await
            .map_err(|e| e.into_down())?
        {
            Some(chunk) => head.extend_from_slice(&chunk),
            None => break,
        }
    }
    if session.as_ref().retry_buffer_truncated() {
        return Err(Error::explain(
            ErrorType::InternalError,
            "sniffed body exceeds the retry buffer",
        ));
    }
    Ok(head)
}
