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
use crate::head_deadline::{Guarded, Timeout};
use crate::proxy::{Portier, Side};
use crate::reload::Reloader;
use crate::state::{ConfigInput, Gateway, PolicyInput, Sources, StartError};

/// A built, not yet running server.
pub struct Built {
    pub server: Server,
    pub gateway: Arc<Gateway>,
    /// Where it listens; a configured port 0 is the port the system chose.
    pub bound: Bound,
    /// Ports picked for a configured port 0, held until Pingora listens on them.
    reservations: Vec<Reservation>,
}

/// The addresses a server listens on, as bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bound {
    pub public: Vec<SocketAddr>,
    pub egress: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

impl std::fmt::Display for Bound {
    /// One line a script can read: `public=127.0.0.1:8080 egress=127.0.0.1:9100 admin=...`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let public: Vec<String> = self.public.iter().map(SocketAddr::to_string).collect();
        write!(f, "public={}", public.join(","))?;
        if let Some(e) = self.egress {
            write!(f, " egress={e}")?;
        }
        if let Some(a) = self.admin {
            write!(f, " admin={a}")?;
        }
        Ok(())
    }
}

/// A port the system picked for a configured port 0 (tests, `portier dev`): bound with
/// `SO_REUSEPORT` but not listening, so no other bind can be handed it, until Pingora binds
/// and listens on it beside this socket (a socket that does not listen receives no
/// connections). Pingora binds its listeners itself, so this is how a test learns the port
/// instead of picking one and releasing it.
struct Reservation {
    addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

/// `addr`, or for port 0 the port the system picks, held by a [`Reservation`].
fn reserve(addr: SocketAddr) -> Result<(SocketAddr, Option<Reservation>), StartError> {
    if addr.port() != 0 {
        return Ok((addr, None));
    }
    let bind = || -> std::io::Result<(SocketAddr, tokio::net::TcpSocket)> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        Ok((socket.local_addr()?, socket))
    };
    let (bound, socket) = bind().map_err(|source| StartError::Bind { addr, source })?;
    Ok((
        bound,
        Some(Reservation {
            addr: bound,
            _socket: socket,
        }),
    ))
}

/// Adds `addr` to a proxy service's listeners: with `SO_REUSEPORT` when it is a reserved
/// port 0 (to bind beside the reservation), as configured otherwise.
fn listen_on<A>(
    svc: &mut pingora::services::listening::Service<A>,
    addr: SocketAddr,
    reserved: bool,
) where
    A: pingora::apps::ServerApp + Send + Sync + 'static,
{
    if reserved {
        let mut opts = pingora::listeners::TcpSocketOptions::default();
        opts.so_reuseport = Some(true);
        svc.add_tcp_with_settings(&addr.to_string(), opts);
    } else {
        svc.add_tcp(&addr.to_string());
    }
}

impl Built {
    /// Gives up the port-0 reservations once Pingora listens on their ports (a background
    /// thread waits for that; nothing to do when there are none).
    fn release_when_listening(reservations: Vec<Reservation>) {
        if reservations.is_empty() {
            return;
        }
        std::thread::spawn(move || {
            for r in &reservations {
                if !wait_listening(r.addr, Duration::from_secs(30)) {
                    log::warn!("{} did not start listening", r.addr);
                }
            }
        });
    }

    /// Runs the server in this process until it exits (`portier run`).
    pub fn run_forever(self) -> ! {
        Self::release_when_listening(self.reservations);
        self.server.run_forever()
    }
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

/// Pingora's HTTP proxy around `portier`, its connections given a request-head deadline
/// ([`crate::head_deadline`]).
fn guarded_service(
    conf: &Arc<ServerConf>,
    portier: Portier,
    limit: Duration,
) -> pingora::services::listening::Service<Guarded<pingora::proxy::HttpProxy<Portier>>> {
    let (name, listener, answer) = match portier.side {
        Side::Public => (
            "Portier public listener",
            "public",
            crate::error::Reason::ClientTimeout.raw_response(),
        ),
        Side::Egress => (
            "Portier egress listener",
            "egress",
            crate::egress::errors::S3Error::REQUEST_TIMEOUT.raw_response(),
        ),
    };
    let counter = portier
        .gw
        .metrics
        .head_timeouts
        .with_label_values(&[listener]);
    let proxy = pingora::proxy::http_proxy(conf, portier);
    pingora::services::listening::Service::new(
        name.to_string(),
        Guarded {
            inner: Arc::new(proxy),
            timeout: Timeout {
                limit,
                answer: answer.into(),
                counter,
            },
        },
    )
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
    let mut reservations = Vec::new();
    let mut bound = Bound::default();
    let mut svc = guarded_service(
        &server.configuration,
        Portier {
            gw: gateway.clone(),
            side: Side::Public,
        },
        cfg.server.request_header_timeout,
    );
    for addr in &cfg.server.listen {
        let (addr, held) = reserve(*addr)?;
        listen_on(&mut svc, addr, held.is_some());
        reservations.extend(held);
        bound.public.push(addr);
    }
    server.add_service(svc);
    if let Some(egress) = &cfg.egress {
        let mut svc = guarded_service(
            &server.configuration,
            Portier {
                gw: gateway.clone(),
                side: Side::Egress,
            },
            cfg.server.request_header_timeout,
        );
        let (addr, held) = reserve(egress.listen)?;
        listen_on(&mut svc, addr, held.is_some());
        reservations.extend(held);
        bound.egress = Some(addr);
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
        // Bound here: a taken port is a start error, and port 0 is known at once.
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| StartError::Bind { addr, source })?;
        bound.admin = Some(
            listener
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?,
        );
        server.add_service(background_service(
            "admin",
            Admin {
                gateway: gateway.clone(),
                listener: std::sync::Mutex::new(Some(listener)),
            },
        ));
    }
    Ok(Built {
        server,
        gateway,
        bound,
        reservations,
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
    Built::release_when_listening(built.reservations);
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
