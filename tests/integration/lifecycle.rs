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
    /// Connections refused (the listener was closed): what a load balancer moves on from.
    refused: u64,
    worst: Duration,
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

impl Load {
    fn add(&mut self, l: Load) {
        self.sent += l.sent;
        self.failed += l.failed;
        self.retried += l.retried;
        self.refused += l.refused;
        self.worst = self.worst.max(l.worst);
        self.latencies.extend(l.latencies);
        self.errors.extend(l.errors);
    }

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
    // Every request has its own path (`<path>/<n>`), so a failed one can be looked up in the
    // decision log.
    let seq = std::cell::Cell::new(0u64);
    let next_path = || {
        seq.set(seq.get() + 1);
        format!("{path}/{}", seq.get())
    };
    let current = std::cell::RefCell::new(String::new());
    let connect = || -> std::io::Result<BufReader<TcpStream>> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(BufReader::new(s))
    };
    let once = |conn: &mut BufReader<TcpStream>| -> std::io::Result<(u16, bool)> {
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: portier.test\r\n\r\n",
            current.borrow()
        );
        conn.get_mut().write_all(request.as_bytes())?;
        read_response(conn)
    };
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) && out.sent < max {
        round += 1;
        let per_conn = if round.is_multiple_of(2) { 20 } else { 1 };
        let mut conn = match connect() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                out.refused += 1;
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
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
            *current.borrow_mut() = next_path();
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
                    out.errors
                        .push(format!("{}: status {status}", current.borrow()));
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    // The resend found the listener closed: never sent, not failed.
                    out.sent -= 1;
                    out.refused += 1;
                    break;
                }
                Err(e) => {
                    out.failed += 1;
                    out.errors.push(format!("{}: {e}", current.borrow()));
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
        total.add(l);
    }
    eprintln!(
        "upgrade under load: {} requests, {} failed, {} refused, {} resent on a fresh connection, p99 {:?}, slowest {:?}",
        total.sent,
        total.failed,
        total.refused,
        total.retried,
        total.p99(),
        total.worst
    );
    assert!(total.sent > 200, "{total:?}");
    assert_eq!(total.failed, 0, "{:?}", total.errors);
    assert_eq!(total.refused, 0, "the sockets were never closed");
    assert!(
        new.wait_exit(Duration::from_millis(10)).is_none(),
        "the new process serves"
    );
    assert_eq!(raw(addr, "GET", "/work/after", &[]).status, 200);
}

/// A plain restart under load (SIGTERM, then a new process on the same port): every request
/// Portier accepted is answered, the slow ones in flight at SIGTERM included; while no
/// process listens, connections are refused (what a load balancer moves on from), never
/// accepted and dropped; the old process exits once drained.
#[test]
fn a_restart_under_load_answers_every_request_it_accepted() {
    let (_jwks, _app, mut setup) = setup(10, None);
    let log_dir = TempDir::new();
    setup.decision_log = log_dir.0.join("decisions.jsonl");
    let mut old = PortierProcess::start(setup);
    let addr = old.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = (0..2)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || load(addr, &format!("/work/x{i}"), stop, 200_000))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Three requests the upstream answers after 1.5 s, in flight at SIGTERM.
    let slow: Vec<_> = (0..3)
        .map(|i| std::thread::spawn(move || raw(addr, "GET", &format!("/work/slow/{i}"), &[])))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    old.signal("TERM");
    let status = old
        .wait_exit(Duration::from_secs(15))
        .expect("the old process exited");
    let drained = t.elapsed();
    assert!(status.success(), "{status:?}");
    // The new process, on the same config and port.
    let _new = old.another(&[]);
    assert!(portier::server::wait_listening(
        addr,
        Duration::from_secs(15)
    ));
    let restarted = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut total = Load::default();
    for l in loads {
        total.add(l.join().expect("load"));
    }
    let slow: Vec<u16> = slow
        .into_iter()
        .map(|h| h.join().expect("slow").status)
        .collect();
    eprintln!(
        "restart under load: {} requests, {} failed {:?}, {} connections refused while no process listened, {} resent; in flight at SIGTERM: {slow:?}; old process exited after {drained:?}, new one listening after {restarted:?}",
        total.sent, total.failed, total.errors, total.refused, total.retried
    );
    assert_eq!(
        slow,
        vec![200, 200, 200],
        "requests in flight were answered"
    );
    assert!(total.sent > 100, "{total:?}");
    // A connection the kernel completed in the listen backlog as the old listener closed is
    // reset by the kernel: its request was never read by Portier (every request Portier reads
    // is in its decision log, flushed at exit), and no request Portier read went unanswered.
    let log = std::fs::read_to_string(log_dir.0.join("decisions.jsonl")).expect("decision log");
    for e in &total.errors {
        let path = e.split(':').next().unwrap_or("");
        assert!(
            !log.contains(&format!("\"path\":\"{path}\"")),
            "{path} was read by Portier and not answered: {e}"
        );
    }
    assert!(
        total.failed * 100 < total.sent,
        "resets in the backlog are rare: {:?}",
        total.errors
    );
    assert!(
        drained < Duration::from_secs(5),
        "exits once drained, well before the 10 s grace period: {drained:?}"
    );
}
