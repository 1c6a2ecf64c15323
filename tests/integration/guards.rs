//! Traffic guards: per-user rate limits (in memory and shared through a real Redis between
//! two `portier run` processes), webhook signatures, and body, header and time limits.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;

const RATE_POLICIES: &str = r#"
[[route]]
name = "gen"
path = "/api/generate"
methods = ["POST", "GET"]
upstream = "app"
rate_limit = "5/min"

[[route]]
name = "quick"
path = "/api/quick"
methods = ["GET"]
upstream = "app"
rate_limit = "3/2s"

[[route]]
name = "open"
path = "/open"
methods = ["GET"]
upstream = "app"
access = "public"
rate_limit = "2/min"
"#;

fn rate_setup(s: &mut Setup) {
    s.policies = RATE_POLICIES.into();
}

#[test]
fn five_per_minute_then_429_with_headers_per_user() {
    let w = World::start_with(rate_setup);
    let a = token("user_ratea");
    let b = token("user_rateb");
    // Stay inside one window: if the minute is about to roll over, wait for the next one.
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        % 60;
    if secs > 50 {
        std::thread::sleep(Duration::from_secs(61 - secs));
    }
    for i in 1..=5 {
        let r = w.get_as("/api/generate", &a);
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert!(
            r.header("ratelimit").is_some(),
            "RateLimit on allowed answers too"
        );
    }
    let r = w.get_as("/api/generate", &a);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (429, "rate_limited"),
        "{}",
        r.body
    );
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(
        r.header("ratelimit-policy")
            .is_some_and(|p| p.contains("q=5") && p.contains("w=60")),
        "{:?}",
        r.headers
    );
    assert!(
        r.header("ratelimit").is_some_and(|p| p.contains("r=0")),
        "{:?}",
        r.headers
    );
    assert_eq!(
        w.app.count(),
        5,
        "the refused request never reached the upstream"
    );
    // Another user has their own budget.
    assert_eq!(w.get_as("/api/generate", &b).status, 200);
}

#[test]
fn the_window_recovers() {
    let w = World::start_with(rate_setup);
    let a = token("user_quick");
    // Start at the beginning of a 2 s window so three requests fit in it.
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        % 2000;
    std::thread::sleep(Duration::from_millis((2000 - ms as u64) + 20));
    for _ in 0..3 {
        assert_eq!(w.get_as("/api/quick", &a).status, 200);
    }
    assert_eq!(w.get_as("/api/quick", &a).status, 429);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(
        w.get_as("/api/quick", &a).status,
        200,
        "a new window allows again"
    );
}

#[test]
fn public_routes_are_limited_by_client_address() {
    let w = World::start_with(rate_setup);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        % 60;
    if secs > 55 {
        std::thread::sleep(Duration::from_secs(61 - secs));
    }
    assert_eq!(w.get("/open", &[]).status, 200);
    // A forged X-Forwarded-For from an untrusted peer does not buy a new budget.
    assert_eq!(
        w.get("/open", &[("X-Forwarded-For", "203.0.113.9")]).status,
        200
    );
    let r = w.get("/open", &[("X-Forwarded-For", "198.51.100.7")]);
    assert_eq!((r.status, r.reason().as_str()), (429, "rate_limited"));
}

