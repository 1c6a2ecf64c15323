//! The shipped shape: `config.toml` and `policies/` as users run them, with only the addresses
//! and secrets that cannot be real in a test replaced (listen port, issuer, JWKS, upstream
//! peers, the bucket's endpoint and key env vars, the admin port). Reload, explain and the
//! proxy are exercised on this shape, bucket included.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use portier::config::Config;
use portier::s3::{self, EmbeddedStore};
use serde_json::{json, Value};

use crate::common::*;

/// The local secrets of the shipped egress services (`EGRESS_*_SECRET`), for the tests'
/// boto3 clients.
pub const SHIPPED_FLASK_SECRET: &str = "shipped-flask-local-secret-0123456789abcdef";
pub const SHIPPED_WORKERS_SECRET: &str = "shipped-workers-local-secret-0123456789abcdef";

/// The shipped secrets' env vars (webhooks, egress services), set once for the test binary.
pub fn shipped_webhook_secret(name: &str) -> &'static str {
    static SECRETS: OnceLock<(String, String)> = OnceLock::new();
    let (workers, clerk) = SECRETS.get_or_init(|| {
        let w = portier::dev::random_webhook_secret();
        let c = portier::dev::random_webhook_secret();
        std::env::set_var("WORKER_WEBHOOK_SECRET", &w);
        std::env::set_var("CLERK_WEBHOOK_SECRET", &c);
        std::env::set_var(
            "CLERK_WEBHOOK_SECRET_PREVIOUS",
            portier::dev::random_webhook_secret(),
        );
        std::env::set_var("EGRESS_FLASK_SECRET", SHIPPED_FLASK_SECRET);
        std::env::set_var("EGRESS_WORKERS_SECRET", SHIPPED_WORKERS_SECRET);
        std::env::set_var(
            "PORTIER_ASSERTION_KEY",
            portier::assertion::generate_pem().expect("assertion key"),
        );
        (w, c)
    });
    if name == "clerk" {
        clerk
    } else {
        workers
    }
}

/// The servers live as long as the world; tests read some of them.
#[allow(dead_code)]
pub struct Shipped {
    pub jwks: JwksServer,
    pub flask: Upstream,
    pub next: Upstream,
    pub store: EmbeddedStore,
    pub store_root: TempDir,
    pub portier: Portier,
    pub admin: std::net::SocketAddr,
    pub egress: std::net::SocketAddr,
    pub config_path: PathBuf,
}

fn set(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    let (last, parents) = path.split_last().expect("path");
    let mut t = table;
    for p in parents {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("table");
    }
    t.insert(last.to_string(), value);
}

fn strs(v: &[String]) -> toml::Value {
    toml::Value::Array(v.iter().cloned().map(toml::Value::String).collect())
}

/// Where a shipped world's listeners and peers are.
pub struct Addrs {
    pub listen: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub egress: std::net::SocketAddr,
    pub flask: std::net::SocketAddr,
    pub next: std::net::SocketAddr,
}

