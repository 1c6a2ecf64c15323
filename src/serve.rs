//! Tiny HTTP/1.1 servers for Portier's side channels: the admin endpoint (`/metrics`,
//! `/healthz`, `/readyz`), and in `portier dev` the issuer's JWKS and the echo upstream.
//! Request bodies are ignored; none of these endpoints takes input.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// What a tiny loopback HTTP server answers.
pub type Handler = Arc<dyn Fn(http::request::Parts) -> http::Response<Full<Bytes>> + Send + Sync>;

/// Serves `handler` on `listener` until the task is dropped. Request bodies are ignored.
pub async fn serve(listener: tokio::net::TcpListener, handler: Handler) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    let (parts, _body) = req.into_parts();
                    // Handlers may block (tests simulate slow servers); keep them off the
                    // async workers so one slow answer never stalls the others.
                    let resp = tokio::task::spawn_blocking(move || handler(parts))
                        .await
                        .unwrap_or_else(|_| json_response(500, &Value::Null));
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A JSON response.
pub fn json_response(status: u16, body: &Value) -> http::Response<Full<Bytes>> {
    let mut resp = http::Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A plain-text response.
pub fn text_response(
    status: u16,
    content_type: &'static str,
    body: String,
) -> http::Response<Full<Bytes>> {
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp.headers_mut()
        .insert("content-type", http::HeaderValue::from_static(content_type));
    resp
}
