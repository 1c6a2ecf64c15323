//! Regression tests for the security review's findings, each as an outsider sends it over
//! loopback: the refusal (status and reason code) or the corrected behaviour.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;

/// Sends raw request bytes and reads the whole answer.
fn raw_bytes(addr: std::net::SocketAddr, request: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(request).expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
}

/// Finding 4: a cookie value with a byte >= 0x80 made the whole `Cookie` header pass to a
/// `credentials = "strip"` upstream, session token included.
#[test]
fn stripped_cookies_never_reach_the_upstream_whatever_their_bytes() {
    let w = World::start();
    let t = token("user_bytes");
    let mut req = b"GET /api/books/1 HTTP/1.1\r\nHost: portier.test\r\nConnection: close\r\nCookie: theme=caf\xe9; __session=".to_vec();
    req.extend_from_slice(t.as_bytes());
    req.extend_from_slice(b"; lang=fr\r\n\r\n");
    let r = raw_bytes(w.portier.addr, &req);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = w.app.last();
    let cookie = seen.header("cookie").unwrap_or("");
    assert!(
        !cookie.contains("__session"),
        "session cookie leaked: {cookie}"
    );
    assert!(!cookie.contains(&t[..20]), "token leaked: {cookie}");
    assert!(
        cookie.contains("lang=fr"),
        "other cookies are kept: {cookie}"
    );
    assert_eq!(seen.header("x-portier-user-id"), Some("user_bytes"));
}

/// Finding 5: with no suffix configured any `__session_<8 chars>` was accepted and preferred;
/// two session cookies were resolved by order. A tossed cookie is never the session, and two
/// values of the session cookie are refused.
#[test]
fn tossed_and_conflicting_session_cookies_are_refused() {
    let w = World::start();
    let victim = token("user_victim");
    let attacker = token("user_attacker");
    // Two values of `__session` (one set for a parent domain): refused, not resolved.
    let cookie = format!("__session={victim}; __session={attacker}");
    let r = w.get("/api/books/1", &[("Cookie", &cookie)]);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (401, "session_cookie_conflict")
    );
    // A suffixed cookie alone is not the session when no suffix is configured.
    let cookie = format!("__session_AbCd1234={attacker}");
    let r = w.get("/api/books/1", &[("Cookie", &cookie)]);
    assert_eq!((r.status, r.reason().as_str()), (401, "token_missing"));
    // Next to the victim's own cookie it is a conflict: the app's Clerk SDK reads a
    // suffixed cookie first, so Portier and the app would decide about two users.
    let seen = w.app.count();
    let cookie = format!("__session_AbCd1234={attacker}; __session={victim}");
    let r = w.get("/api/books/1", &[("Cookie", &cookie)]);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (401, "session_cookie_conflict")
    );
    assert_eq!(w.app.count(), seen, "nothing reached the upstream");
    // Clerk writes both names with the same value: that is one session.
    let cookie = format!("__session_AbCd1234={victim}; __session={victim}");
    assert_eq!(w.get("/api/books/1", &[("Cookie", &cookie)]).status, 200);
    assert_eq!(
        w.app.last().header("x-portier-user-id"),
        Some("user_victim")
    );
}

/// With the publishable key configured, Clerk's own suffixed cookie is the session.
#[test]
fn the_publishable_key_names_the_suffixed_session_cookie() {
    // pk_live_ + base64("clerk.portier.test$"): the suffix Clerk derives is m3jNlIl7.
    let w = World::start_with(|s| {
        s.extra_clerk = "publishable_key = \"pk_live_Y2xlcmsucG9ydGllci50ZXN0JA==\"".into()
    });
    let mine = token("user_mine");
    let other = token("user_other");
    let cookie = format!("__session={other}; __session_m3jNlIl7={mine}");
    assert_eq!(w.get("/api/books/1", &[("Cookie", &cookie)]).status, 200);
    assert_eq!(w.app.last().header("x-portier-user-id"), Some("user_mine"));
    let cookie = format!("__session_m3jNlIl7={mine}; __session_m3jNlIl7={other}");
    let r = w.get("/api/books/1", &[("Cookie", &cookie)]);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (401, "session_cookie_conflict")
    );
}

/// Finding 6: on a public route the budget followed the user as soon as a token came along,
/// so any valid token opened a fresh one.
#[test]
fn public_route_limits_count_by_address_with_or_without_a_token() {
    let w = World::start_with(|s| {
        s.policies.push_str(
            "\n[[route]]\nname = \"signup\"\npath = \"/signup\"\nmethods = [\"GET\"]\nupstream = \"app\"\naccess = \"public\"\nrate_limit = \"2/min\"\n",
        )
    });
    let statuses: Vec<u16> = ["user_x1", "user_x2", "user_x3"]
        .iter()
        .map(|u| w.get_as("/signup", &token(u)).status)
        .collect();
    assert_eq!(statuses[..2], [200, 200]);
    let r = w.get("/signup", &[]);
    assert_eq!((r.status, r.reason().as_str()), (429, "rate_limited"));
    assert_eq!(
        statuses[2], 429,
        "a third account's token does not reset the budget"
    );
}

