//! A plain Pingora passthrough proxy: no filters, one upstream, the same pingora version,
//! features and release profile as Portier. It is the ceiling the load bench compares
//! Portier against (`benches/load.sh`).
//!
//! ```sh
//! cargo run --release --example passthrough -- LISTEN_PORT UPSTREAM_ADDR [THREADS]
//! ```
//!
//! `UPSTREAM_ADDR` (`127.0.0.1:9000`) may also come from `PASSTHROUGH_UPSTREAM`, `THREADS`
//! from `PASSTHROUGH_THREADS` (default 1, like Portier's `server.threads`). Listens on
//! 127.0.0.1 only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

struct Passthrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("passthrough: {msg}\nusage: passthrough LISTEN_PORT UPSTREAM_ADDR [THREADS]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(port) = args.first().and_then(|p| p.parse::<u16>().ok()) else {
        return usage("LISTEN_PORT is required");
    };
    let upstream = args
        .get(1)
        .cloned()
        .or_else(|| std::env::var("PASSTHROUGH_UPSTREAM").ok());
    let Some(upstream) = upstream.and_then(|u| u.parse::<SocketAddr>().ok()) else {
        return usage("UPSTREAM_ADDR (ip:port) is required");
    };
    let threads = args
        .get(2)
        .cloned()
        .or_else(|| std::env::var("PASSTHROUGH_THREADS").ok())
        .map_or(Ok(1), |t| t.parse::<usize>())
        .unwrap_or(0);
    if threads == 0 {
        return usage("THREADS must be a positive integer");
    }
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc =
        pingora::proxy::http_proxy_service(&server.configuration, Passthrough { upstream });
    svc.add_tcp(&format!("127.0.0.1:{port}"));
    server.add_service(svc);
    eprintln!("passthrough: 127.0.0.1:{port} -> {upstream}, {threads} thread(s)");
    server.run_forever()
}