#[test]
fn two_processes_share_one_limit_in_redis_and_redis_failure_follows_config() {
    let mut redis = Redis::start();
    let jwks = JwksServer::start(vec![issuer().jwk()]);
    let app = Upstream::start();
    let replica = |failure: &str| {
        let mut s = Setup::new(&jwks, &app, &app);
        s.policies = RATE_POLICIES.into();
        s.admin = Some(any_port());
        s.extra_config = format!(
            "[rate_limit]\nstore = \"redis\"\nredis_url = \"{}\"\non_redis_failure = \"{failure}\"\nredis_timeout_ms = 300\n",
            redis.url()
        );
        PortierProcess::start(s)
    };
    let a = replica("open");
    let b = replica("closed");
    let (admin_a, admin_b) = (a.admin.expect("admin"), b.admin.expect("admin"));
    let t = token("user_shared");
    let auth = bearer(&t);
    let h = [("Authorization", auth.as_str())];
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        % 60;
    if secs > 50 {
        std::thread::sleep(Duration::from_secs(61 - secs));
    }
    let mut statuses = Vec::new();
    for i in 0..6 {
        let target = if i % 2 == 0 { a.addr } else { b.addr };
        statuses.push(get(target, "/api/generate", &h).status);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429],
        "one budget across both replicas"
    );

    // Redis goes away: replica A fails open, replica B fails closed, and both count it.
    redis.stop();
    let other = bearer(&token("user_other"));
    let h = [("Authorization", other.as_str())];
    let ra = get(a.addr, "/api/generate", &h);
    assert_eq!(ra.status, 200, "fail open: {}", ra.body);
    let rb = get(b.addr, "/api/generate", &h);
    assert_eq!(
        (rb.status, rb.reason().as_str()),
        (503, "rate_limit_unavailable")
    );
    let count = |admin, outcome: &str| -> f64 {
        let m = get(admin, "/metrics", &[]).body;
        let key = format!("portier_rate_limit_store_errors_total{{outcome=\"{outcome}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(count(admin_a, "fail_open"), 1.0);
    assert_eq!(count(admin_b, "fail_closed"), 1.0);
}

// === webhooks ===

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const OLD_SECRET: &str = "whsec_dGhpcyBpcyB0aGUgb2xkIHNlY3JldCBrZXkhIQ==";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

#[test]
fn webhooks_verify_refuse_and_replay_protect() {
    std::env::set_var("PORTIER_TEST_WH_SECRET", SECRET);
    std::env::set_var("PORTIER_TEST_WH_OLD", OLD_SECRET);
    let up = BodyUpstream::start();
    let jwks = JwksServer::start(vec![issuer().jwk()]);
    let next = Upstream::start();
    let mut s = Setup::new(&jwks, &next, &next);
    s.app = up.addr;
    s.policies = r#"
[[route]]
name = "hooks"
path = "/api/webhooks/{event}"
methods = ["POST"]
upstream = "app"
access = "webhook"
webhook = "workers"
max_body_bytes = 4096
"#
    .into();
    s.extra_config =
        "[webhooks.workers]\nsecrets_env = [\"PORTIER_TEST_WH_SECRET\", \"PORTIER_TEST_WH_OLD\"]\n"
            .into();
    let p = s.start();
    let body = br#"{"job":"j1","status":"done"}"#;
    let post = |id: &str, ts: i64, sig: &str, body: &[u8]| {
        let ts = ts.to_string();
        send_body(
            p.addr,
            "POST",
            "/api/webhooks/image-completion",
            &[
                ("svix-id", id),
                ("svix-timestamp", &ts),
                ("svix-signature", sig),
                ("Content-Type", "application/json"),
            ],
            body,
            false,
        )
    };
    let t = now();
    // A valid delivery reaches the upstream with its body intact.
    let r = post(
        "msg_1",
        t,
        &webhook_signature(SECRET, "msg_1", t, body),
        body,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, body);
    assert_eq!(seen[0].path, "/api/webhooks/image-completion");
    assert!(seen[0].complete);
    assert_eq!(
        seen[0].headers.get("svix-id").map(String::as_str),
        Some("msg_1")
    );
    // The same delivery again: a replay.
    let r = post(
        "msg_1",
        t,
        &webhook_signature(SECRET, "msg_1", t, body),
        body,
    );
    assert_eq!((r.status, r.reason().as_str()), (401, "webhook_replayed"));
    assert!(
        r.header("www-authenticate").is_none(),
        "a webhook is not asked to sign in"
    );
    // The rotated-out secret still verifies; several signatures, any match.
    let both = format!(
        "v1,AAAA {}",
        webhook_signature(OLD_SECRET, "msg_2", t, body)
    );
    assert_eq!(post("msg_2", t, &both, body).status, 200);
    let cases: Vec<(&str, String, i64, Vec<u8>, &str)> = vec![
        (
            "changed body",
            webhook_signature(SECRET, "msg_3", t, body),
            t,
            br#"{"job":"j1","status":"paid"}"#.to_vec(),
            "webhook_signature_invalid",
        ),
        (
            "unknown secret",
            webhook_signature(
                "whsec_dW5rbm93biBzZWNyZXQgb2YgYW4gYXR0YWNrZXI=",
                "msg_4",
                t,
                body,
            ),
            t,
            body.to_vec(),
            "webhook_signature_invalid",
        ),
        (
            "stale",
            webhook_signature(SECRET, "msg_5", t - 301, body),
            t - 301,
            body.to_vec(),
            "webhook_timestamp_out_of_range",
        ),
        (
            "future",
            webhook_signature(SECRET, "msg_6", t + 301, body),
            t + 301,
            body.to_vec(),
            "webhook_timestamp_out_of_range",
        ),
        (
            "no v1 entry",
            "v2,abc".to_string(),
            t,
            body.to_vec(),
            "webhook_signature_invalid",
        ),
    ];
    for (what, sig, ts, b, reason) in cases {
        let id = format!("msg_{what}").replace(' ', "_");
        let r = post(&id, ts, &sig, &b);
        assert_eq!(
            (r.status, r.reason().as_str()),
            (401, reason),
            "{what}: {}",
            r.body
        );
    }
    // Headers missing entirely.
    let r = send_body(p.addr, "POST", "/api/webhooks/x", &[], body, false);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (401, "webhook_signature_invalid")
    );
    // Over the route's body limit: refused before any signature work.
    let big = vec![b'x'; 5000];
    let r = post(
        "msg_big",
        t,
        &webhook_signature(SECRET, "msg_big", t, &big),
        &big,
    );
    assert_eq!((r.status, r.reason().as_str()), (413, "body_too_large"));
    assert_eq!(
        up.requests().len(),
        2,
        "only the two valid deliveries reached the upstream"
    );
}