/// The shipped config.toml with test addresses; `edit` changes it further.
pub fn shipped_config(
    a: &Addrs,
    jwks: &JwksServer,
    store: &EmbeddedStore,
    reload_poll_ms: i64,
) -> toml::Table {
    let Addrs {
        listen,
        admin,
        egress,
        flask,
        next,
    } = a;
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let (ak, sk) = (
        format!("PORTIER_SHIPPED_AK_{n}"),
        format!("PORTIER_SHIPPED_SK_{n}"),
    );
    std::env::set_var(&ak, &store.access_key);
    std::env::set_var(&sk, &store.secret_key);
    shipped_webhook_secret("workers");
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"))
        .expect("shipped config.toml");
    let mut t: toml::Table = text.parse().expect("shipped config parses");
    let s = |v: &str| toml::Value::String(v.to_string());
    set(&mut t, &["server", "listen"], strs(&[listen.to_string()]));
    set(
        &mut t,
        &["server", "grace_period_seconds"],
        toml::Value::Integer(0),
    );
    set(
        &mut t,
        &["server", "graceful_shutdown_timeout_seconds"],
        toml::Value::Integer(1),
    );
    set(&mut t, &["clerk", "issuer"], s(ISSUER));
    // The shipped publishable key names the shipped issuer's host; the test issuer's own
    // (pk_live_ + base64 of "clerk.portier.test$") keeps the cookie suffix in play.
    set(
        &mut t,
        &["clerk", "publishable_key"],
        s("pk_live_Y2xlcmsucG9ydGllci50ZXN0JA=="),
    );
    set(
        &mut t,
        &["clerk", "authorized_parties"],
        strs(&[AZP.into()]),
    );
    let jwks_table = t["clerk"]["jwks"]
        .as_table()
        .cloned()
        .expect("[clerk.jwks]");
    let mut j = toml::Table::new();
    for (k, v) in jwks_table {
        if !matches!(
            k.as_str(),
            "frontend_api" | "backend_api" | "secret_key_env" | "url" | "pem_file" | "pem_env"
        ) {
            j.insert(k, v);
        }
    }
    j.insert("url".into(), s(&jwks.url()));
    j.insert("failure_backoff_seconds".into(), toml::Value::Integer(0));
    set(&mut t, &["clerk", "jwks"], toml::Value::Table(j));
    set(
        &mut t,
        &["upstreams", "flask", "peers"],
        strs(&[flask.to_string()]),
    );
    set(
        &mut t,
        &["upstreams", "nextjs", "peers"],
        strs(&[next.to_string()]),
    );
    set(
        &mut t,
        &["policies", "reload_poll_ms"],
        toml::Value::Integer(reload_poll_ms),
    );
    set(
        &mut t,
        &["s3", "endpoint"],
        s(&format!("http://{}", store.addr)),
    );
    set(&mut t, &["s3", "bucket"], s(&store.bucket));
    set(&mut t, &["s3", "addressing"], s("path"));
    set(&mut t, &["s3", "access_key_id_env"], s(&ak));
    set(&mut t, &["s3", "secret_access_key_env"], s(&sk));
    set(
        &mut t,
        &["s3", "session_token_env"],
        s("PORTIER_SHIPPED_NO_TOKEN"),
    );
    set(&mut t, &["admin", "listen"], s(&admin.to_string()));
    set(&mut t, &["egress", "listen"], s(&egress.to_string()));
    set(
        &mut t,
        &["decision_log", "path"],
        s(&shared_decision_log().display().to_string()),
    );
    t
}

impl Shipped {
    pub fn start(reload_poll_ms: i64) -> Shipped {
        Self::start_with(reload_poll_ms, None, "127.0.0.1:0".parse().expect("addr"))
    }

