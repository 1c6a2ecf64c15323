//! A fast upstream for the load bench: answers every request with a fixed small 200 JSON body
//! on 127.0.0.1, one thread. With a JWKS file it also serves that file at `/jwks.json`, so
//! Portier's key fetch has somewhere to go. `benches/load.sh` uses nginx instead when installed
//! (it spends less CPU per request on the core it shares with the proxy).
//!
//! ```sh
//! cargo run --release --example fast_upstream -- PORT [JWKS_FILE]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const BODY: &[u8] = br#"{"ok":true,"upstream":"fast"}"#;

fn response(body: Bytes) -> http::Response<Full<Bytes>> {
    let mut resp = http::Response::new(Full::new(body));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Accepts connections until an accept fails; never returns otherwise.
async fn serve(port: u16, jwks: Option<Bytes>) -> std::io::Result<Infallible> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("fast_upstream: listening on 127.0.0.1:{port}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let jwks = jwks.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<Incoming>| {
                let body = match (&jwks, req.uri().path()) {
                    (Some(doc), "/jwks.json") => doc.clone(),
                    _ => Bytes::from_static(BODY),
                };
                async move { Ok::<_, Infallible>(response(body)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(port) = args.first().and_then(|p| p.parse::<u16>().ok()) else {
        eprintln!("usage: fast_upstream PORT [JWKS_FILE]");
        return ExitCode::from(2);
    };
    let jwks = match args.get(1).map(std::fs::read) {
        None => None,
        Some(Ok(doc)) => Some(Bytes::from(doc)),
        Some(Err(e)) => {
            eprintln!("fast_upstream: reading the JWKS file: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fast_upstream: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(port, jwks)) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("fast_upstream: {e}");
            ExitCode::FAILURE
        }
    }
}
