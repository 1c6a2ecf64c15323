//! AWS credentials from the SDKs' sources, refreshed ahead of expiry: a container-credentials
//! endpoint on 127.0.0.1 (the ECS protocol aws-config speaks through
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI`) hands out short-lived keys with session tokens and
//! rotates them; the signature-checking store accepts only the newest set (the one before it
//! for a second more), only with its token and only until it expires.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portier::dev::{json_response, serve};
use portier::s3::{self, EmbeddedStore, KeyRing};
use serde_json::json;

use crate::common::*;

const LIFETIME: u64 = 12;

/// How long the store still accepts a pair after a newer one was handed out (a request
/// signed just before Portier switched may still be on its way).
const RETIRE_AFTER: Duration = Duration::from_secs(1);

/// One set the endpoint handed out.
#[derive(Clone)]
struct Issued {
    access_key: String,
    secret: String,
    token: String,
}

/// A container-credentials endpoint: each fetch mints a new set valid for `LIFETIME` seconds
/// and registers it with the store, which stops accepting the older sets `RETIRE_AFTER`
/// later: only the newest set works, so requests that keep succeeding show Portier switched.
struct CredentialServer {
    url: String,
    up: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
    issued: Arc<Mutex<Vec<Issued>>>,
}

/// The container source reads `AWS_CONTAINER_CREDENTIALS_FULL_URI` from the process
/// environment: the tests that set it take turns, and it is unset after each.
struct ContainerEnv(#[allow(dead_code)] MutexGuard<'static, ()>);

impl Drop for ContainerEnv {
    fn drop(&mut self) {
        std::env::remove_var("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    }
}

fn container_env(url: &str) -> ContainerEnv {
    static TURN: Mutex<()> = Mutex::new(());
    let guard = TURN.lock().unwrap_or_else(|p| p.into_inner());
    std::env::set_var("AWS_CONTAINER_CREDENTIALS_FULL_URI", url);
    ContainerEnv(guard)
}

impl CredentialServer {
    fn start(ring: KeyRing) -> CredentialServer {
        let (l, addr) = listener();
        let up = Arc::new(AtomicBool::new(true));
        let fetches = Arc::new(AtomicUsize::new(0));
        let issued = Arc::new(Mutex::new(Vec::<Issued>::new()));
        let (u, f, i) = (up.clone(), fetches.clone(), issued.clone());
        runtime().spawn(serve(
            l,
            Arc::new(move |_parts| {
                if !u.load(Ordering::SeqCst) {
                    return json_response(500, &json!({"error": "down"}));
                }
                let n = f.fetch_add(1, Ordering::SeqCst);
                let (ak, sk) = s3::generate_keys();
                let token = format!("tok{n}{}", &sk[..12]);
                let exp = SystemTime::now() + Duration::from_secs(LIFETIME);
                ring.add(&ak, &sk, Some(&token), Some(exp));
                if let Ok(mut i) = i.lock() {
                    // Every older set stops working shortly.
                    let older: Vec<String> = i.iter().map(|x| x.access_key.clone()).collect();
                    let ring = ring.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(RETIRE_AFTER);
                        for ak in older {
                            ring.remove(&ak);
                        }
                    });
                    i.push(Issued {
                        access_key: ak.clone(),
                        secret: sk.clone(),
                        token: token.clone(),
                    });
                }
                let secs = exp.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
                json_response(
                    200,
                    &json!({
                        "AccessKeyId": ak,
                        "SecretAccessKey": sk,
                        "Token": token,
                        "Expiration": portier::decision_log::rfc3339_at(secs),
                    }),
                )
            }),
        ));
        CredentialServer {
            url: format!("http://{addr}/v2/credentials/portier"),
            up,
            fetches,
            issued,
        }
    }

    fn issued(&self) -> Vec<Issued> {
        self.issued.lock().map(|i| i.clone()).unwrap_or_default()
    }
}

fn query_param(url: &str, name: &str) -> Option<String> {
    url.split_once('?')?.1.split('&').find_map(|p| {
        p.strip_prefix(name)
            .and_then(|r| r.strip_prefix('='))
            .map(str::to_string)
    })
}

fn wait_ready(w: &World) {
    let start = Instant::now();
    while let Some(why) = creds_not_ready(w) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "credentials never loaded: {why}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn presign_get(w: &World, key: &str) -> Resp {
    let auth = bearer(&token("user_cred"));
    send_body(
        w.portier.addr,
        "POST",
        "/api/files/presigned-url",
        &[("Authorization", &auth)],
        json!({"key": key, "method": "GET", "expires_in": 3600})
            .to_string()
            .as_bytes(),
        false,
    )
}

const POLICIES: &str = r#"
[[route]]
name = "files"
path = "/api/files/{key..}"
methods = ["GET", "PUT"]
upstream = "s3"
s3 = "object"
owner = "key"

[[route]]
name = "presign"
path = "/api/files/presigned-url"
methods = ["POST"]
upstream = "s3"
s3 = "presign"
presign_for = "files"
"#;

fn world(store: &EmbeddedStore, credentials: &str) -> (World, TempDir) {
    let endpoint = store.endpoint();
    let credentials = credentials.to_string();
    let w = World::start_with(|s| {
        s.policies = POLICIES.into();
        s.extra_config = format!(
            "[s3]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\nbucket = \"media\"\naddressing = \"path\"\npresign_max_seconds = 3600\n{credentials}\n"
        );
    });
    (w, TempDir::new())
}

/// Why the bucket's credentials are not usable, if they are not.
fn creds_not_ready(w: &World) -> Option<String> {
    w.portier
        .gateway
        .live()
        .s3
        .as_ref()
        .and_then(|b| b.creds.not_ready())
}

fn put(w: &World, tok: &str, key: &str, body: &[u8]) -> Resp {
    let auth = bearer(tok);
    send_body(
        w.portier.addr,
        "PUT",
        &format!("/api/files/{key}"),
        &[("Authorization", &auth)],
        body,
        false,
    )
}

#[test]
fn temporary_credentials_rotate_without_a_failed_request_and_an_outage_is_503_until_recovery() {
    let root = TempDir::new();
    let ring = KeyRing::default();
    let store = runtime()
        .block_on(s3::start_with_keys(root.0.clone(), "media", ring.clone()))
        .expect("store");
    let creds = CredentialServer::start(ring);
    // The ECS / EKS container protocol, as aws-config reads it from the environment.
    let _turn = container_env(&creds.url);
    let (w, _tmp) = world(
        &store,
        "[s3.credentials]\nsource = \"container\"\nrefresh_before_seconds = 600\n",
    );
    let me = token("user_cred");
    wait_ready(&w);
    // 1. Several rotations under continuous traffic: no request fails.
    let (mut sent, mut failed) = (0, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(3 * LIFETIME);
    let mut fresh = me.clone();
    let mut minted = Instant::now();
    while Instant::now() < deadline {
        if minted.elapsed() > Duration::from_secs(40) {
            fresh = token("user_cred");
            minted = Instant::now();
        }
        let r = put(&w, &fresh, "user_cred/docs/a.txt", b"rotating");
        sent += 1;
        if r.status != 200 {
            failed.push(format!("{} {}", r.status, r.body));
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let rotations = creds.fetches.load(Ordering::SeqCst);
    assert!(
        rotations >= 4,
        "only {rotations} fetches in {}s",
        3 * LIFETIME
    );
    // The store took only the newest set: the first one, still unexpired or not, is refused.
    let first = creds.issued().first().cloned().expect("issued");
    let old = s3::Credentials::new(first.access_key, first.secret, Some(first.token))
        .expect("credentials");
    let target = s3::S3Target::new(
        &store.endpoint(),
        "us-east-1",
        "media",
        s3::Addressing::Path,
    )
    .expect("target");
    let url = s3::presign(
        &old,
        &target,
        "GET",
        "user_cred/docs/a.txt",
        Duration::from_secs(60),
        SystemTime::now(),
    )
    .expect("presign");
    assert_eq!(fetch_url(&url).status, 403, "a retired set is refused");
    // A presigned URL never outlives the credentials that signed it.
    let auth = bearer(&token("user_cred"));
    let r = send_body(
        w.portier.addr,
        "POST",
        "/api/files/presigned-url",
        &[("Authorization", &auth)],
        json!({"key": "user_cred/docs/a.txt", "method": "GET", "expires_in": 3600})
            .to_string()
            .as_bytes(),
        false,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let left = r.json()["expires_in"].as_u64().unwrap_or(9999);
    assert!(left <= LIFETIME, "{left}");
    assert_eq!(r.json()["expires_in_capped_by"], "credentials");
    // 2. The endpoint goes down: the current set keeps serving until it expires...
    creds.up.store(false, Ordering::SeqCst);
    let down_at = Instant::now();
    let tok = token("user_cred");
    let mut first_503 = None;
    while down_at.elapsed() < Duration::from_secs(LIFETIME + 5) {
        let r = put(&w, &tok, "user_cred/docs/b.txt", b"outage");
        match r.status {
            200 => assert!(first_503.is_none(), "served again before recovery"),
            503 => {
                assert_eq!(r.reason(), "s3_credentials_unavailable");
                first_503.get_or_insert(down_at.elapsed());
                break;
            }
            other => panic!("unexpected {other} {}", r.body),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let first_503 = first_503.expect("503 once the last set expired");
    assert!(
        first_503 >= Duration::from_secs(1),
        "kept the current set: {first_503:?}"
    );
    assert!(
        creds_not_ready(&w).is_some(),
        "not ready without credentials"
    );
    // ...and requests recover on their own when it is back.
    creds.up.store(true, Ordering::SeqCst);
    let back = Instant::now();
    loop {
        let r = put(&w, &token("user_cred"), "user_cred/docs/c.txt", b"back");
        if r.status == 200 {
            break;
        }
        assert_eq!(r.reason(), "s3_credentials_unavailable");
        assert!(back.elapsed() < Duration::from_secs(20), "did not recover");
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = w.portier.gateway.render_metrics();
    assert!(
        m.contains("portier_s3_credentials_source{source=\"container\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("portier_s3_credential_refreshes_total{result=\"error\"}"),
        "{m}"
    );
    // No secret or session token reaches a log line or the metrics.
    let logs = captured_logs();
    for set in creds.issued() {
        for secret in [&set.secret, &set.token] {
            assert!(
                !logs.contains(secret.as_str()),
                "a credential reached the log"
            );
            assert!(
                !m.contains(secret.as_str()),
                "a credential reached the metrics"
            );
        }
    }
}

/// Under temporary credentials that end before the URL asked for would, a presigned GET is
/// still the same URL from one request to the next (signed at the window's start, living until
/// the credentials end), it carries the session token, and the store checks that token.
#[test]
fn presigned_urls_under_temporary_credentials_are_stable_and_carry_the_token() {
    let root = TempDir::new();
    let ring = KeyRing::default();
    let store = runtime()
        .block_on(s3::start_with_keys(root.0.clone(), "media", ring.clone()))
        .expect("store");
    let creds = CredentialServer::start(ring);
    let _turn = container_env(&creds.url);
    let (w, _tmp) = world(
        &store,
        "[s3.credentials]\nsource = \"container\"\nrefresh_before_seconds = 600\n",
    );
    wait_ready(&w);
    let r = put(&w, &token("user_cred"), "user_cred/docs/s.txt", b"stable");
    assert_eq!(r.status, 200, "{}", r.body);
    // Two presigns a second apart, by the same credentials (a rotation in between starts
    // over), give one URL.
    let window = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 300;
    let mut compared = false;
    for _ in 0..10 {
        let t0 = SystemTime::now();
        let a = presign_get(&w, "user_cred/docs/s.txt");
        std::thread::sleep(Duration::from_millis(1100));
        let b = presign_get(&w, "user_cred/docs/s.txt");
        let t1 = SystemTime::now();
        assert_eq!((a.status, b.status), (200, 200), "{} {}", a.body, b.body);
        let (ua, ub) = (
            a.json()["url"].as_str().unwrap_or("").to_string(),
            b.json()["url"].as_str().unwrap_or("").to_string(),
        );
        let same_set = query_param(&ua, "X-Amz-Credential") == query_param(&ub, "X-Amz-Credential");
        if !same_set || window(t0) != window(t1) {
            continue;
        }
        for r in [&a, &b] {
            assert_eq!(
                r.json()["expires_in_capped_by"],
                "credentials",
                "{}",
                r.body
            );
            assert!(r.json()["expires_in"].as_u64().unwrap_or(9999) <= LIFETIME);
        }
        assert_eq!(ua, ub, "stable while capped by the credentials");
        compared = true;
        // Used directly against the store, with the session token it carries.
        assert!(query_param(&ua, "X-Amz-Security-Token").is_some(), "{ua}");
        let got = fetch_url(&ua);
        assert_eq!((got.status, got.body.as_str()), (200, "stable"));
        assert_eq!(
            fetch_url(&without_param(&ua, "X-Amz-Security-Token")).status,
            403,
            "the URL without its token is refused"
        );
        break;
    }
    assert!(compared, "never two presigns under one set of credentials");
    // The store checks the token itself: the current pair signing without it is refused.
    let current = creds.issued().last().cloned().expect("issued");
    let no_token = s3::Credentials::new(current.access_key, current.secret, None).expect("creds");
    let target = s3::S3Target::new(
        &store.endpoint(),
        "us-east-1",
        "media",
        s3::Addressing::Path,
    )
    .expect("target");
    let url = s3::presign(
        &no_token,
        &target,
        "GET",
        "user_cred/docs/s.txt",
        Duration::from_secs(60),
        SystemTime::now(),
    )
    .expect("presign");
    let r = fetch_url(&url);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("<Code>InvalidToken</Code>"), "{}", r.body);
}

/// A reload that changes `[s3]` keeps the credentials already loaded when their source and
/// region did not change, loads new ones before the swap when they did, and is refused (the
/// current ones keep serving) when the new ones cannot be loaded: requests running through
/// it never get 503.
#[test]
fn reloading_s3_settings_never_leaves_requests_without_credentials() {
    let root = TempDir::new();
    let ring = KeyRing::default();
    let store = runtime()
        .block_on(s3::start_with_keys(root.0.clone(), "media", ring.clone()))
        .expect("store");
    let creds = CredentialServer::start(ring);
    let _turn = container_env(&creds.url);
    let (w, tmp) = world(
        &store,
        "presign_stable_seconds = 300\n[s3.credentials]\nsource = \"container\"\nrefresh_before_seconds = 600\n",
    );
    wait_ready(&w);
    let config = w.portier.dir.0.join("config.toml");
    let edit = |from: &str, to: &str| {
        let text = std::fs::read_to_string(&config).expect("config");
        assert!(text.contains(from), "{from}");
        std::fs::write(&config, text.replace(from, to)).expect("write");
    };
    let cache = || {
        w.portier
            .gateway
            .live()
            .s3
            .as_ref()
            .map(|b| b.creds.clone())
            .expect("s3")
    };
    // Requests all along.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let addr = w.portier.addr;
    let looper = {
        let (stop, failures, sent) = (stop.clone(), failures.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut auth = bearer(&token("user_cred"));
            let mut minted = Instant::now();
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(90) {
                if minted.elapsed() > Duration::from_secs(30) {
                    auth = bearer(&token("user_cred"));
                    minted = Instant::now();
                }
                let r = send_body(
                    addr,
                    "PUT",
                    "/api/files/user_cred/docs/loop.txt",
                    &[("Authorization", &auth)],
                    b"loop",
                    false,
                );
                sent.fetch_add(1, Ordering::SeqCst);
                if r.status != 200 {
                    if let Ok(mut f) = failures.lock() {
                        f.push(format!("{} {}", r.status, r.body));
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let settle = || std::thread::sleep(Duration::from_millis(700));
    settle();
    // 1. Another [s3] setting: the same credential cache serves on.
    let before = cache();
    edit(
        "presign_stable_seconds = 300",
        "presign_stable_seconds = 120",
    );
    runtime()
        .block_on(w.portier.gateway.reload())
        .expect("reload");
    assert_eq!(
        w.portier
            .gateway
            .live()
            .config
            .s3
            .as_ref()
            .map(|s| s.presign_stable),
        Some(Duration::from_secs(120))
    );
    assert!(
        Arc::ptr_eq(&before, &cache()),
        "the credentials carried over"
    );
    settle();
    // 2. The credential settings: a new cache, loaded before it serves.
    let fetches = creds.fetches.load(Ordering::SeqCst);
    edit(
        "refresh_before_seconds = 600",
        "refresh_before_seconds = 500",
    );
    runtime()
        .block_on(w.portier.gateway.reload())
        .expect("reload");
    let after = cache();
    assert!(
        !Arc::ptr_eq(&before, &after),
        "a new cache for new settings"
    );
    assert!(after.current().is_some(), "loaded before the swap");
    assert!(creds.fetches.load(Ordering::SeqCst) > fetches);
    settle();
    // 3. A source that cannot load: refused, the current credentials keep serving.
    let empty = tmp.0.join("empty");
    std::fs::write(&empty, "").expect("empty");
    edit(
        "source = \"container\"",
        &format!(
            "source = \"profile\"\nprofile = \"nope\"\nconfig_file = \"{0}\"\ncredentials_file = \"{0}\"",
            empty.display()
        ),
    );
    let refused = w
        .portier
        .gateway
        .metrics
        .reloads
        .with_label_values(&["error"])
        .get();
    let r = runtime().block_on(w.portier.gateway.reload());
    assert!(
        r.is_err(),
        "a reload to credentials that cannot load is refused"
    );
    assert_eq!(
        w.portier
            .gateway
            .metrics
            .reloads
            .with_label_values(&["error"])
            .get(),
        refused + 1
    );
    assert!(
        Arc::ptr_eq(&after, &cache()),
        "the current credentials serve on"
    );
    settle();
    stop.store(true, Ordering::SeqCst);
    looper.join().expect("request loop");
    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    let sent = sent.load(Ordering::SeqCst);
    assert!(sent >= 20, "only {sent} requests");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed across the reloads: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn a_named_profile_from_files_in_a_temp_dir() {
    let root = TempDir::new();
    let (ak, sk) = s3::generate_keys();
    let store = runtime()
        .block_on(s3::start(root.0.clone(), "media", &ak, &sk))
        .expect("store");
    let dir = TempDir::new();
    let cfg = dir.0.join("config");
    let cred = dir.0.join("credentials");
    std::fs::write(&cfg, "[profile media]\nregion = us-east-1\n").expect("config");
    std::fs::write(
        &cred,
        format!("[media]\naws_access_key_id = {ak}\naws_secret_access_key = {sk}\n"),
    )
    .expect("credentials");
    let (w, _tmp) = world(
        &store,
        &format!(
            "[s3.credentials]\nsource = \"profile\"\nprofile = \"media\"\nconfig_file = \"{}\"\ncredentials_file = \"{}\"\n",
            cfg.display(),
            cred.display()
        ),
    );
    let start = Instant::now();
    while let Some(why) = creds_not_ready(&w) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "profile never loaded: {why}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = put(&w, &token("user_prof"), "user_prof/docs/a.txt", b"profile");
    assert_eq!(r.status, 200, "{}", r.body);
    // A profile that does not exist: not ready, and S3 requests are 503, not 502.
    let missing = dir.0.join("empty");
    std::fs::write(&missing, "").expect("empty");
    let (w2, _t2) = world(
        &store,
        &format!(
            "[s3.credentials]\nsource = \"profile\"\nprofile = \"nope\"\ncredentials_file = \"{}\"\nconfig_file = \"{}\"\n",
            missing.display(),
            missing.display()
        ),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let why = creds_not_ready(&w2).expect("not ready");
    assert!(why.contains("profile source"), "{why}");
    let r = put(&w2, &token("user_prof"), "user_prof/docs/b.txt", b"x");
    assert_eq!(
        (r.status, r.reason().as_str()),
        (503, "s3_credentials_unavailable")
    );
}

#[test]
fn the_standard_env_vars_through_portier_run() {
    let root = TempDir::new();
    let (ak, sk) = s3::generate_keys();
    let store = runtime()
        .block_on(s3::start(root.0.clone(), "media", &ak, &sk))
        .expect("store");
    let jwks = JwksServer::start(vec![issuer().jwk()]);
    let up = Upstream::start();
    let mut setup = Setup::new(&jwks, &up, &up);
    setup.policies = POLICIES.into();
    setup.extra_config = format!(
        "[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nbucket = \"media\"\naddressing = \"path\"\n[s3.credentials]\nsource = \"env\"\n",
        store.endpoint()
    );
    let (dir, cfg) = setup.write();
    // The standard names, set for this replica only.
    let (mut child, bound) = spawn_portier_run(
        &cfg,
        &[],
        &[
            ("AWS_ACCESS_KEY_ID", &ak),
            ("AWS_SECRET_ACCESS_KEY", &sk),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    let addr = bound.public[0];
    assert!(portier::server::wait_listening(
        addr,
        Duration::from_secs(15)
    ));
    let auth = bearer(&token("user_env"));
    let r = send_body(
        addr,
        "PUT",
        "/api/files/user_env/docs/a.txt",
        &[("Authorization", &auth)],
        b"from env",
        false,
    );
    let _ = child.kill();
    let _ = child.wait();
    drop(dir);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        std::fs::read(root.0.join("media/user_env/docs/a.txt")).expect("stored"),
        b"from env"
    );
}