    /// With `flask` as the flask upstream's peer (an echo server otherwise) and the egress
    /// listener on `egress` (chosen first, so a backend can be started pointing at it).
    pub fn start_with(
        reload_poll_ms: i64,
        flask_peer: Option<std::net::SocketAddr>,
        egress: std::net::SocketAddr,
    ) -> Shipped {
        capture_logs();
        let jwks = JwksServer::start(vec![issuer().jwk()]);
        let flask = Upstream::start();
        let next = Upstream::start();
        let store_root = TempDir::new();
        let (ak, sk) = s3::generate_keys();
        let store = runtime()
            .block_on(s3::start(store_root.0.clone(), "app-media", &ak, &sk))
            .expect("embedded store");
        // Ports the system picks, learnt from the built server.
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let (listen, admin) = (any, any);
        let addrs = Addrs {
            listen,
            admin,
            egress,
            flask: flask_peer.unwrap_or(flask.addr),
            next: next.addr,
        };
        let cfg = shipped_config(&addrs, &jwks, &store, reload_poll_ms);
        let dir = TempDir::new();
        let policies = dir.0.join("policies");
        std::fs::create_dir_all(&policies).expect("mkdir");
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        for e in std::fs::read_dir(&shipped).expect("shipped policies") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "toml") {
                std::fs::copy(&p, policies.join(p.file_name().expect("name"))).expect("copy");
            }
        }
        let config_path = dir.0.join("config.toml");
        std::fs::write(&config_path, toml::to_string(&cfg).expect("toml")).expect("write");
        let loaded = Config::load(&config_path).unwrap_or_else(|d| panic!("config:\n{d}"));
        let built = portier::server::build_from_config(&loaded, &config_path).expect("build");
        let gateway = built.gateway.clone();
        let bound = built.bound.clone();
        let (listen, egress) = (bound.public[0], bound.egress.expect("egress listener"));
        let admin = bound.admin.expect("admin listener");
        let (shutdown, _thread) = portier::server::spawn(built);
        assert!(
            portier::server::wait_listening(listen, Duration::from_secs(10)),
            "portier did not start"
        );
        assert!(
            portier::server::wait_listening(egress, Duration::from_secs(10)),
            "the egress listener did not start"
        );
        Shipped {
            jwks,
            flask,
            next,
            store,
            store_root,
            portier: Portier {
                addr: listen,
                admin: Some(admin),
                egress: Some(egress),
                gateway,
                shutdown,
                dir,
            },
            admin,
            egress,
            config_path,
        }
    }

    /// Rewrites config.toml with `edit` applied (atomically, as config management does).
    pub fn edit_config(&self, edit: impl FnOnce(&mut toml::Table)) {
        let mut t: toml::Table = std::fs::read_to_string(&self.config_path)
            .expect("read")
            .parse()
            .expect("parse");
        edit(&mut t);
        replace_file(&self.config_path, &toml::to_string(&t).expect("toml"));
    }

    pub fn policy_file(&self, name: &str) -> PathBuf {
        self.portier.dir.0.join("policies").join(name)
    }

    /// Waits until the reload counter for `result` passes `before`.
    pub fn wait_reload(&self, result: &str, before: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let m = &self.portier.gateway.metrics.reloads;
        while m.with_label_values(&[result]).get() <= before {
            assert!(Instant::now() < deadline, "no {result} reload was seen");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn reloads(&self, result: &str) -> u64 {
        self.portier
            .gateway
            .metrics
            .reloads
            .with_label_values(&[result])
            .get()
    }
}

/// Replaces a file atomically (write + rename), as editors and config management do.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn presign(w: &Shipped, tok: &str, key: &str) -> Resp {
    let auth = bearer(tok);
    send_body(
        w.portier.addr,
        "POST",
        "/api/files/presigned-url",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        json!({"key": key, "method": "GET", "expires_in": 7200})
            .to_string()
            .as_bytes(),
        false,
    )
}

