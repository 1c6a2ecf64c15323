//! What reaches the upstream: identity headers it can trust, credentials only where
//! configured, page navigations passed through signed out, and upstream failures as JSON.

use portier::auth::verify::unix_now;
use serde_json::json;

use crate::common::*;

#[test]
fn spoofed_identity_headers_never_reach_the_upstream() {
    let w = World::start();
    let t = token_with("user_abc", json!({"pla": "u:pro"}));
    let auth = bearer(&t);
    let r = w.get(
        "/api/books/1",
        &[
            ("Authorization", &auth),
            ("X-Portier-User-Id", "user_evil"),
            ("x_portier_user_id", "user_evil"),
            ("X.Portier.User.Id", "user_evil"),
            ("X-PORTIER_USER.ID", "user_evil"),
            ("X-Portier-Plans", "u:enterprise"),
            ("x-portier-org-role", "org:admin"),
            (
                "X-Middleware-Subrequest",
                "middleware:middleware:middleware",
            ),
            ("x_middleware_subrequest", "middleware"),
            ("Connection", "X-Portier-User-Id"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = w.app.last();
    assert_eq!(
        seen.headers.get("x-portier-user-id"),
        Some(&vec!["user_abc".to_string()])
    );
    assert_eq!(seen.header("x-portier-plans"), Some("u:pro"));
    assert_eq!(seen.header("x-portier-session-id"), Some("sess_abc"));
    for (k, v) in &seen.headers {
        let folded = k.replace(['_', '.'], "-");
        assert!(
            !folded.contains("middleware-subrequest"),
            "{k} reached the upstream"
        );
        assert!(
            !v.iter()
                .any(|v| v.contains("evil") || v.contains("enterprise")),
            "{k}: {v:?}"
        );
        if folded.starts_with("x-portier-") {
            assert_eq!(k, &folded, "only our own spelling: {k}");
        }
    }
    assert_eq!(
        seen.header("x-portier-org-role"),
        None,
        "no org in the token: no org header"
    );

    // Anonymous on a public route: spoofed identity is removed and none is added.
    let r = w.get(
        "/public/a",
        &[
            ("X-Portier-User-Id", "user_evil"),
            ("x_portier_user_id", "user_evil"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = w.app.last();
    assert!(
        seen.headers
            .keys()
            .all(|k| !k.replace(['_', '.'], "-").starts_with("x-portier")),
        "{:?}",
        seen.headers
    );
}

#[test]
fn credentials_are_forwarded_or_stripped_per_upstream() {
    let w = World::start();
    let t = token("user_abc");
    let cookie = format!("theme=dark; __session={t}; __client_uat=1700000000");
    // app: credentials = "strip"
    let r = w.get("/api/books/1", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 200);
    let seen = w.app.last();
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("cookie"), Some("theme=dark"));
    let r = w.get_as("/api/books/1", &t);
    assert_eq!(r.status, 200);
    assert_eq!(w.app.last().header("authorization"), None);
    // next: credentials = "forward" (Clerk's middleware in Next.js needs them)
    let r = w.get("/next/x", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 200);
    assert_eq!(w.next.last().header("cookie"), Some(cookie.as_str()));
    let r = w.get_as("/next/x", &t);
    assert_eq!(r.status, 200);
    assert_eq!(w.next.last().method, "GET");
    assert_eq!(
        w.next.last().header("authorization"),
        Some(bearer(&t).as_str())
    );
}

/// What Clerk's middleware would handshake goes to the app signed out; only a redirect, or a
/// page for a session that holds the route's policy, comes back out.
#[test]
fn handshake_navigations_pass_signed_out_and_only_a_redirect_or_a_good_session_returns() {
    let w = World::start();
    let expired = issuer().token(&issuer().claims("user_abc", AZP, -60));
    let cookie = format!("__session={expired}; __client_uat=1700000000");
    let doc = |answer: &str| {
        vec![
            ("Cookie", cookie.clone()),
            ("Sec-Fetch-Dest", "document".to_string()),
            ("Sec-Fetch-Mode", "navigate".to_string()),
            ("X-Test-Answer", answer.to_string()),
        ]
    };
    let send = |headers: &[(&str, String)]| {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        w.get("/dashboard/home", &h)
    };
    // The app answers with Clerk's handshake redirect: it goes back unchanged, not cached.
    let r = send(&doc("handshake"));
    assert_eq!(r.status, 307, "{}", r.body);
    assert!(r
        .header("location")
        .is_some_and(|l| l.starts_with("https://clerk.portier.test/v1/client/handshake")));
    assert!(r
        .header("cache-control")
        .is_some_and(|c| c.contains("no-store")));
    let seen = w.next.last();
    assert_eq!(seen.header("x-portier-user-id"), None, "signed out");
    assert_eq!(
        seen.header("cookie"),
        Some(cookie.as_str()),
        "cookies untouched"
    );
    // The app completes a handshake and renders: it passes for a session that holds the
    // policy, with the new cookies.
    let fresh = token("user_abc");
    let r = send(&doc(&format!("session={fresh}")));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"upstream\":\"ok\""));
    // The app renders without establishing a session (it decided signed out): the page never
    // leaves, the refusal does.
    let r = send(&doc(""));
    assert_eq!(
        (r.status, r.reason().as_str()),
        (401, "token_expired"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("upstream"), "the app's page was replaced");
    // A fresh session that is not a Clerk session Portier accepts (another issuer's key).
    let forged = issuer2().token(&issuer2().claims("user_abc", AZP, 60));
    let r = send(&doc(&format!("session={forged}")));
    assert_eq!(r.status, 401, "{}", r.body);
    // Same, with HTML Accept and no fetch metadata: Clerk's other document rule.
    let r = w.get(
        "/dashboard/home",
        &[
            ("Cookie", &cookie),
            ("Accept", "text/html,application/xhtml+xml"),
            ("X-Test-Answer", "handshake"),
        ],
    );
    assert_eq!(r.status, 307);
    let before = w.next.count();
    // Not a document request (fetch from script), the token in a header but invalid, a
    // tampered cookie, or no cookie at all: Clerk would not handshake, the normal 401.
    for (what, headers) in [
        (
            "fetch",
            vec![
                ("Cookie", cookie.clone()),
                ("Sec-Fetch-Dest", "empty".to_string()),
                ("Sec-Fetch-Mode", "cors".to_string()),
            ],
        ),
        (
            "header",
            vec![
                ("Authorization", bearer("a.b.c")),
                ("Sec-Fetch-Dest", "document".to_string()),
            ],
        ),
        (
            "tampered",
            vec![
                (
                    "Cookie",
                    "__session=a.b.c; __client_uat=1700000000".to_string(),
                ),
                ("Sec-Fetch-Dest", "document".to_string()),
            ],
        ),
        ("none", vec![("Sec-Fetch-Dest", "document".to_string())]),
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = w.get("/dashboard/home", &h);
        assert_eq!(r.status, 401, "{what}: {}", r.body);
    }
    // A POST is never handshaken (and this page takes none).
    let r = raw(
        w.portier.addr,
        "POST",
        "/dashboard/home",
        &[("Cookie", &cookie), ("Sec-Fetch-Dest", "document")],
    );
    assert_eq!(r.status, 405);
    assert_eq!(w.next.count(), before);
    // Non-page routes never pass through.
    let r = w.get(
        "/api/books/1",
        &[("Cookie", &cookie), ("Sec-Fetch-Dest", "document")],
    );
    assert_eq!((r.status, r.reason().as_str()), (401, "token_expired"));
    // An expired Bearer token on a document request is handshaken by Clerk too.
    let r = w.get(
        "/dashboard/home",
        &[
            ("Authorization", &bearer(&expired)),
            ("Sec-Fetch-Dest", "document"),
            ("X-Test-Answer", "handshake"),
        ],
    );
    assert_eq!(r.status, 307);
    let _ = unix_now();
}

#[test]
fn upstream_failures_are_json_502_and_504() {
    let w = World::start();
    let r = w.get("/dead", &[]);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (502, "upstream_unavailable"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("127.0.0.1"), "no internals in the body");
    let r = w.get("/slow/x", &[]);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (504, "upstream_timeout"),
        "{}",
        r.body
    );
}

#[test]
fn query_strings_are_forwarded_unchanged() {
    let w = World::start();
    let r = w.get("/public/search?q=a%2Fb&x=..%2f", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(w.app.last().path, "/public/search?q=a%2Fb&x=..%2f");
}

#[test]
fn health_checks_take_a_dead_peer_out_of_rotation() {
    let live = Upstream::start();
    let jwks = JwksServer::start(vec![issuer().jwk()]);
    let mut s = Setup::new(&jwks, &live, &live);
    s.pool(
        &[live.addr.to_string(), "127.0.0.1:1".into()],
        "[upstreams.pool.health_check]\nkind = \"tcp\"\ninterval_seconds = 1\n",
    );
    let p = s.start();
    // Give the first health-check round time to mark 127.0.0.1:1 down.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let statuses: Vec<u16> = (0..10)
        .map(|i| get(p.addr, &format!("/pool/{i}"), &[]).status)
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "round robin skips the unhealthy peer: {statuses:?}"
    );
    assert_eq!(live.count(), 10);
}

/// A peer that refuses connections, before any health check noticed: every request is sent
/// once more, to the live peer, whatever its method (nothing reached the dead one).
#[test]
fn a_refused_connection_is_retried_once_on_another_peer() {
    let live = Upstream::start();
    let jwks = JwksServer::start(vec![issuer().jwk()]);
    let mut s = Setup::new(&jwks, &live, &live);
    s.pool(&[live.addr.to_string(), "127.0.0.1:1".into()], "");
    let p = s.start();
    for i in 0..10 {
        assert_eq!(
            get(p.addr, &format!("/pool/{i}"), &[]).status,
            200,
            "GET {i}"
        );
        let r = send_body(
            p.addr,
            "POST",
            &format!("/pool/p{i}"),
            &[],
            b"payload",
            false,
        );
        assert_eq!(r.status, 200, "POST {i}: {}", r.body);
    }
    assert_eq!(
        live.count(),
        20,
        "each request reached the live peer exactly once"
    );
    // Only dead peers: one retry, then a quick JSON 502.
    let mut s = Setup::new(&jwks, &live, &live);
    s.pool(&["127.0.0.1:1".into(), "127.0.0.1:2".into()], "");
    let p = s.start();
    let t = std::time::Instant::now();
    let r = get(p.addr, "/pool/x", &[]);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (502, "upstream_unavailable")
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
}

/// A Portier in front of a two-peer pool, with the servers it needs kept alive.
struct PortierUnderTest {
    p: Portier,
    _jwks: JwksServer,
    _app: Upstream,
}

fn pool(a: &MortalUpstream, b: &MortalUpstream, health: bool) -> PortierUnderTest {
    let jwks = JwksServer::start(vec![issuer().jwk()]);
    let app = Upstream::start();
    let mut s = Setup::new(&jwks, &app, &app);
    s.pool(
        &[a.addr.to_string(), b.addr.to_string()],
        "read_timeout_ms = 5000\n",
    );
    if health {
        s.extra_config
            .push_str("[upstreams.pool.health_check]\nkind = \"tcp\"\ninterval_seconds = 1\n");
    }
    PortierUnderTest {
        p: s.start(),
        _jwks: jwks,
        _app: app,
    }
}

/// Sends requests until one is in flight at `slow` (the other peer answers at once), kills
/// `slow` while it holds the request, and returns the answer and how long after the kill it
/// came.
fn in_flight_when_killed(
    addr: std::net::SocketAddr,
    method: &'static str,
    slow: &MortalUpstream,
) -> (Resp, std::time::Duration) {
    for _ in 0..4 {
        let h = std::thread::spawn(move || send_body(addr, method, "/pool/job", &[], b"{}", false));
        std::thread::sleep(std::time::Duration::from_millis(300));
        if h.is_finished() {
            let _ = h.join();
            continue;
        }
        let t = std::time::Instant::now();
        slow.kill();
        let r = h.join().expect("client");
        return (r, t.elapsed());
    }
    panic!("no request went to the slow peer");
}

/// A peer dies while it holds a request: a GET is sent again to the other peer and
/// answered 200; a POST is not sent twice but answered 502 at once, not at the read timeout.
#[test]
fn a_request_in_flight_when_its_peer_dies_is_retried_only_if_idempotent() {
    let slow = MortalUpstream::start(std::time::Duration::from_secs(2));
    let fast = MortalUpstream::start(std::time::Duration::ZERO);
    let put = pool(&slow, &fast, false);
    let before = fast.served();
    let (r, took) = in_flight_when_killed(put.p.addr, "GET", &slow);
    assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{}", r.body);
    assert!(fast.served() > before, "answered by the other peer");

    slow.revive();
    let before = fast.served();
    let (r, took_post) = in_flight_when_killed(put.p.addr, "POST", &slow);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (502, "upstream_unavailable"),
        "{}",
        r.body
    );
    // The request that went first to the fast peer (round robin) is the only one it saw.
    assert!(
        fast.served() <= before + 1,
        "the POST was not sent to the other peer"
    );
    assert!(
        took < std::time::Duration::from_secs(1) && took_post < std::time::Duration::from_secs(1),
        "answered when the peer died, not at the 5 s read timeout: {took:?} {took_post:?}"
    );
}

/// Load on two peers, one killed in the middle: no GET fails (requests in flight on it and
/// on its pooled connections go once more to the other), the health check takes it out,
/// and brings it back once it listens again.
#[test]
fn a_peer_killed_mid_load_fails_no_get_and_comes_back_when_healthy() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let a = MortalUpstream::start(std::time::Duration::from_millis(20));
    let b = MortalUpstream::start(std::time::Duration::from_millis(20));
    let put = pool(&a, &b, true);
    let addr = put.p.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let loops: Vec<_> = (0..3)
        .map(|i| {
            let (stop, statuses) = (stop.clone(), statuses.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) && n < 2_000 {
                    let r = get(addr, &format!("/pool/{i}-{n}"), &[]);
                    statuses.lock().expect("statuses").push((r.status, r.body));
                    n += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let served_before_kill = a.served();
    a.kill();
    std::thread::sleep(std::time::Duration::from_millis(2_000));
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.join().expect("load loop");
    }
    let statuses = statuses.lock().expect("statuses");
    let failed: Vec<_> = statuses.iter().filter(|(s, _)| *s != 200).collect();
    eprintln!(
        "peer killed mid-load: {} GETs, {} failed; dead peer had served {served_before_kill}",
        statuses.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        served_before_kill > 0,
        "both peers took load before the kill"
    );
    assert_eq!(
        a.served(),
        served_before_kill,
        "nothing reached the dead peer"
    );

    a.revive();
    // The health check runs each second; give it two rounds to see the peer listen again.
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    for i in 0..10 {
        assert_eq!(get(addr, &format!("/pool/back-{i}"), &[]).status, 200);
    }
    assert!(
        a.served() > served_before_kill,
        "the revived peer is back in rotation"
    );
}

/// A client that stops sending its body is answered 408 `client_timeout` after
/// `server.body_idle_timeout_seconds` and disconnected, not reported as the upstream's
/// fault; the upstream never sees a complete body; other clients are served meanwhile.
#[test]
fn a_client_that_stops_sending_its_body_is_cut_with_408() {
    use std::io::{Read, Write};
    let up = BodyUpstream::start();
    let jwks = JwksServer::start(vec![issuer().jwk()]);
    let other = Upstream::start();
    let mut s = Setup::new(&jwks, &other, &other);
    s.next = up.addr;
    s.server_extra = "body_idle_timeout_seconds = 1".into();
    s.policies = r#"
[[route]]
name = "uploads"
path = "/in/{rest..}"
methods = ["POST", "GET"]
upstream = "next"
access = "public"
"#
    .into();
    let p = s.start();
    let mut c = std::net::TcpStream::connect(p.addr).expect("connect");
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(
        b"POST /in/stalled HTTP/1.1\r\nHost: portier.test\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .expect("send");
    let t = std::time::Instant::now();
    for i in 0..5 {
        let r = send_body(p.addr, "POST", &format!("/in/ok-{i}"), &[], b"whole", false);
        assert_eq!(r.status, 200, "another client is served: {}", r.body);
    }
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    let took = t.elapsed();
    let r = parse(&buf);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (408, "client_timeout"),
        "{}",
        r.body
    );
    assert!(
        took >= std::time::Duration::from_millis(900) && took < std::time::Duration::from_secs(5),
        "cut after the 1 s body idle timeout: {took:?}"
    );
    assert!(
        up.requests()
            .iter()
            .all(|s| s.path != "/in/stalled" || !s.complete),
        "the upstream never got a complete body"
    );
    assert_eq!(
        p.gateway
            .metrics
            .requests
            .with_label_values(&["uploads", "error", "client_timeout"])
            .get(),
        1,
        "counted as an error, not a policy denial"
    );
}

/// Slow-loris clients: a request head that trickles in (a byte every 300 ms), or never starts,
/// is answered 408 `client_timeout` and the connection closed once
/// `server.request_header_timeout_seconds` has passed, and counted; other clients are served
/// meanwhile; a kept-alive connection idle between requests, and a slow body, are not cut by
/// the head deadline.
#[test]
fn slow_request_heads_are_cut_with_408_and_counted() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let jwks = JwksServer::start(vec![issuer().jwk()]);
    let app = Upstream::start();
    let mut s = Setup::new(&jwks, &app, &app);
    s.server_extra = "request_header_timeout_seconds = 1\nbody_idle_timeout_seconds = 5".into();
    s.admin = Some(any_port());
    s.policies.push_str(
        "\n[[route]]\nname = \"open\"\npath = \"/open/{rest..}\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"app\"\naccess = \"public\"\n",
    );
    let p = s.start();
    let connect = || {
        let c = std::net::TcpStream::connect(p.addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        c
    };
    // A head trickled a byte at a time, on its own thread.
    let addr = p.addr;
    let trickler = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        let t = Instant::now();
        let head = b"GET /open/slow HTTP/1.1\r\nHost: portier.test\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let mut sent = 0;
        for b in head {
            if c.write_all(&[*b]).is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(300));
            if t.elapsed() > Duration::from_secs(6) {
                break;
            }
        }
        let mut buf = Vec::new();
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = c.read_to_end(&mut buf);
        (t.elapsed(), sent, buf)
    });
    // A connection that never sends a byte.
    let mut silent = connect();
    let t = Instant::now();
    // Meanwhile others are served, and a kept-alive connection may idle between requests
    // longer than the head deadline.
    let mut kept = connect();
    let req = b"GET /open/a HTTP/1.1\r\nHost: portier.test\r\n\r\n";
    kept.write_all(req).expect("send");
    let first = read_one_response(&mut kept);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    for i in 0..5 {
        assert_eq!(get(p.addr, &format!("/open/ok-{i}"), &[]).status, 200);
    }
    let mut buf = Vec::new();
    let _ = silent.read_to_end(&mut buf);
    let r = parse(&buf);
    assert_eq!((r.status, r.reason().as_str()), (408, "client_timeout"));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "a silent connection is cut after the 1 s head deadline: {took:?}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    kept.write_all(b"GET /open/b HTTP/1.1\r\nHost: portier.test\r\nConnection: close\r\n\r\n")
        .expect("send after idling");
    let second = read_one_response(&mut kept);
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    // A body slower than the head deadline (but within the body idle limit) is fine.
    let mut slow_body = connect();
    slow_body
        .write_all(b"POST /open/body HTTP/1.1\r\nHost: portier.test\r\nContent-Length: 6\r\nConnection: close\r\n\r\n")
        .expect("head");
    for part in [b"ab", b"cd", b"ef"] {
        std::thread::sleep(Duration::from_millis(700));
        slow_body.write_all(part).expect("body");
    }
    let mut buf = Vec::new();
    let _ = slow_body.read_to_end(&mut buf);
    assert_eq!(
        parse(&buf).status,
        200,
        "a slow body is the body limit's business"
    );
    let (took, sent, buf) = trickler.join().expect("trickler");
    let r = parse(&buf);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (408, "client_timeout"),
        "after {sent} bytes in {took:?}"
    );
    assert!(took < Duration::from_secs(6), "cut, not served: {took:?}");
    assert!(
        !app.requests().iter().any(|s| s.path == "/open/slow"),
        "the trickled request never reached the upstream"
    );
    let metrics = get(p.admin.expect("admin"), "/metrics", &[]).body;
    assert!(
        metrics.contains("portier_request_head_timeouts_total{listener=\"public\"} 2"),
        "{metrics}"
    );
}

/// Reads one response (head and a `Content-Length` body) from a kept-alive connection.
fn read_one_response(c: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = c.read_exact(&mut body);
    head + &String::from_utf8_lossy(&body)
}
