//! Page routes against apps that answer what a test scripts: Clerk's handshake rules for a
//! valid session it would still refresh, the answer check through `1xx` answers, `304`s and
//! upgrades, `redirect_url`s that stay on the site, page data decided by the page Next.js
//! renders, and a retried request that still goes out on the canonical path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portier::auth::verify::unix_now;
use serde_json::json;

use crate::common::*;

/// An app that answers every request with the same bytes (interim answers included) and
/// records each request head.
struct Scripted {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    fn start(answer: &'static [u8]) -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
                    match c.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                if let Ok(mut s) = seen.lock() {
                    s.push(String::from_utf8_lossy(&head).into_owned());
                }
                let _ = c.write_all(answer);
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        });
        Scripted { addr, heads }
    }

    fn count(&self) -> usize {
        self.heads.lock().map(|h| h.len()).unwrap_or(0)
    }
}

/// Sends one request and returns the final answer, skipping interim (`1xx`) ones.
fn final_answer(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: portier.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let mut rest = &buf[..];
    while rest.starts_with(b"HTTP/1.1 1") {
        match rest.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => rest = &rest[i + 4..],
            None => break,
        }
    }
    parse(rest)
}

/// The `redirect_url` a sign-in or upgrade redirect carries, decoded.
fn redirect_url(location: &str) -> String {
    let v = location
        .split_once("redirect_url=")
        .map(|(_, v)| v.split('&').next().unwrap_or(""))
        .unwrap_or("");
    let mut out = Vec::new();
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() + 1 {
            if let Ok(x) = u8::from_str_radix(&v[i + 1..i + 3], 16) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn doc(cookie: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Cookie", cookie.to_owned()),
        ("Sec-Fetch-Dest", "document".into()),
        ("Sec-Fetch-Mode", "navigate".into()),
    ]
}

fn send(addr: SocketAddr, target: &str, headers: &[(&str, String)]) -> Resp {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    get(addr, target, &h)
}

const PRO_PAGES: &str = r#"
[[route]]
name = "pro-page"
path = "/images/generate"
methods = ["GET", "HEAD"]
upstream = "next"
page = true
plan = ["pro"]

[[route]]
name = "dashboard"
path = "/dashboard/{rest..}"
methods = ["GET", "HEAD"]
upstream = "next"
page = true
"#;

const PAGES_CONFIG: &str = "[pages]\nsign_in_url = \"/sign-in\"\nupgrade_url = \"/pricing\"\n";

/// Clerk's `session-token-iat-before-client-uat`: a valid token issued before the client's
/// last change (an account switch, a new plan) is refreshed by Clerk's middleware before it
/// counts. A free user's stale token goes to the app signed out; only the handshake (or a
/// fresh session that holds the policy) comes back.
#[test]
fn a_valid_session_clerk_would_refresh_reaches_the_app_signed_out() {
    let w = World::start_with(|s| {
        s.policies = PRO_PAGES.into();
        s.extra_config = PAGES_CONFIG.into();
    });
    let now = unix_now();
    let stale_claims = |pla: &str| {
        let mut c = issuer().claims("user_free", AZP, 60);
        c["iat"] = json!(now - 10);
        c["pla"] = json!(pla);
        issuer().token(&c)
    };
    let free = stale_claims("u:free");
    let stale = format!("__session={free}; __client_uat={now}");
    let mut h = doc(&stale);
    h.push(("X-Test-Answer", "handshake".into()));
    let r = send(w.portier.addr, "/images/generate", &h);
    assert_eq!(r.status, 307, "{}", r.body);
    assert!(r
        .header("location")
        .is_some_and(|l| l.starts_with("https://clerk.portier.test/v1/client/handshake")));
    let seen = w.next.last();
    assert_eq!(seen.header("x-portier-user-id"), None, "signed out");
    assert_eq!(
        seen.header("cookie"),
        Some(stale.as_str()),
        "cookies untouched"
    );
    // The app renders without a fresh session: the page never leaves, the upgrade redirect
    // the request would have had does.
    let r = send(w.portier.addr, "/images/generate", &doc(&stale));
    assert_eq!(r.status, 307, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some("/pricing?required=pro&redirect_url=%2Fimages%2Fgenerate")
    );
    assert!(!r.body.contains("upstream"), "the app's page was replaced");
    // The same token after __client_uat: Portier decides by policy, the app is not asked.
    let before = w.next.count();
    let settled = format!("__session={free}; __client_uat={}", now - 20);
    let r = send(w.portier.addr, "/images/generate", &doc(&settled));
    assert_eq!(r.status, 307);
    assert!(r
        .header("location")
        .is_some_and(|l| l.starts_with("/pricing")));
    assert_eq!(w.next.count(), before, "refused by Portier");
    // A fetch (not a document) is never handshaken: the JSON refusal.
    let r = send(
        w.portier.addr,
        "/images/generate",
        &[
            ("Cookie", stale.clone()),
            ("Sec-Fetch-Dest", "empty".into()),
        ],
    );
    assert_eq!((r.status, r.reason().as_str()), (403, "plan_required"));
    // A valid Bearer token is the header path: Clerk never reads __client_uat there.
    let r = send(
        w.portier.addr,
        "/images/generate",
        &[
            ("Authorization", bearer(&free)),
            ("Cookie", format!("__client_uat={now}")),
            ("Sec-Fetch-Dest", "document".into()),
        ],
    );
    assert_eq!(r.status, 307);
    assert!(r
        .header("location")
        .is_some_and(|l| l.starts_with("/pricing")));
    assert_eq!(w.next.count(), before, "refused by Portier");
    // A session cookie without __client_uat (session-token-but-no-client-uat), same.
    let r = send(
        w.portier.addr,
        "/images/generate",
        &doc(&format!("__session={free}")),
    );
    assert_eq!(r.status, 307);
    assert_eq!(w.next.count(), before + 1, "passed to the app");
    assert!(w.next.last().header("x-portier-user-id").is_none());
    // A pro user's stale token holds the policy: forwarded with its identity as usual.
    let pro = stale_claims("u:pro");
    let r = send(
        w.portier.addr,
        "/images/generate",
        &doc(&format!("__session={pro}; __client_uat={now}")),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(w.next.last().header("x-portier-user-id"), Some("user_free"));
}

/// A `100 Continue` or `103 Early Hints` from the app is not its answer: the check waits for
/// the final one, which never leaves when it is a page for nobody.
#[test]
fn interim_answers_do_not_switch_off_the_page_check() {
    const PAGE: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 16\r\n\r\n<p>dashboard</p>";
    for interim in [
        &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
        &b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"[..],
    ] {
        let answer: &'static [u8] = [interim, PAGE].concat().leak();
        let app = Scripted::start(answer);
        let jwks = JwksServer::start(vec![issuer().jwk()]);
        let stub = Upstream::start();
        let mut s = Setup::new(&jwks, &stub, &stub);
        s.next = app.addr;
        let p = s.start();
        for cookie in ["__clerk_handshake=x", "__client_uat=1700000000"] {
            let before = app.count();
            let r = final_answer(
                p.addr,
                "/dashboard/home",
                &[
                    ("Cookie", cookie),
                    ("Sec-Fetch-Dest", "document"),
                    ("Expect", "100-continue"),
                ],
            );
            assert_eq!(app.count(), before + 1, "the app answered");
            assert_eq!(
                (r.status, r.reason().as_str()),
                (401, "token_missing"),
                "{cookie}: {}",
                r.body
            );
            assert!(!r.body.contains("dashboard"), "the page never left");
        }
    }
}

/// Only a redirect a browser follows passes a signed-out pass-through, and without its body:
/// a `304` (show what you cached) or a `3xx` without `Location` (shown as a page) is refused.
#[test]
fn only_a_real_redirect_passes_and_its_body_stays_behind() {
    for (answer, passes) in [
        (&b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n"[..], false),
        (&b"HTTP/1.1 302 Found\r\nContent-Length: 16\r\n\r\n<p>dashboard</p>"[..], false),
        (
            &b"HTTP/1.1 307 Temporary Redirect\r\nLocation: https://clerk.portier.test/v1/client/handshake\r\nSet-Cookie: __clerk_redirect_count=1; Max-Age=2\r\nContent-Length: 16\r\n\r\n<p>dashboard</p>"[..],
            true,
        ),
    ] {
        let app = Scripted::start(answer);
        let jwks = JwksServer::start(vec![issuer().jwk()]);
        let stub = Upstream::start();
        let mut s = Setup::new(&jwks, &stub, &stub);
        s.next = app.addr;
        let p = s.start();
        let r = get(
            p.addr,
            "/dashboard/home",
            &[
                ("Cookie", "__client_uat=1700000000"),
                ("Sec-Fetch-Dest", "document"),
                ("If-None-Match", "\"v1\""),
            ],
        );
        assert_eq!(app.count(), 1, "the app answered");
        let first = String::from_utf8_lossy(answer).lines().next().unwrap_or("").to_owned();
        if passes {
            assert_eq!(r.status, 307, "{first}");
            assert!(r.header("location").is_some_and(|l| l.contains("/v1/client/handshake")));
            assert!(r.header("set-cookie").is_some(), "cookies kept");
            assert_eq!(r.body, "", "{first}: the body stays behind");
        } else {
            assert_eq!(
                (r.status, r.reason().as_str()),
                (401, "token_missing"),
                "{first}: {}",
                r.body
            );
        }
        assert!(!r.body.contains("dashboard"));
    }
}

/// An upgrade never rides a signed-out pass-through: after a 101 there is no answer left to
/// check. The request gets the refusal it would otherwise have had.
#[test]
fn an_upgrade_never_rides_a_signed_out_page_pass_through() {
    let w = World::start_with(|s| {
        s.policies = r#"
[[route]]
name = "live"
path = "/live/{rest..}"
methods = ["GET"]
upstream = "next"
page = true
websocket = true
"#
        .into();
    });
    let expired = issuer().token(&issuer().claims("user_abc", AZP, -60));
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-Fetch-Dest", "document"),
    ];
    for (cookie, reason) in [
        ("__client_uat=1700000000".to_string(), "token_missing"),
        ("__clerk_handshake=x".to_string(), "token_missing"),
        (
            format!("__session={expired}; __client_uat=1700000000"),
            "token_expired",
        ),
    ] {
        let mut h: Vec<(&str, &str)> = upgrade.to_vec();
        h.push(("Cookie", &cookie));
        let r = w.get("/live/feed", &h);
        assert_eq!((r.status, r.reason().as_str()), (401, reason), "{cookie}");
        // Without the upgrade the same navigation passes to the app, checked.
        let r = w.get(
            "/live/feed",
            &[
                ("Cookie", &cookie),
                ("Sec-Fetch-Dest", "document"),
                ("X-Test-Answer", "handshake"),
            ],
        );
        assert_eq!(r.status, 307, "{cookie}");
    }
    assert!(
        w.next
            .requests()
            .iter()
            .all(|s| s.header("upgrade").is_none()),
        "no upgrade reached the app"
    );
}

/// `__clerk_db_jwt` in the query means something to Clerk only on a development instance:
/// there it (and a missing dev browser) passes to the app; on production, or when Portier
/// does not know the instance, it is an ordinary signed-out navigation.
#[test]
fn dev_browser_parameters_pass_only_for_a_development_instance() {
    let anonymous = |w: &World, target: &str, cookie: &str| {
        w.get(
            target,
            &[
                ("Cookie", cookie),
                ("Sec-Fetch-Dest", "document"),
                ("X-Test-Answer", "handshake"),
            ],
        )
    };
    for (pk, development) in [
        (None, false),
        (Some("pk_live_Y2xlcmsucG9ydGllci50ZXN0JA=="), false),
        (Some("pk_test_Y2xlcmsucG9ydGllci50ZXN0JA=="), true),
    ] {
        let w = World::start_with(|s| {
            if let Some(pk) = pk {
                s.extra_clerk = format!("publishable_key = \"{pk}\"");
            }
        });
        let r = anonymous(&w, "/dashboard/x?__clerk_db_jwt=dvb_1", "");
        let r2 = anonymous(&w, "/dashboard/x", "");
        let r3 = anonymous(&w, "/dashboard/x", "__clerk_db_jwt=dvb_1");
        if development {
            assert_eq!(r.status, 307, "dev-browser-sync: {}", r.body);
            assert_eq!(r2.status, 307, "dev-browser-missing: {}", r2.body);
            assert_eq!(
                (r3.status, r3.reason().as_str()),
                (401, "token_missing"),
                "with a dev browser and no session: signed out"
            );
            assert_eq!(w.next.count(), 2);
        } else {
            for r in [&r, &r2, &r3] {
                assert_eq!(
                    (r.status, r.reason().as_str()),
                    (401, "token_missing"),
                    "{pk:?}"
                );
            }
            assert_eq!(w.next.count(), 0, "{pk:?}: nothing reached the app");
        }
    }
}

/// `redirect_url` is built from the canonical path: `//evil.com` (which a browser reads as
/// another site) comes back as `/evil.com`; what cannot be canonical is refused first.
#[test]
fn redirect_urls_always_stay_on_the_site() {
    let w = World::start_with(|s| {
        s.policies = r#"
[[route]]
name = "studio"
path = "/studio/{rest..}"
methods = ["GET"]
upstream = "next"
page = true
sign_in_url = "https://accounts.example.com/sign-in"

[[route]]
name = "everything"
path = "/{rest..}"
methods = ["GET"]
upstream = "next"
page = true
"#
        .into();
        s.extra_config = PAGES_CONFIG.into();
    });
    for (target, back) in [
        ("//evil.com", "/evil.com"),
        ("///evil.com/x?a=1", "/evil.com/x?a=1"),
        ("//dashboard", "/dashboard"),
        ("/a//b?next=//evil.com", "/a/b?next=//evil.com"),
        // Absolute-form (its authority must be the Host, or Pingora refuses it: below).
        ("http://portier.test//evil.com?x=1", "/evil.com?x=1"),
    ] {
        let r = send(w.portier.addr, target, &doc(""));
        assert_eq!(r.status, 307, "{target}: {}", r.body);
        let location = r.header("location").unwrap_or("");
        assert!(location.starts_with("/sign-in?redirect_url="), "{location}");
        let url = redirect_url(location);
        assert_eq!(url, back, "{target}");
        assert!(url.starts_with('/') && !url.starts_with("//"), "{url}");
    }
    for target in [
        "/\\evil.com",
        "/%2F%2Fevil.com",
        "/%5Cevil.com",
        "http://evil.com/dashboard",
    ] {
        let r = send(w.portier.addr, target, &doc(""));
        assert_eq!(r.status, 400, "{target}: {}", r.body);
        assert!(r.header("location").is_none(), "{target}");
    }
    // A route's own sign-in URL wins over [pages].
    let r = send(w.portier.addr, "/studio//x", &doc(""));
    assert_eq!(
        r.header("location"),
        Some("https://accounts.example.com/sign-in?redirect_url=%2Fstudio%2Fx")
    );
    assert_eq!(w.next.count(), 0);
}

/// `/_next/data/<build>/<page>.json` is decided by the page Next.js renders for it, which
/// `index/` does not hide: with a public catch-all page, the data of a protected page stays
/// protected.
#[test]
fn page_data_is_decided_by_the_page_nextjs_renders() {
    let w = World::start_with(|s| {
        s.policies = format!(
            "{PRO_PAGES}{}",
            r#"
[[route]]
name = "everything-else"
path = "/{rest..}"
methods = ["GET"]
upstream = "next"
page = true
access = "public"
"#
        );
    });
    let free = token_with("user_free", json!({"pla": "u:free"}));
    for target in [
        "/_next/data/B/images/generate.json",
        "/_next/data/B/index/images/generate.json",
    ] {
        let r = w.get(target, &[]);
        assert_eq!(
            (r.status, r.reason().as_str()),
            (401, "token_missing"),
            "{target}"
        );
        let r = w.get_as(target, &free);
        assert_eq!(
            (r.status, r.reason().as_str()),
            (403, "plan_required"),
            "{target}"
        );
    }
    assert_eq!(w.next.count(), 0);
    // `a/index.json` is the page /a/index (not /a), `index.json` the home page: public here.
    for (target, _page) in [
        ("/_next/data/B/index.json", "/"),
        ("/_next/data/B/images/index.json", "/images/index"),
    ] {
        let r = w.get(target, &[]);
        assert_eq!(r.status, 200, "{target}: {}", r.body);
        assert_eq!(w.next.last().path, target, "forwarded as it came");
    }
    let r = w.get("/_next/data/B/(.)images/generate.json", &[]);
    assert_eq!((r.status, r.reason().as_str()), (404, "no_route"));
}

/// A retried request goes out on the canonical path too: Pingora starts each attempt from
/// the client's request head, so the canonical URI must be set again on the second one. A peer
/// that takes the request and closes without answering makes a GET go to the other peer.
#[test]
fn a_retried_request_still_goes_out_on_the_canonical_path() {
    let live = Upstream::start();
    let closer = Scripted::start(b"");
    let jwks = JwksServer::start(vec![issuer().jwk()]);
    let mut s = Setup::new(&jwks, &live, &live);
    s.pool(&[live.addr.to_string(), closer.addr.to_string()], "");
    let p = s.start();
    for i in 0..10 {
        let r = get(p.addr, &format!("/pool//x/%37/{i}?q=%2F"), &[]);
        assert_eq!(r.status, 200, "{i}: {}", r.body);
    }
    let paths: Vec<String> = live.requests().into_iter().map(|s| s.path).collect();
    assert_eq!(paths.len(), 10, "each request reached the live peer once");
    for (i, path) in paths.iter().enumerate() {
        assert_eq!(path, &format!("/pool/x/7/{i}?q=%2F"));
    }
    assert!(
        closer.count() > 0,
        "some requests went to the closing peer first"
    );
    for head in closer.heads.lock().map(|h| h.clone()).unwrap_or_default() {
        assert!(head.starts_with("GET /pool/x/7/"), "{head}");
    }
}