/// The security review's first finding: with `[s3]` configured, reloads failed on the
/// reserved `s3` upstream and the old policies and issuer kept serving. On the shipped shape a
/// policy edit, an issuer rotation and an `[s3]` change are each applied by the poller.
#[test]
fn reloads_apply_on_the_shipped_config_with_its_bucket() {
    let w = Shipped::start(20);
    let me = token("user_a");
    assert_eq!(w.portier.gateway.live().generation, 1);
    // 1. A policy edit: the books route is removed, and the change is live.
    assert_eq!(w.get_as_status("/api/books/1", &me), 200);
    let api = w.policy_file("api.toml");
    let text = std::fs::read_to_string(&api).expect("api.toml");
    let without_books = text.replace(
        "[[route]]\nname = \"books\"\npath = \"/api/books/{rest..}\"\nmethods = [\"GET\", \"POST\", \"PUT\", \"PATCH\", \"DELETE\"]\nupstream = \"flask\"\n",
        "",
    );
    assert_ne!(text, without_books, "the shipped books route was found");
    let ok = w.reloads("ok");
    replace_file(&api, &without_books);
    w.wait_reload("ok", ok);
    assert_eq!(w.reloads("error"), 0, "no reload failed");
    let r = get(
        w.portier.addr,
        "/api/books/1",
        &[("Authorization", &bearer(&me))],
    );
    assert_eq!((r.status, r.reason().as_str()), (404, "no_route"));
    // 2. An issuer rotation: tokens of the old issuer are refused from now on.
    let ok = w.reloads("ok");
    w.edit_config(|t| {
        set(
            t,
            &["clerk", "issuer"],
            toml::Value::String("https://clerk.rotated.test".into()),
        );
        // The publishable key names its instance's host: it rotates with the issuer.
        set(
            t,
            &["clerk", "publishable_key"],
            // pk_live_ + base64("clerk.rotated.test$")
            toml::Value::String("pk_live_Y2xlcmsucm90YXRlZC50ZXN0JA==".into()),
        );
    });
    w.wait_reload("ok", ok);
    let r = get(
        w.portier.addr,
        "/api/jobs/user_a/1",
        &[("Authorization", &bearer(&me))],
    );
    assert_eq!((r.status, r.reason().as_str()), (401, "issuer_mismatch"));
    let ok = w.reloads("ok");
    w.edit_config(|t| {
        set(t, &["clerk", "issuer"], toml::Value::String(ISSUER.into()));
        set(
            t,
            &["clerk", "publishable_key"],
            toml::Value::String("pk_live_Y2xlcmsucG9ydGllci50ZXN0JA==".into()),
        );
    });
    w.wait_reload("ok", ok);
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.get_as_status("/api/jobs/user_a/1", &me) != 200 {
        assert!(Instant::now() < deadline, "issuer was not restored");
        std::thread::sleep(Duration::from_millis(10));
    }
    // 3. An [s3] change is applied live: the presign cap follows the new value.
    let r = presign(&w, &me, "user_a/images/cat.png");
    assert_eq!(r.status, 200, "{}", r.body);
    // A GET URL is stable within presign_stable_seconds (300), so what is left of it is
    // between the cap minus the window and the cap.
    let left = r.json()["expires_in"].as_u64().unwrap_or(0);
    assert!((3300..=3600).contains(&left), "{left}");
    let ok = w.reloads("ok");
    w.edit_config(|t| {
        set(t, &["s3", "presign_max_seconds"], toml::Value::Integer(900));
        set(
            t,
            &["s3", "presign_default_seconds"],
            toml::Value::Integer(600),
        );
    });
    w.wait_reload("ok", ok);
    let r = presign(&w, &me, "user_a/images/cat.png");
    assert_eq!(r.status, 200, "{}", r.body);
    let left = r.json()["expires_in"].as_u64().unwrap_or(0);
    assert!(
        (600..=900).contains(&left),
        "the new [s3] cap is live: {left}"
    );
    let url = r.json()["url"].as_str().unwrap_or("").to_string();
    assert!(url.contains("X-Amz-Expires=900"), "{url}");
    assert_eq!(w.reloads("error"), 0);
    // A restart-only change is reported and counted, and the rest still applies.
    let ok = w.reloads("ok");
    w.edit_config(|t| set(t, &["server", "threads"], toml::Value::Integer(3)));
    w.wait_reload("ok", ok);
    let m = &w.portier.gateway.metrics.restart_required;
    assert_eq!(m.with_label_values(&["server"]).get(), 1);
}