// === limits ===

#[test]
fn body_header_and_time_limits() {
    let up = BodyUpstream::start();
    let jwks = JwksServer::start(vec![issuer().jwk()]);
    let slow = Upstream::start();
    let mut s = Setup::new(&jwks, &slow, &slow);
    s.app = up.addr;
    s.policies = r#"
[[route]]
name = "upload"
path = "/upload"
methods = ["POST"]
upstream = "app"
access = "public"
max_body_bytes = 100000

[[route]]
name = "slow"
path = "/slow/{rest..}"
methods = ["GET"]
upstream = "next"
access = "public"
timeout_ms = 300
"#
    .into();
    s.extra_config = "[limits]\nmax_header_bytes = 4096\n".into();
    let p = s.start();
    // Announced too large: 413 before anything reaches the upstream.
    let big = vec![7u8; 150_000];
    let r = send_body(p.addr, "POST", "/upload", &[], &big, false);
    assert_eq!((r.status, r.reason().as_str()), (413, "body_too_large"));
    assert!(up.requests().is_empty(), "upstream untouched");
    // Within the limit: through, intact.
    let ok = vec![9u8; 90_000];
    assert_eq!(
        send_body(p.addr, "POST", "/upload", &[], &ok, false).status,
        200
    );
    assert_eq!(up.requests().last().map(|s| s.body.len()), Some(90_000));
    // Chunked, no length announced, too long: cut off, and the upstream never gets it whole.
    let before = up.requests().len();
    let r = send_body(p.addr, "POST", "/upload", &[], &big, true);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (413, "body_too_large"),
        "{}",
        r.body
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        up.requests()
            .iter()
            .skip(before)
            .all(|s| !s.complete || s.body.len() <= 100_000),
        "no over-long body was delivered whole"
    );
    // Headers over the limit.
    let huge = "a".repeat(5000);
    let r = get(p.addr, "/upload", &[("X-Filler", &huge)]);
    assert_eq!((r.status, r.reason().as_str()), (431, "headers_too_large"));
    // The route's time limit: 504 after 300 ms, not the upstream's 1.5 s.
    let started = std::time::Instant::now();
    let r = get(p.addr, "/slow/x", &[]);
    assert_eq!((r.status, r.reason().as_str()), (504, "upstream_timeout"));
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn webhook_replay_ids_are_shared_in_redis_and_refused_when_redis_is_down() {
    std::env::set_var("PORTIER_TEST_WH_REDIS", SECRET);
    let mut redis = Redis::start();
    let up = BodyUpstream::start();
    let jwks = JwksServer::start(vec![issuer().jwk()]);
    let next = Upstream::start();
    let replica = |extra: &str| {
        let mut s = Setup::new(&jwks, &next, &next);
        s.app = up.addr;
        s.policies = "[[route]]\nname = \"hooks\"\npath = \"/hooks/{event}\"\nmethods = [\"POST\"]\nupstream = \"app\"\naccess = \"webhook\"\nwebhook = \"w\"\n".into();
        s.extra_config = format!(
            "[webhooks.w]\nsecrets_env = [\"PORTIER_TEST_WH_REDIS\"]\n[rate_limit]\nstore = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = 300\n{extra}",
            redis.url()
        );
        s.start()
    };
    let a = replica("");
    let b = replica("");
    let body = br#"{"job":"shared"}"#;
    let t = now();
    let sig = webhook_signature(SECRET, "msg_shared", t, body);
    let ts = t.to_string();
    let post = |addr| {
        send_body(
            addr,
            "POST",
            "/hooks/done",
            &[
                ("webhook-id", "msg_shared"),
                ("webhook-timestamp", &ts),
                ("webhook-signature", &sig),
            ],
            body,
            false,
        )
    };
    assert_eq!(post(a.addr).status, 200);
    // The same delivery to the other replica is a replay: the id lives in Redis.
    let r = post(b.addr);
    assert_eq!((r.status, r.reason().as_str()), (401, "webhook_replayed"));
    // Without Redis a replay cannot be ruled out: refused with 503, never let through.
    redis.stop();
    let t2 = now();
    let sig2 = webhook_signature(SECRET, "msg_new", t2, body);
    let ts2 = t2.to_string();
    let r = send_body(
        a.addr,
        "POST",
        "/hooks/done",
        &[
            ("webhook-id", "msg_new"),
            ("webhook-timestamp", &ts2),
            ("webhook-signature", &sig2),
        ],
        body,
        false,
    );
    assert_eq!(
        (r.status, r.reason().as_str()),
        (503, "replay_check_unavailable")
    );
    assert_eq!(
        up.requests().len(),
        1,
        "only the first delivery reached the upstream"
    );
}