/// Same class as finding 6: behind a trusted load balancer only the first `X-Forwarded-For`
/// line was read, so a client's forged line (HAProxy adds its own line) chose the budget, and
/// header spellings that fold onto a forwarding header reached the upstream.
#[test]
fn every_forwarded_for_line_counts_and_aliases_never_pass() {
    let w = World::start_with(|s| {
        s.server_extra = "trusted_proxies = [\"127.0.0.0/8\"]\n".into();
        s.policies.push_str(
            "\n[[route]]\nname = \"signup\"\npath = \"/signup\"\nmethods = [\"GET\"]\nupstream = \"app\"\naccess = \"public\"\nrate_limit = \"2/min\"\n",
        )
    });
    let mut statuses = Vec::new();
    for forged in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        let req = format!(
            "GET /signup HTTP/1.1\r\nHost: portier.test\r\nConnection: close\r\nX-Forwarded-For: {forged}\r\nX-Forwarded-For: 203.0.113.9\r\nX_Forwarded_Host: evil.test\r\nX.Forwarded.Proto: https\r\n\r\n"
        );
        let r = raw_bytes(w.portier.addr, req.as_bytes());
        statuses.push((r.status, r.reason()));
    }
    assert_eq!(statuses[0].0, 200);
    assert_eq!(statuses[1].0, 200);
    assert_eq!(statuses[2], (429, "rate_limited".to_string()));
    let seen = w.app.last();
    assert_eq!(seen.header("x-real-ip"), Some("203.0.113.9"));
    assert!(
        seen.header("x-forwarded-for")
            .is_some_and(|v| v.ends_with("203.0.113.9, 127.0.0.1")),
        "{:?}",
        seen.header("x-forwarded-for")
    );
    assert_eq!(seen.header("x_forwarded_host"), None);
    assert_eq!(seen.header("x.forwarded.proto"), None);
}

/// Finding 8: `Upgrade` was forwarded on every route, public ones included.
#[test]
fn upgrades_only_on_routes_that_allow_them_and_only_when_authorized() {
    // An upstream that completes the WebSocket-style handshake and then echoes bytes.
    let (listener, up_addr) = listener();
    runtime().spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    head.push(b[0]);
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    .await;
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf).await {
                    let _ = s.write_all(&buf[..n]).await;
                }
            });
        }
    });
    let jwks = JwksServer::start(vec![issuer().jwk()]);
    let next = Upstream::start();
    let app = Upstream::start();
    let mut setup = Setup::new(&jwks, &app, &next);
    setup.extra_config = format!("[upstreams.ws]\npeers = [\"{up_addr}\"]\n");
    setup.policies.push_str(
        "\n[[route]]\nname = \"socket\"\npath = \"/ws\"\nmethods = [\"GET\"]\nupstream = \"ws\"\nwebsocket = true\n",
    );
    let p = setup.start();
    let upgrade_to = |target: &str, auth: Option<&str>, protocol: &str| {
        let mut s = TcpStream::connect(p.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let auth = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: portier.test\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
        );
        s.write_all(req.as_bytes()).expect("write");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        (s, head)
    };
    let upgrade = |target: &str, auth: Option<&str>| upgrade_to(target, auth, "websocket");
    // A public route that does not opt in: refused, never tunnelled.
    let (_s, head) = upgrade("/public/x", None);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(head.contains("upgrade_not_allowed"), "{head}");
    // The opted-in route still needs a session.
    let (_s, head) = upgrade("/ws", None);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(head.contains("token_missing"), "{head}");
    let t = token("user_ws");
    // A websocket route tunnels WebSockets only: h2c (or a list) is another protocol.
    for protocol in ["h2c", "websocket, h2c"] {
        let (_s, head) = upgrade_to("/ws", Some(&t), protocol);
        assert!(head.starts_with("HTTP/1.1 400"), "{protocol}: {head}");
        assert!(head.contains("upgrade_not_allowed"), "{protocol}: {head}");
    }
    // Signed in: 101, then bytes flow both ways.
    let (mut s, head) = upgrade("/ws", Some(&t));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping-frame").expect("write");
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).expect("echo");
    assert_eq!(&buf[..n], b"ping-frame");
    assert_eq!(
        p.gateway
            .metrics
            .upgrades
            .with_label_values(&["socket"])
            .get(),
        1
    );
    std::mem::forget(jwks);
}