/// `portier explain` and the proxy reach the same decision for every case of the shipped
/// policy tests, S3 object routes included, on the shipped config with its bucket.
#[test]
fn explain_and_the_proxy_agree_on_every_shipped_policy_case() {
    let w = Shipped::start(0);
    let cases_text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/tests/app.toml"),
    )
    .expect("policy tests");
    let cases: toml::Table = cases_text.parse().expect("cases parse");
    let cfg = w.config_path.to_str().expect("utf8").to_string();
    let mut checked = 0;
    for case in cases["case"].as_array().expect("cases") {
        let c = case.as_table().expect("case");
        let name = c["name"].as_str().unwrap_or("");
        let method = c.get("method").and_then(|m| m.as_str()).unwrap_or("GET");
        let path = c["path"].as_str().expect("path");
        let navigation = c.get("navigation").and_then(|v| v.as_bool()) == Some(true);
        let token = match (
            c.get("claims"),
            c.get("signed_out").and_then(|v| v.as_str()),
        ) {
            (Some(claims), _) => {
                let sub = claims["sub"].as_str().expect("sub").to_string();
                let mut extra = serde_json::Map::new();
                for (k, v) in claims.as_table().expect("claims") {
                    if k != "sub" {
                        extra.insert(k.clone(), json!(v.as_str().unwrap_or_default()));
                    }
                }
                Some(token_with(&sub, Value::Object(extra)))
            }
            (None, Some("token_expired")) => {
                Some(issuer().token(&issuer().claims("user_a", AZP, -60)))
            }
            _ => None,
        };
        let cookie = c.get("token_source").and_then(|v| v.as_str()) == Some("cookie");
        let mut headers: Vec<(String, String)> = Vec::new();
        if let Some(t) = &token {
            if cookie {
                headers.push(("Cookie".into(), format!("__session={t}")));
            } else {
                headers.push(("Authorization".into(), bearer(t)));
            }
        }
        if navigation {
            headers.push(("Sec-Fetch-Mode".into(), "navigate".into()));
            headers.push(("Accept".into(), "text/html".into()));
            // The echo upstream answers as Clerk's middleware would: its handshake.
            headers.push(("X-Test-Answer".into(), "handshake".into()));
        }
        // Bodies as a client would send them: an image for uploads, a signed delivery for
        // webhooks, nothing otherwise.
        let sub = c
            .get("claims")
            .and_then(|cl| cl.get("sub"))
            .and_then(|v| v.as_str())
            .unwrap_or("user_a");
        let body: Vec<u8> = if method == "PUT" {
            let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
            b.extend([0u8; 64]);
            b
        } else if path.ends_with("/presigned-url") || path == "/api/s3/delete" {
            json!({"s3_key": format!("{sub}/images/x.png")})
                .to_string()
                .into_bytes()
        } else {
            Vec::new()
        };
        if path.starts_with("/api/webhooks/") {
            let hook = if path.ends_with("/clerk") {
                "clerk"
            } else {
                "workers"
            };
            let ts = portier::auth::verify::unix_now();
            let id = format!("msg_{checked}");
            headers.push(("svix-id".into(), id.clone()));
            headers.push(("svix-timestamp".into(), ts.to_string()));
            headers.push((
                "svix-signature".into(),
                webhook_signature(shipped_webhook_secret(hook), &id, ts, &body),
            ));
        }
        let with_body = matches!(method, "PUT" | "POST" | "DELETE");
        if with_body {
            headers.push(("Content-Length".into(), body.len().to_string()));
        }
        let hs: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(k, _)| k != "Content-Length")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let proxied = if with_body {
            send_body(w.portier.addr, method, path, &hs, &body, false)
        } else {
            raw(w.portier.addr, method, path, &hs)
        };
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let data = (!body.is_empty() && method != "PUT").then(|| String::from_utf8_lossy(&body));
        let ex = explain_json(&cfg, method, path, &pairs, data.as_deref());
        if ex.to_string().contains("its answer is checked") {
            // Passed to the app signed out: what comes back is the app's handshake redirect.
            assert_eq!(ex["decision"], "allow", "{name}");
            assert_eq!(proxied.status, 307, "{name}: {}", proxied.body);
            checked += 1;
            continue;
        }
        assert_eq!(
            (
                ex["status"].as_u64().unwrap_or(0) as u16,
                ex["reason"].as_str().unwrap_or("")
            ),
            (proxied.status, proxied.reason().as_str()),
            "{name}: {method} {path}: explain {ex} vs proxy {} {}",
            proxied.status,
            proxied.body
        );
        checked += 1;
    }
    let total = cases["case"].as_array().map_or(0, Vec::len);
    assert_eq!(checked, total, "every shipped case was compared");
    // The checks around the policy, which the policy tests do not reach: the size of the
    // head, an ambiguous path, a wrong method (with `Allow`), an announced body over the
    // limit, an upgrade on a route that does not take one.
    let me = bearer(&token("user_a"));
    let big = "x".repeat(40_000);
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let extra: Vec<Case> = vec![
        (
            "GET",
            "/api/books/1",
            vec![("Authorization", &me), ("X-Big", &big)],
        ),
        (
            "GET",
            "/api/books/%2e%2e/admin",
            vec![("Authorization", &me)],
        ),
        ("TRACE", "/api/books/1", vec![("Authorization", &me)]),
        (
            "POST",
            "/api/books/1",
            vec![("Authorization", &me), ("Content-Length", "99999999")],
        ),
        (
            "GET",
            "/api/books/1",
            vec![
                ("Authorization", &me),
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
            ],
        ),
    ];
    for (method, path, headers) in extra {
        let proxied = raw(w.portier.addr, method, path, &headers);
        let ex = explain_json(&cfg, method, path, &headers, None);
        assert_eq!(
            (
                ex["status"].as_u64().unwrap_or(0) as u16,
                ex["reason"].as_str().unwrap_or("")
            ),
            (proxied.status, proxied.reason().as_str()),
            "{method} {path}: explain {ex} vs proxy {} {}",
            proxied.status,
            proxied.body
        );
        assert!(proxied.status >= 400, "{method} {path} is refused");
    }
}

