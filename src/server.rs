//! The Pingora server around the proxy: its configuration, the proxy service on the
//! configured listeners, and the background services (health checks, reloader, decision-log
//! flusher, admin endpoint). Also a way to run it inside another program (tests, `dev`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;

use crate::admin::{Admin, CredentialRefresher, Drain, LogFlusher};
use crate::config::Config;
use crate::proxy::{Portier, Side};
use crate::reload::Reloader;
use crate::state::{ConfigInput, Gateway, PolicyInput, Sources, StartError};

/// A built, not yet running server.
pub struct Built {
    pub server: Server,
    pub gateway: Arc<Gateway>,
    pub listen: Vec<SocketAddr>,
}

/// How the server runs: as `portier run` (its own process) or inside another program.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunMode {
    /// Take the listening sockets over from the running process (`portier run --upgrade`)
    /// instead of binding them: it hands them over on `server.upgrade_sock` at its SIGQUIT.
    pub upgrade: bool,
    /// Exit the process once shutdown started and no request is in flight ([`Drain`]).
    pub exit_when_drained: bool,
}

/// Builds the Pingora server for a config whose inputs are `sources`.
pub fn build(cfg: &Config, sources: Sources) -> Result<Built, StartError> {
    build_with(cfg, sources, RunMode::default())
}

/// [`build`], for a process of its own (`portier run`).
pub fn build_with(cfg: &Config, sources: Sources, mode: RunMode) -> Result<Built, StartError> {
    let conf = ServerConf {
        threads: cfg.server.threads,
        grace_period_seconds: Some(cfg.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(cfg.server.graceful_shutdown_timeout.as_secs()),
        upgrade_sock: cfg.server.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade: mode.upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    let (gateway, health) = Gateway::new(cfg, sources)?;
    for svc in health {
        server.add_service(svc);
    }
    let mut svc = pingora::proxy::http_proxy_service(
        &server.configuration,
        Portier {
            gw: gateway.clone(),
            side: Side::Public,
        },
    );
    for addr in &cfg.server.listen {
        svc.add_tcp(&addr.to_string());
    }
    server.add_service(svc);
    if let Some(egress) = &cfg.egress {
        let mut svc = pingora::proxy::http_proxy_service(
            &server.configuration,
            Portier {
                gw: gateway.clone(),
                side: Side::Egress,
            },
        );
        svc.add_tcp(&egress.listen.to_string());
        server.add_service(svc);
    }
    server.add_service(background_service(
        "policy reloader",
        Reloader {
            gateway: gateway.clone(),
        },
    ));
    server.add_service(background_service(
        "S3 credential refresher",
        CredentialRefresher {
            gateway: gateway.clone(),
        },
    ));
    server.add_service(background_service(
        "decision log flusher",
        LogFlusher {
            gateway: gateway.clone(),
        },
    ));
    if mode.exit_when_drained {
        server.add_service(background_service(
            "drain",
            Drain {
                gateway: gateway.clone(),
            },
        ));
    }
    if let Some(addr) = cfg.admin_listen {
        server.add_service(background_service(
            "admin",
            Admin {
                gateway: gateway.clone(),
                addr,
            },
        ));
    }
    Ok(Built {
        server,
        gateway,
        listen: cfg.server.listen.clone(),
    })
}

/// Builds the server for `cfg` read from `path`: reloads read the file and its policies
/// directory again.
pub fn build_from_config(cfg: &Config, path: &Path) -> Result<Built, StartError> {
    build(
        cfg,
        Sources {
            config: ConfigInput::File(path.to_path_buf()),
            policies: PolicyInput::ConfigDir,
        },
    )
}

/// A shutdown trigger for servers run inside another program (tests, `portier dev`).
pub struct ShutdownHandle(tokio::sync::watch::Sender<bool>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

struct WatchShutdown(tokio::sync::watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for WatchShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|v| *v).await;
        ShutdownSignal::FastShutdown
    }
}

/// Runs a built server on its own thread until the handle is used; for tests and `dev`.
pub fn spawn(built: Built) -> (ShutdownHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let server = built.server;
    let thread = std::thread::spawn(move || {
        server.run(RunArgs {
            shutdown_signal: Box::new(WatchShutdown(rx)),
        });
    });
    (ShutdownHandle(tx), thread)
}

/// Waits until `addr` accepts TCP connections (the server is listening).
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