/// Finding 9: overlong UTF-8 in escapes, client-made forwarding headers, Next.js internal
/// headers and duplicate webhook signature headers.
#[test]
fn smaller_findings() {
    let w = World::start();
    let me = token("user_small");
    let auth = bearer(&me);
    // An overlong `.` is not a path anyone should agree on.
    let r = w.get("/api/books/%C0%AE%C0%AE/x", &[("Authorization", &auth)]);
    assert_eq!((r.status, r.reason().as_str()), (400, "bad_path"));
    // Forwarding headers say what Portier saw; Next.js internal headers never arrive.
    let r = w.get(
        "/api/books/1",
        &[
            ("Authorization", &auth),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("Forwarded", "for=6.6.6.6;host=evil.example"),
            ("X-Real-IP", "6.6.6.6"),
            ("X-Middleware-Rewrite", "/admin"),
            ("X-Middleware-Set-Cookie", "a=b"),
            ("X-Middleware-Request-Authorization", "x"),
            ("X-Invoke-Path", "/admin"),
            ("X-Matched-Path", "/admin"),
            ("X-Now-Route-Matches", "1"),
            ("X-Nextjs-Data", "1"),
            ("X-Middleware-Prefetch", "1"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = w.app.last();
    assert_eq!(seen.header("x-forwarded-host"), Some("portier.test"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    for gone in [
        "forwarded",
        "x-middleware-rewrite",
        "x-middleware-set-cookie",
        "x-middleware-request-authorization",
        "x-invoke-path",
        "x-matched-path",
        "x-now-route-matches",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} reached the upstream");
    }
    assert_eq!(seen.header("x-nextjs-data"), Some("1"));
    assert_eq!(seen.header("x-middleware-prefetch"), Some("1"));
}

#[test]
fn duplicate_webhook_signature_headers_are_refused() {
    let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    std::env::set_var("PORTIER_TEST_SEC_WH", secret);
    let w = World::start_with(|s| {
        s.policies.push_str(
            "\n[[route]]\nname = \"hook\"\npath = \"/hooks/{event}\"\nmethods = [\"POST\"]\nupstream = \"app\"\naccess = \"webhook\"\nwebhook = \"w\"\n",
        );
        s.extra_config = "[webhooks.w]\nsecrets_env = [\"PORTIER_TEST_SEC_WH\"]\n".into();
    });
    let ts = portier::auth::verify::unix_now();
    let body = br#"{"type":"image.completed"}"#;
    let sig = webhook_signature(secret, "msg_dup", ts, body);
    let ts = ts.to_string();
    // Each signed header twice: which copy a verifier and an upstream read may differ.
    for dup in ["svix-id", "svix-timestamp", "svix-signature"] {
        let mut headers = vec![
            ("svix-id", "msg_dup"),
            ("svix-timestamp", ts.as_str()),
            ("svix-signature", sig.as_str()),
        ];
        headers.push((dup, "msg_other"));
        let r = send_body(w.portier.addr, "POST", "/hooks/x", &headers, body, false);
        assert_eq!(
            (r.status, r.reason().as_str()),
            (401, "webhook_signature_invalid"),
            "{dup} twice"
        );
    }
    assert_eq!(w.app.count(), 0, "nothing reached the upstream");
    let ok = send_body(
        w.portier.addr,
        "POST",
        "/hooks/x",
        &[
            ("svix-id", "msg_dup"),
            ("svix-timestamp", ts.as_str()),
            ("svix-signature", sig.as_str()),
        ],
        body,
        false,
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
}

/// A client that sends `Expect: 100-continue` waits for the 100 before the body. Portier
/// reads webhook bodies before forwarding, so it must answer the 100 itself.
#[test]
fn expect_continue_is_answered_when_portier_reads_the_body() {
    let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    std::env::set_var("PORTIER_TEST_SEC_WH2", secret);
    let w = World::start_with(|s| {
        s.policies.push_str(
            "\n[[route]]\nname = \"hook\"\npath = \"/hooks/{event}\"\nmethods = [\"POST\"]\nupstream = \"app\"\naccess = \"webhook\"\nwebhook = \"w\"\n",
        );
        s.extra_config = "[webhooks.w]\nsecrets_env = [\"PORTIER_TEST_SEC_WH2\"]\n".into();
    });
    let ts = portier::auth::verify::unix_now();
    let body = br#"{"ok":true}"#;
    let sig = webhook_signature(secret, "msg_expect", ts, body);
    let mut s = TcpStream::connect(w.portier.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let head = format!(
        "POST /hooks/x HTTP/1.1\r\nHost: portier.test\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: {}\r\nsvix-id: msg_expect\r\nsvix-timestamp: {ts}\r\nsvix-signature: {sig}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write");
    let mut buf = [0u8; 25];
    let n = s.read(&mut buf).expect("a 100 Continue, not a hang");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(body).expect("body");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("200 OK"), "{text}");
}