/// `portier explain --format json` on `cfg` for a request, as the CLI prints it.
fn explain_json(
    cfg: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    data: Option<&str>,
) -> Value {
    let mut args: Vec<String> = ["explain", "-c", cfg, "--format", "json", method, path]
        .map(String::from)
        .to_vec();
    for (k, v) in headers {
        args.push("-H".into());
        args.push(format!("{k}: {v}"));
    }
    if let Some(d) = data {
        args.extend(["--data".to_string(), d.to_string()]);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portier"))
        .args(&args)
        .output()
        .expect("run portier explain");
    assert!(
        out.status.success(),
        "{method} {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// Finding 2: `/_next/{rest..}` also covered `/_next/data/<build>/<page>.json`, the data of a
/// signed-in or pro page. Only static assets are public on the shipped config; a data request
/// is decided by its page's route (a fetch: JSON refusals, never a redirect).
#[test]
fn page_data_is_decided_by_its_page_on_the_shipped_config() {
    let w = Shipped::start(0);
    let free = token_with("user_free", json!({"pla": "u:free"}));
    let pro = token_with("user_pro", json!({"pla": "u:pro"}));
    for (path, tok, want) in [
        (
            "/_next/data/build-1/dashboard/settings.json",
            None,
            (401, "token_missing"),
        ),
        (
            "/_next/data/build-1/images/generate.json",
            Some(&free),
            (403, "plan_required"),
        ),
        (
            "/_next/data/build-1/api/books/1.json",
            Some(&pro),
            (404, "no_route"),
        ),
    ] {
        let auth = tok.map(|t| bearer(t));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let r = get(w.portier.addr, path, &headers);
        assert_eq!((r.status, r.reason().as_str()), want, "{path}");
    }
    assert_eq!(w.next.count(), 0, "no refused page data reached Next.js");
    let r = get(
        w.portier.addr,
        "/_next/data/build-1/images/generate.json",
        &[("Authorization", &bearer(&pro))],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        w.next.last().path,
        "/_next/data/build-1/images/generate.json",
        "forwarded as it came"
    );
    for asset in [
        "/_next/static/chunks/main.js",
        "/_next/image?url=%2Fa.png&w=64",
    ] {
        assert_eq!(get(w.portier.addr, asset, &[]).status, 200, "{asset}");
    }
}

impl Shipped {
    fn get_as_status(&self, target: &str, tok: &str) -> u16 {
        get(
            self.portier.addr,
            target,
            &[("Authorization", &bearer(tok))],
        )
        .status
    }
}

/// On the shipped config (with its publishable key) Portier reads the session cookie Clerk's
/// SDK in Next.js reads, `__session_<suffix>` first, so both decide about the same user; two
/// values of it are refused before anything reaches Next.js.
#[test]
fn page_requests_read_the_same_session_cookie_as_clerk_on_the_shipped_config() {
    let w = Shipped::start(0);
    let own = token("user_own");
    let plain = token("user_plain");
    let cookie = format!("__session={plain}; __session_m3jNlIl7={own}");
    let r = get(w.portier.addr, "/dashboard", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(w.next.last().header("x-portier-user-id"), Some("user_own"));
    let seen = w.next.count();
    let cookie = format!("__session_m3jNlIl7={own}; __session_m3jNlIl7={plain}");
    let r = get(w.portier.addr, "/dashboard", &[("Cookie", &cookie)]);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (401, "session_cookie_conflict")
    );
    assert_eq!(w.next.count(), seen, "nothing reached Next.js");
}
