//! Policy operations: hot reload under load, lints, explain agreeing with the proxy, shadow
//! rules, metrics and the decision log.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::shipped::{replace_file, Shipped};

/// Parses Prometheus text into `name{labels}` -> value.
fn scrape(admin: std::net::SocketAddr) -> BTreeMap<String, f64> {
    let r = get(admin, "/metrics", &[]);
    assert_eq!(r.status, 200);
    r.body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn metric(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

/// On the shipped shape (its bucket included), so a reload bug in what users run shows here.
#[test]
fn hundred_reloads_under_load_never_fail_a_request_or_serve_an_invalid_set() {
    let w = Shipped::start(5);
    let admin = w.admin;
    let policy_file = w.policy_file("api.toml");
    let original = std::fs::read_to_string(&policy_file).expect("api.toml");
    let addr = w.portier.addr;
    let auth = bearer(&token("user_load"));
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let loaders: Vec<_> = (0..2)
        .map(|_| {
            let (stop, sent, failed, auth) =
                (stop.clone(), sent.clone(), failed.clone(), auth.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(90);
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && n < 200_000 {
                    n += 1;
                    // Allowed by every valid set; /secret is opened only by the invalid sets.
                    let ok = get(addr, "/api/books/1", &[("Authorization", &auth)]);
                    let secret = get(addr, "/secret", &[]);
                    sent.fetch_add(2, Ordering::SeqCst);
                    if ok.status != 200 || secret.status != 404 {
                        failed.fetch_add(1, Ordering::SeqCst);
                        eprintln!(
                            "unexpected: books {} secret {} {}",
                            ok.status, secret.status, secret.body
                        );
                    }
                }
            })
        })
        .collect();
    let secret = "[[route]]\nname = \"secret\"\npath = \"/secret\"\nmethods = [\"GET\"]\nupstream = \"flask\"\naccess = \"public\"\n";
    let invalid_edits = [
        // Valid TOML and routes, but an unknown upstream: the whole set is refused.
        format!("{original}\n{secret}\n[[route]]\nname = \"x\"\npath = \"/x\"\nmethods = [\"GET\"]\nupstream = \"nope\"\n"),
        // A syntax error after an opening route.
        format!("{original}\n{secret}[[route\n"),
    ];
    let counts = |w: &Shipped| (w.reloads("ok"), w.reloads("error"));
    for i in 0..100 {
        let before = counts(&w);
        let invalid = i % 10 == 9;
        let text = if invalid {
            invalid_edits[(i / 10) % 2].clone()
        } else {
            format!("# edit {i}\n{original}")
        };
        replace_file(&policy_file, &text);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = counts(&w);
            if now != before {
                let want = if invalid {
                    (before.0, before.1 + 1)
                } else {
                    (before.0 + 1, before.1)
                };
                assert_eq!(now, want, "reload {i} (invalid: {invalid})");
                break;
            }
            assert!(Instant::now() < deadline, "reload {i} was not noticed");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    stop.store(true, Ordering::SeqCst);
    for l in loaders {
        l.join().expect("loader");
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed requests during reloads"
    );
    assert!(
        sent.load(Ordering::SeqCst) >= 200,
        "load ran: {}",
        sent.load(Ordering::SeqCst)
    );
    assert_eq!(counts(&w), (90, 10));
    assert_eq!(w.portier.gateway.live().generation, 91);
    let m = scrape(admin);
    assert_eq!(
        metric(&m, "portier_policy_reloads_total{result=\"error\"}"),
        10.0
    );
    assert_eq!(
        metric(&m, "portier_policy_reloads_total{result=\"ok\"}"),
        90.0
    );
    assert_eq!(metric(&m, "portier_policy_generation"), 91.0);
}

#[test]
fn sighup_and_config_changes_reload_and_report_restarts() {
    let w = Shipped::start(0);
    // A live change (azp list) and one that needs a restart (upstream timeout).
    w.edit_config(|t| {
        t["clerk"]["authorized_parties"] =
            toml::Value::Array(vec![toml::Value::String("https://other.example".into())]);
        t["upstreams"]["flask"]["read_timeout_ms"] = toml::Value::Integer(700);
    });
    let report = runtime()
        .block_on(w.portier.gateway.reload())
        .expect("reload");
    assert_eq!(report.restart_required, vec!["upstreams"]);
    // The new azp list is live: our usual tokens are now minted for another origin.
    let r = get(
        w.portier.addr,
        "/api/books/1",
        &[("Authorization", &bearer(&token("user_a")))],
    );
    assert_eq!((r.status, r.reason().as_str()), (401, "azp_mismatch"));
    // An upstream added by a reload has no pool until a restart: a route to it would answer
    // 500 once live, so the whole edit is refused and the last good state keeps serving.
    let before = w.portier.gateway.live().generation;
    w.edit_config(|t| {
        let mut extra = toml::Table::new();
        extra.insert(
            "peers".into(),
            toml::Value::Array(vec![toml::Value::String(w.flask.addr.to_string())]),
        );
        t["upstreams"]
            .as_table_mut()
            .expect("[upstreams]")
            .insert("extra".into(), toml::Value::Table(extra));
    });
    std::fs::write(
        w.policy_file("extra.toml"),
        "[[route]]\nname = \"extra\"\npath = \"/extra\"\nmethods = [\"GET\"]\nupstream = \"extra\"\naccess = \"public\"\n",
    )
    .expect("write");
    let err = runtime()
        .block_on(w.portier.gateway.reload())
        .expect_err("a route to an upstream that is not running is refused");
    assert!(err.to_string().contains("extra"), "{err}");
    assert_eq!(w.portier.gateway.live().generation, before);
    let r = get(w.portier.addr, "/extra", &[]);
    assert_eq!((r.status, r.reason().as_str()), (404, "no_route"));
    std::fs::remove_file(w.policy_file("extra.toml")).expect("remove");
    // A broken config is refused whole; the last good state keeps serving.
    replace_file(&w.config_path, "[clerk]\nissuer = 5\n");
    assert!(runtime().block_on(w.portier.gateway.reload()).is_err());
    let r = get(
        w.portier.addr,
        "/api/books/1",
        &[("Authorization", &bearer(&token("user_a")))],
    );
    assert_eq!(r.reason(), "azp_mismatch");
}

fn portier_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portier"))
        .args(args)
        .output()
        .expect("run portier")
}

#[test]
fn explain_and_the_proxy_agree() {
    let w = World::start();
    let cfg = w.portier.dir.0.join("config.toml");
    let cfg = cfg.to_str().expect("utf8");
    let me = token("user_abc");
    let pro = token_with("user_abc", json!({"pla": "u:pro"}));
    let expired = issuer().token(&issuer().claims("user_abc", AZP, -60));
    let cases: Vec<(&str, &str, Option<&str>)> = vec![
        ("GET", "/api/books/1", Some(&me)),
        ("GET", "/api/books/1", None),
        ("GET", "/api/books/1", Some(&expired)),
        ("GET", "/api/jobs/user_abc/1", Some(&me)),
        ("GET", "/api/jobs/user_xyz/1", Some(&me)),
        ("GET", "/api/pro", Some(&me)),
        ("GET", "/api/pro", Some(&pro)),
        ("GET", "/public/x", None),
        ("DELETE", "/api/books/1", Some(&me)),
        ("GET", "/nowhere", Some(&me)),
        ("GET", "/api/books/%2e%2e/x", Some(&me)),
        ("GET", "/admin/x", Some(&me)),
    ];
    for (method, path, tok) in cases {
        let auth = tok.map(bearer);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let proxied = raw(w.portier.addr, method, path, &headers);
        let mut args = vec!["explain", "-c", cfg, "--format", "json", method, path];
        if let Some(t) = tok {
            args.extend(["--token", t]);
        }
        let out = portier_cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ex: Value = serde_json::from_slice(&out.stdout).expect("json");
        let ex_reason = ex["reason"].as_str().unwrap_or("");
        assert_eq!(
            (ex["status"].as_u64().unwrap_or(0) as u16, ex_reason),
            (proxied.status, proxied.reason().as_str()),
            "{method} {path}: explain {ex} vs proxy {}",
            proxied.body
        );
    }
    // The text form names the failing check and the headers an allowed request would carry.
    let out = portier_cli(&[
        "explain",
        "-c",
        cfg,
        "GET",
        "/api/jobs/user_abc/1",
        "--token",
        &me,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[pass] owner: {user_id} is the caller's user id"),
        "{text}"
    );
    assert!(text.contains("x-portier-user-id: user_abc"), "{text}");
    assert!(!text.contains(&me), "explain never prints the token");
}

#[test]
fn shadow_rules_pass_traffic_and_are_logged_and_counted() {
    let log = TempDir::new();
    let log_path = log.0.join("decisions.jsonl");
    let w = World::start_with(|s| {
        s.admin = Some(any_port());
        s.decision_log = log_path.clone();
        s.policies.push_str(
            r#"
[[route]]
name = "watched"
path = "/api/watched"
methods = ["GET"]
upstream = "app"
[route.shadow]
plan = ["pro"]

[[route]]
name = "trial"
path = "/api/trial/{rest..}"
methods = ["GET"]
upstream = "app"
mode = "shadow"
feature = ["beta"]
"#,
        );
    });
    let admin = w.portier.admin.expect("admin");
    let me = token("user_abc");
    let r = w.get_as("/api/watched", &me);
    assert_eq!(r.status, 200, "shadow rule does not refuse: {}", r.body);
    let r = w.get_as("/api/trial/x", &me);
    assert_eq!(r.status, 200);
    // A whole route in shadow mode lets even signed-out requests through, and says so.
    let r = w.get("/api/trial/y", &[]);
    assert_eq!(r.status, 200);
    let m = scrape(admin);
    assert_eq!(
        metric(
            &m,
            "portier_shadow_denials_total{reason=\"plan_required\",route=\"watched\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "portier_shadow_denials_total{reason=\"feature_required\",route=\"trial\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "portier_shadow_denials_total{reason=\"token_missing\",route=\"trial\"}"
        ),
        1.0
    );
    w.portier.gateway.flush_logs();
    let lines: Vec<Value> = std::fs::read_to_string(&log_path)
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let watched = lines
        .iter()
        .find(|l| l["route"] == "watched")
        .expect("logged");
    assert_eq!(watched["decision"], "shadow_deny");
    assert_eq!(watched["shadow_reason"], "plan_required");
    assert_eq!(watched["status"], 200);
    assert_eq!(watched["user_id"], "user_abc");
}

#[test]
fn metrics_health_and_readiness() {
    let w = World::start_with(|s| s.admin = Some(any_port()));
    let admin = w.portier.admin.expect("admin");
    assert!(portier::server::wait_listening(
        admin,
        Duration::from_secs(5)
    ));
    assert_eq!(get(admin, "/healthz", &[]).status, 200);
    let before = scrape(admin);
    let me = token("user_m");
    for _ in 0..3 {
        assert_eq!(w.get_as("/api/books/1", &me).status, 200);
    }
    assert_eq!(w.get("/api/books/1", &[]).status, 401);
    assert_eq!(
        get(admin, "/readyz", &[]).status,
        200,
        "keys are loaded after a verification"
    );
    let after = scrape(admin);
    let key = "portier_requests_total{decision=\"allow\",reason=\"-\",route=\"books\"}";
    assert_eq!(metric(&after, key) - metric(&before, key), 3.0);
    let key = "portier_requests_total{decision=\"deny\",reason=\"token_missing\",route=\"books\"}";
    assert_eq!(metric(&after, key) - metric(&before, key), 1.0);
    assert_eq!(metric(&after, "portier_token_cache_hits_total"), 2.0);
    assert_eq!(metric(&after, "portier_token_cache_misses_total"), 1.0);
    assert_eq!(metric(&after, "portier_jwks_fetches_total"), 1.0);
    assert!(
        metric(
            &after,
            "portier_request_duration_seconds_count{route=\"books\"}"
        ) >= 4.0
    );
    assert!(
        metric(
            &after,
            "portier_upstream_bytes_total{direction=\"received\",upstream=\"app\"}"
        ) > 0.0
    );
    assert!(metric(&after, "portier_jwks_key_age_seconds") >= 0.0);
    // Upstream failures are counted by kind.
    assert_eq!(w.get("/dead", &[]).status, 502);
    let m = scrape(admin);
    assert_eq!(
        metric(
            &m,
            "portier_upstream_errors_total{kind=\"unavailable\",upstream=\"dead\"}"
        ),
        1.0
    );
}

#[test]
fn readiness_waits_for_keys() {
    let w = World::start_with(|s| s.admin = Some(any_port()));
    let admin = w.portier.admin.expect("admin");
    w.jwks.up.store(false, Ordering::SeqCst);
    assert!(portier::server::wait_listening(
        admin,
        Duration::from_secs(5)
    ));
    assert_eq!(get(admin, "/readyz", &[]).status, 503);
}

#[test]
fn the_decision_log_holds_no_secret() {
    let log = TempDir::new();
    let log_path = log.0.join("decisions.jsonl");
    let w = World::start_with(|s| s.decision_log = log_path.clone());
    let t = token("user_secret");
    let bad = format!("{}x", &t[..t.len() - 10]);
    let cookie = format!("__session={t}; theme=dark");
    w.get_as(
        "/api/books/1?X-Amz-Signature=deadbeefcafe&X-Amz-Credential=AKIAEXAMPLE",
        &t,
    );
    w.get_as("/api/books/1", &bad);
    w.get("/api/books/1", &[("Cookie", &cookie)]);
    w.get("/api/jobs/user_other/1", &[("Cookie", &cookie)]);
    w.portier.gateway.flush_logs();
    let text = std::fs::read_to_string(&log_path).expect("log");
    assert_eq!(text.lines().count(), 4, "{text}");
    let sig = t.rsplit('.').next().expect("sig");
    for needle in [
        t.as_str(),
        bad.as_str(),
        sig,
        "eyJ",
        "deadbeefcafe",
        "AKIAEXAMPLE",
        "Signature",
        "Bearer",
        "theme=dark",
    ] {
        assert!(
            !text.contains(needle),
            "decision log contains {needle:?}:\n{text}"
        );
    }
    let last: Value = serde_json::from_str(text.lines().last().expect("line")).expect("json");
    assert_eq!(last["reason"], "not_owner");
    assert_eq!(last["user_id"], "user_secret");
}
