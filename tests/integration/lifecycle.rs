//! Restarts and upgrades of `portier run` processes under load: a drain on SIGTERM finishes
//! the requests in flight, and `portier run --upgrade` + SIGQUIT hands the listening sockets
//! to a new process without a failed request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

/// One HTTP/1.1 response read off a connection: status, and whether the server will close.
fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<(u16, bool)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap_or((l, ""));
        let (k, v) = (k.to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => length = v.parse::<usize>().ok(),
            "transfer-encoding" => chunked = v.contains("chunked"),
            "connection" => close = v.contains("close"),
            _ => {}
        }
    }
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| std::io::ErrorKind::InvalidData)?;
            let mut buf = vec![0; n + 2];
            r.read_exact(&mut buf)?;
            if n == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        let mut buf = vec![0; n];
        r.read_exact(&mut buf)?;
    }
    Ok((status, close))
}

#[derive(Debug, Default)]
struct Load {
    sent: u64,
    failed: u64,
    /// Requests sent again on a new connection because a reused keep-alive connection was
    /// closed before any byte of an answer: what HTTP clients do for idempotent requests
    /// (RFC 9112 9.3.1); counted, not failed.
    retried: u64,
    worst: Duration,
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

impl Load {
    fn p99(&self) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        l.get(l.len().saturating_sub(1) * 99 / 100)
            .copied()
            .unwrap_or_default()
    }
}

/// Keep-alive connections (20 requests each) and fresh connections, alternating, until
/// `stop` (or `max` requests).
fn load(addr: SocketAddr, path: &str, stop: Arc<AtomicBool>, max: u64) -> Load {
    let mut out = Load::default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: portier.test\r\n\r\n");
    let connect = || -> std::io::Result<BufReader<TcpStream>> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(BufReader::new(s))
    };
    let once = |conn: &mut BufReader<TcpStream>| -> std::io::Result<(u16, bool)> {
        conn.get_mut().write_all(request.as_bytes())?;
        read_response(conn)
    };
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) && out.sent < max {
        round += 1;
        let per_conn = if round.is_multiple_of(2) { 20 } else { 1 };
        let mut conn = match connect() {
            Ok(c) => c,
            Err(e) => {
                out.sent += 1;
                out.failed += 1;
                out.errors.push(format!("connect: {e}"));
                continue;
            }
        };
        for i in 0..per_conn {
            if stop.load(Ordering::Relaxed) || out.sent >= max {
                break;
            }
            out.sent += 1;
            let t = Instant::now();
            let mut result = once(&mut conn);
            if result.is_err() && i > 0 {
                // The server closed the idle keep-alive connection as this request was sent.
                out.retried += 1;
                result = connect().and_then(|mut c| {
                    let r = once(&mut c);
                    conn = c;
                    r
                });
            }
            out.worst = out.worst.max(t.elapsed());
            out.latencies.push(t.elapsed());
            match result {
                Ok((200, close)) => {
                    if close {
                        break;
                    }
                }
                Ok((status, _)) => {
                    out.failed += 1;
                    out.errors.push(format!("status {status}"));
                    break;
                }
                Err(e) => {
                    out.failed += 1;
                    out.errors.push(format!("{e}"));
                    break;
                }
            }
        }
    }
    out
}

fn setup(grace: u64, sock: Option<&std::path::Path>) -> (JwksServer, Upstream, Setup) {
    let jwks = JwksServer::start(vec![issuer().jwk()]);
    let app = Upstream::start();
    let mut s = Setup::new(&jwks, &app, &app);
    s.grace_period_seconds = grace;
    if let Some(sock) = sock {
        s.server_extra = format!("upgrade_sock = \"{}\"", sock.display());
    }
    // The `next` upstream has the default 30 s read timeout (`app` has 500 ms in tests).
    s.policies = r#"
[[route]]
name = "work"
path = "/work/{rest..}"
methods = ["GET"]
upstream = "next"
access = "public"
"#
    .into();
    (jwks, app, s)
}

#[test]
fn sigterm_drains_requests_in_flight_then_exits() {
    let (_jwks, _app, setup) = setup(10, None);
    let mut p = PortierProcess::start(setup);
    let addr = p.addr;
    // A request the upstream takes 1.5 s to answer, in flight when SIGTERM arrives.
    let slow = std::thread::spawn(move || raw(addr, "GET", "/work/slow/upload", &[]));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    p.signal("TERM");
    // The listener stops accepting: new connections are refused.
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = slow.join().expect("slow request");
    assert_eq!(
        r.status, 200,
        "the request in flight was answered: {}",
        r.body
    );
    let status = p.wait_exit(Duration::from_secs(10)).expect("exited");
    let took = t.elapsed();
    eprintln!("SIGTERM with a 1.5 s request in flight: answered, exited after {took:?}");
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(5),
        "exits once drained, well before the 10 s grace period: {took:?}"
    );
}

#[test]
fn an_upgrade_under_load_fails_no_request() {
    let dir = TempDir::new();
    let sock = dir.0.join("upgrade.sock");
    let (_jwks, _app, setup) = setup(5, Some(&sock));
    let mut old = PortierProcess::start(setup);
    let addr = old.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || load(addr, "/work/x", stop, 200_000))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    // The new process waits for the sockets; the old one hands them over at SIGQUIT.
    let mut new = old.another(&["--upgrade"]);
    std::thread::sleep(Duration::from_millis(300));
    old.signal("QUIT");
    let status = old
        .wait_exit(Duration::from_secs(20))
        .expect("the old process exited");
    assert!(status.success(), "{status:?}");
    // Load goes on against the new process alone.
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let mut total = Load::default();
    for l in loads {
        let l = l.join().expect("load");
        total.sent += l.sent;
        total.failed += l.failed;
        total.retried += l.retried;
        total.worst = total.worst.max(l.worst);
        total.latencies.extend(l.latencies);
        total.errors.extend(l.errors);
    }
    eprintln!(
        "upgrade under load: {} requests, {} failed, {} resent on a fresh connection, p99 {:?}, slowest {:?}",
        total.sent,
        total.failed,
        total.retried,
        total.p99(),
        total.worst
    );
    assert!(total.sent > 200, "{total:?}");
    assert_eq!(total.failed, 0, "{:?}", total.errors);
    assert!(
        new.wait_exit(Duration::from_millis(10)).is_none(),
        "the new process serves"
    );
    assert_eq!(raw(addr, "GET", "/work/after", &[]).status, 200);
}
