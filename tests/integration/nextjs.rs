//! End to end with a real Next.js 16 app and `@clerk/nextjs` 7 middleware
//! (`tests/nextjs_app`, installed and built by `scripts/setup-nextjs`) behind `portier run`,
//! on the shipped `policies/web.toml`. Clerk verifies the same tokens networklessly with the
//! test issuer's public key (`jwtKey`); its Frontend API is never contacted (its handshake is
//! observed as the 307 it answers).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::common::*;

const PK: &str = "pk_live_Y2xlcmsucG9ydGllci50ZXN0JA==";

fn app_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/nextjs_app")
}

struct Next {
    child: Child,
    addr: SocketAddr,
    /// The last lines Next.js wrote to stderr, printed when the test fails.
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Drop for Next {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let tail = self.stderr.lock().map(|t| t.clone()).unwrap_or_default();
            eprintln!("--- next start stderr (last {} lines) ---", tail.len());
            for line in tail {
                eprintln!("{line}");
            }
            eprintln!("--- end of next start stderr ---");
        }
    }
}

/// Lines of Next.js's stderr kept for a failure report.
const STDERR_TAIL: usize = 80;

fn start_next() -> Next {
    let dir = app_dir();
    let bin = dir.join("node_modules/.bin/next");
    assert!(
        bin.exists() && dir.join(".next/BUILD_ID").exists(),
        "tests/nextjs_app is not built: run scripts/setup (it runs scripts/setup-nextjs)"
    );
    let addr = free_port();
    let mut child = Command::new(bin)
        .args(["start", "-H", "127.0.0.1", "-p", &addr.port().to_string()])
        .current_dir(&dir)
        .env("CLERK_PUBLISHABLE_KEY", PK)
        .env("CLERK_SECRET_KEY", "sk_live_portier_test_dummy")
        .env("CLERK_JWT_KEY", issuer().public_pem())
        .env("CLERK_TELEMETRY_DISABLED", "1")
        .env("NEXT_PUBLIC_CLERK_TELEMETRY_DISABLED", "1")
        .env("NEXT_TELEMETRY_DISABLED", "1")
        .env("NEXT_PUBLIC_CLERK_KEYLESS_DISABLED", "1")
        .env("CLERK_DISABLE_AUTO_PROXY", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start next");
    let stderr = Arc::new(Mutex::new(VecDeque::new()));
    if let Some(err) = child.stderr.take() {
        let tail = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(mut t) = tail.lock() {
                    if t.len() == STDERR_TAIL {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            }
        });
    }
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("Ready") {
                let _ = tx.send(());
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(60)).is_ok();
    let next = Next {
        child,
        addr,
        stderr,
    };
    assert!(ready, "next start did not get ready");
    next
}

/// The Next-Action id of the dashboard's server action in this build.
fn action_id() -> String {
    let text =
        std::fs::read_to_string(app_dir().join(".next/server/server-reference-manifest.json"))
            .expect("server action manifest");
    let v: Value = serde_json::from_str(&text).expect("json");
    v["node"]
        .as_object()
        .and_then(|m| {
            m.iter().find(|(_, a)| {
                a["exportedName"] == "echoUser"
                    && !a["filename"]
                        .as_str()
                        .unwrap_or("")
                        .contains("node_modules")
            })
        })
        .map(|(id, _)| id.clone())
        .expect("echoUser action")
}

fn start() -> (Next, PortierProcess, JwksServer) {
    let next = start_next();
    let jwks = JwksServer::start(vec![issuer().jwk()]);
    let app = Upstream::start();
    let mut setup = Setup::new(&jwks, &app, &app);
    setup.next = next.addr;
    setup.extra_clerk = format!("publishable_key = \"{PK}\"");
    setup.policies = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies/web.toml"),
    )
    .expect("shipped web.toml")
    .replace("upstream = \"nextjs\"", "upstream = \"next\"");
    setup.extra_config = "[pages]\nsign_in_url = \"/sign-in\"\nupgrade_url = \"/pricing\"\n".into();
    let portier = PortierProcess::start(setup);
    (next, portier, jwks)
}

fn session(sub: &str, extra: Value, iat_offset: i64) -> String {
    let mut c = issuer().claims(sub, AZP, 60);
    let iat = c["iat"].as_i64().unwrap_or(0) + iat_offset;
    c["iat"] = json!(iat);
    c["nbf"] = json!(iat - 10);
    c["exp"] = json!(iat + 60);
    if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    issuer().token(&c)
}

fn iat_of(token: &str) -> i64 {
    let payload = token.split('.').nth(1).unwrap_or("");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_default();
    serde_json::from_slice::<Value>(&bytes).unwrap_or_default()["iat"]
        .as_i64()
        .unwrap_or(0)
}

fn document(cookie: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Cookie", cookie.to_owned()),
        ("Sec-Fetch-Dest", "document".into()),
        ("Sec-Fetch-Mode", "navigate".into()),
        ("Accept", "text/html".into()),
    ]
}

fn send(addr: SocketAddr, target: &str, headers: &[(&str, String)]) -> Resp {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    get(addr, target, &h)
}

fn text_of(body: &str, id: &str) -> Option<String> {
    let start = body.find(&format!("id=\"{id}\">"))? + id.len() + 6;
    let end = body[start..].find('<')?;
    Some(body[start..start + end].to_owned())
}

/// Where the test's own timings go, for the CI time it adds (also printed).
fn record_timing(line: &str) {
    eprintln!("{line}");
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nextjs-e2e-timing.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
    {
        use std::io::Write;
        let _ = writeln!(f, "{} {line}", portier::decision_log::rfc3339_now());
    }
}

#[test]
fn nextjs_pages_behind_portier_behave_like_clerks_middleware() {
    let started = Instant::now();
    let (_next, portier, _jwks) = start();
    let at = portier.addr;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Warm up: the first request of a fresh `next start` compiles nothing but can be slow.
    while send(at, "/", &[]).status != 200 {
        assert!(
            Instant::now() < deadline,
            "Next.js behind Portier never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let setup = started.elapsed();

    // Signed in: the dashboard renders with the user Clerk saw.
    let t = session("user_123", json!({}), 0);
    let cookie = format!("__session={t}; __client_uat={}", iat_of(&t) - 5);
    let r = send(at, "/dashboard", &document(&cookie));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(text_of(&r.body, "user").as_deref(), Some("user_123"));

    // An expired token with __client_uat: Portier lets Clerk's middleware answer, and its
    // handshake redirect to the Frontend API comes back.
    let old = session("user_123", json!({}), -120);
    let expired = format!("__session={old}; __client_uat={}", iat_of(&old) - 5);
    let r = send(at, "/dashboard", &document(&expired));
    assert_eq!(r.status, 307, "{}", r.body);
    let location = r.header("location").unwrap_or("");
    assert!(
        location.starts_with("https://clerk.portier.test/v1/client/handshake?"),
        "{location}"
    );
    assert!(r
        .header("cache-control")
        .is_some_and(|c| c.contains("no-store")));
    // First visit after signing in: __client_uat without a session cookie, same.
    let r = send(at, "/dashboard", &document("__client_uat=1700000000"));
    assert_eq!(r.status, 307);
    assert!(r
        .header("location")
        .is_some_and(|l| l.contains("client-uat-but-no-session-token")));

    // Signed out: to sign-in with the page to come back to, as a path on this site.
    let r = send(at, "/dashboard?tab=1", &document(""));
    assert_eq!(r.status, 307, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some("/sign-in?redirect_url=%2Fdashboard%3Ftab%3D1")
    );
    // A fetch gets JSON, not a redirect.
    let r = send(at, "/dashboard", &[("Sec-Fetch-Dest", "empty".into())]);
    assert_eq!((r.status, r.reason().as_str()), (401, "token_missing"));

    // A free user's navigation to the pro page: to pricing.
    let free = session("user_free", json!({"pla": "u:free"}), 0);
    let free_cookie = format!("__session={free}; __client_uat={}", iat_of(&free) - 5);
    let r = send(at, "/images/generate", &document(&free_cookie));
    assert_eq!(r.status, 307, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some("/pricing?required=pro&redirect_url=%2Fimages%2Fgenerate")
    );
    // A valid free token issued before __client_uat (an account switch, a plan change in
    // another tab): Clerk's middleware refreshes it before it counts, so the navigation reaches
    // it and its handshake comes back, not the pricing redirect.
    let switched = session("user_free", json!({"pla": "u:free"}), -10);
    let switched_cookie = format!(
        "__session={switched}; __client_uat={}",
        iat_of(&switched) + 10
    );
    let r = send(at, "/images/generate", &document(&switched_cookie));
    assert_eq!(r.status, 307, "{}", r.body);
    assert!(
        r.header("location")
            .is_some_and(|l| l.starts_with("https://clerk.portier.test/v1/client/handshake?")),
        "{:?}",
        r.header("location")
    );
    assert_eq!(
        r.header("x-clerk-auth-reason"),
        Some("session-token-iat-before-client-uat")
    );
    assert!(!r.body.contains("pro:false"), "the page never left");
    // Its RSC and page data requests are refused too (JSON).
    for (target, headers) in [
        (
            "/images/generate?_rsc=",
            vec![("Cookie", free_cookie.clone()), ("RSC", "1".to_string())],
        ),
        (
            "/_next/data/build-1/images/generate.json",
            vec![("Cookie", free_cookie.clone())],
        ),
    ] {
        let r = send(at, target, &headers);
        assert_eq!(
            (r.status, r.reason().as_str()),
            (403, "plan_required"),
            "{target}"
        );
    }
    // A pro user gets the page and its RSC payload.
    let pro = session("user_pro", json!({"pla": "u:pro"}), 0);
    let pro_cookie = format!("__session={pro}; __client_uat={}", iat_of(&pro) - 5);
    let r = send(at, "/images/generate", &document(&pro_cookie));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(text_of(&r.body, "pro").as_deref(), Some("pro:true"));
    let r = send(
        at,
        "/images/generate?_rsc=",
        &[("Cookie", pro_cookie.clone()), ("RSC", "1".into())],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("pro:true"), "{}", r.body);

    // Completing a handshake (the way back from the Frontend API, an expired cookie still
    // in the jar): Clerk renders the page for the session it sets, and Portier lets the page
    // out only for a session that holds the policy. A free user's fresh session gets the
    // pricing redirect, keeping the cookies Clerk set.
    let handshake = |token: &str| {
        let directives = json!({"handshake": [
            format!("__session={token}; Path=/; SameSite=Lax"),
            format!("__client_uat={}; Path=/; SameSite=Lax; Max-Age=315360000", iat_of(token) - 5),
            "__clerk_handshake=; Path=/; Max-Age=0",
        ]});
        issuer().token(&directives)
    };
    let fresh_free = session("user_free", json!({"pla": "u:free"}), 0);
    let stale = session("user_free", json!({"pla": "u:free"}), -120);
    let stale_cookie = format!("__session={stale}; __client_uat={}", iat_of(&stale) - 5);
    let target = format!(
        "/images/generate?__clerk_handshake={}",
        handshake(&fresh_free)
    );
    let r = send(at, &target, &document(&stale_cookie));
    assert_eq!(r.status, 307, "{}", r.body);
    assert!(r
        .header("location")
        .is_some_and(|l| l.starts_with("/pricing?required=pro")));
    assert!(!r.body.contains("pro:false"), "the page never left");
    let fresh_pro = session("user_pro", json!({"pla": "u:pro"}), 0);
    let target = format!(
        "/images/generate?__clerk_handshake={}",
        handshake(&fresh_pro)
    );
    let r = send(at, &target, &document(&stale_cookie));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(text_of(&r.body, "user").as_deref(), Some("user_pro"));

    // A server action on the dashboard: a POST with Next-Action, signed in like the page.
    let action = action_id();
    let post = |cookie: &str| {
        let mut h = vec![
            ("Next-Action", action.as_str()),
            ("Content-Type", "text/plain;charset=UTF-8"),
            ("Accept", "text/x-component"),
            ("Origin", "http://portier.test"),
        ];
        if !cookie.is_empty() {
            h.push(("Cookie", cookie));
        }
        send_body(at, "POST", "/dashboard", &h, b"[null]", false)
    };
    let r = post(&cookie);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"userId\":\"user_123\""), "{}", r.body);
    let r = post("");
    assert_eq!((r.status, r.reason().as_str()), (401, "token_missing"));

    // Static assets load signed out.
    let home = send(at, "/", &[]);
    let asset = home
        .body
        .split('"')
        .find(|s| s.starts_with("/_next/static/") && s.ends_with(".js"))
        .expect("a script of the home page")
        .to_owned();
    let r = get(at, &asset, &[]);
    assert_eq!(r.status, 200, "{asset}");
    record_timing(&format!(
        "nextjs e2e: next start + portier ready in {:.2}s, requests {:.2}s, total {:.2}s",
        setup.as_secs_f64(),
        (started.elapsed() - setup).as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
}
