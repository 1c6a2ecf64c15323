//! End to end with the real Flask app of `tests/flask_app` behind Portier. Flask comes from
//! PyPI, installed by `scripts/setup` into `.venv`; `PORTIER_PYTHON` overrides the interpreter.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

struct Flask {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Flask {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("PORTIER_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

fn start_flask() -> Flask {
    start_flask_with(&[])
}

/// The app with `env` added to an environment stripped of every AWS setting, so what it can
/// do in the bucket comes from `env` alone.
fn start_flask_with(env: &[(&str, String)]) -> Flask {
    let app = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/flask_app/app.py");
    let mut cmd = Command::new(python());
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials",
        )
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .arg(app)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    let port: u16 = line
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "the Flask test app did not start (got {line:?}); run `scripts/setup` to install Flask into .venv"
            )
        });
    Flask {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

#[test]
fn flask_sees_identity_headers_and_never_a_spoofed_one() {
    let flask = start_flask();
    let jwks = JwksServer::start(vec![issuer().jwk()]);
    let next = Upstream::start();
    let mut setup = Setup::new(&jwks, &next, &next);
    setup.app = flask.addr;
    setup.policies = r#"
[[route]]
name = "health"
path = "/api/health"
methods = ["GET"]
upstream = "app"
access = "public"

[[route]]
name = "books"
path = "/api/books/{rest..}"
methods = ["GET", "POST"]
upstream = "app"

[[route]]
name = "jobs"
path = "/api/jobs/{user_id}/{rest..}"
methods = ["GET"]
upstream = "app"
owner = "user_id"
"#
    .into();
    let portier = setup.start();
    let t = token_with("user_2abc", json!({"pla": "u:pro"}));
    let auth = bearer(&t);

    let r = get(portier.addr, "/api/health", &[]);
    assert_eq!(r.status, 200, "{}", r.body);

    let spoofs = [
        ("X-Portier-User-Id", "user_evil"),
        ("x_portier_user_id", "user_evil"),
        ("X.Portier.User.Id", "user_evil"),
        ("X_PORTIER_USER_ID", "user_evil"),
        ("X-Portier-Plans", "u:enterprise"),
        ("X-Middleware-Subrequest", "middleware"),
    ];
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("Cookie", "__session=zzz; theme=dark"),
    ];
    headers.extend(spoofs);
    let r = get(portier.addr, "/api/books/7?x=1", &headers);
    assert_eq!(r.status, 200, "{}", r.body);
    let body: Value = r.json();
    assert_eq!(body["book"], "7");
    let seen = &body["seen"];
    assert_eq!(seen["user_id"], "user_2abc");
    assert_eq!(seen["session_id"], "sess_2abc");
    assert_eq!(seen["plans"], "u:pro");
    assert_eq!(seen["environ"]["HTTP_X_PORTIER_USER_ID"], "user_2abc");
    let environ = seen["environ"].as_object().expect("environ");
    for (k, v) in environ {
        let v = v.as_str().unwrap_or("");
        assert!(!v.contains("evil") && !v.contains("enterprise"), "{k}={v}");
    }
    assert_eq!(
        seen["authorization"],
        Value::Null,
        "Flask gets no Authorization"
    );
    assert_eq!(seen["cookie"], "theme=dark", "Flask gets no Clerk cookie");
    assert_eq!(seen["middleware_subrequest"], Value::Null);

    // Ownership holds through to Flask, and refusals never reach it.
    let r = get(
        portier.addr,
        "/api/jobs/user_2abc/9",
        &[("Authorization", &auth)],
    );
    assert_eq!(
        (r.status, r.json()["owner"].clone()),
        (200, json!("user_2abc"))
    );
    let r = get(
        portier.addr,
        "/api/jobs/user_other/9",
        &[("Authorization", &auth)],
    );
    assert_eq!((r.status, r.reason().as_str()), (403, "not_owner"));
    let r = get(
        portier.addr,
        "/api/books/7",
        &[("X-Portier-User-Id", "user_2abc")],
    );
    assert_eq!((r.status, r.reason().as_str()), (401, "token_missing"));
}

/// The backend writes generated media with plain boto3 through the shipped egress listener,
/// holding only its local key pair; the user then reads it through the front door. Both
/// directions are decided by Portier and signed with its own credentials.
#[test]
fn flask_writes_through_egress_with_no_aws_keys_and_the_user_reads_it_back() {
    use crate::shipped::{Shipped, SHIPPED_FLASK_SECRET};
    let egress = free_port();
    let flask = start_flask_with(&[
        ("AWS_ENDPOINT_URL_S3", format!("http://{egress}")),
        ("AWS_ACCESS_KEY_ID", "PORTIERFLASKAPI01".into()),
        ("AWS_SECRET_ACCESS_KEY", SHIPPED_FLASK_SECRET.into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("MEDIA_BUCKET", "app-media".into()),
    ]);
    let w = Shipped::start_with(0, Some(flask.addr), egress);
    let pro = token_with("user_2abc", json!({"pla": "u:pro"}));
    let auth = bearer(&pro);
    let r = send_body(
        w.portier.addr,
        "POST",
        "/api/images/generate",
        &[("Authorization", &auth)],
        b"a cat in a hat",
        false,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let made: Value = r.json();
    let key = made["key"].as_str().expect("key").to_owned();
    assert!(key.starts_with("user_2abc/images/gen-"), "{key}");
    let on_disk = std::fs::read(w.store_root.0.join("app-media").join(&key)).expect("stored");
    assert_eq!(Some(on_disk.len() as u64), made["size"].as_u64());

    // The user downloads it through the front door; nobody else may.
    let r = get(
        w.portier.addr,
        &format!("/api/files/{key}"),
        &[("Authorization", &auth)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(
        hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &on_disk
        )),
        made["sha256"].as_str().expect("sha256"),
        "stored whole, as boto3 sent it"
    );
    assert_eq!(
        r.body,
        String::from_utf8_lossy(&on_disk),
        "the user reads those bytes"
    );
    let other = token_with("user_other", json!({"pla": "u:pro"}));
    let r = get(
        w.portier.addr,
        &format!("/api/files/{key}"),
        &[("Authorization", &bearer(&other))],
    );
    assert_eq!((r.status, r.reason().as_str()), (403, "not_owner"));

    // The backend's own rules hold: outside user_*/ its boto3 call is refused (AccessDenied)
    // and nothing is written.
    let r = send_body(
        w.portier.addr,
        "POST",
        "/api/images/generate?key=admin/x.png",
        &[("Authorization", &auth)],
        b"x",
        false,
    );
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (502, json!("AccessDenied")),
        "{}",
        r.body
    );
    assert!(!w.store_root.0.join("app-media/admin/x.png").exists());

    // Free plan: Portier refuses before Flask runs, so nothing reaches the bucket.
    let free = token_with("user_free", json!({}));
    let r = send_body(
        w.portier.addr,
        "POST",
        "/api/images/generate",
        &[("Authorization", &bearer(&free))],
        b"x",
        false,
    );
    assert_eq!((r.status, r.reason().as_str()), (403, "plan_required"));
    assert!(!w.store_root.0.join("app-media/user_free").exists());

    let m = w.portier.gateway.render_metrics();
    for line in [
        "portier_egress_requests_total{operation=\"PutObject\",result=\"allow\",service=\"flask\"} 1",
        "portier_egress_requests_total{operation=\"HeadObject\",result=\"allow\",service=\"flask\"} 1",
        "portier_egress_requests_total{operation=\"PutObject\",result=\"deny\",service=\"flask\"} 1",
    ] {
        assert!(m.contains(line), "{line}\n{m}");
    }
    assert!(
        !captured_logs().contains(SHIPPED_FLASK_SECRET),
        "a local secret was logged"
    );
}

/// The legacy backend behind `portier run`, its `require_auth` from `portier_flask`: it trusts
/// Portier's signed assertion and nothing else, and keeps trusting it through a key rotation.
#[test]
fn flask_helper_trusts_only_portiers_assertion_through_a_key_rotation() {
    use portier::assertion::{generate_pem, Binding, Signer};
    use portier::config::{AssertionConfig, AssertionKey, KeySource};
    let keys = TempDir::new();
    let pem = |name: &str| {
        let p = keys.0.join(name);
        std::fs::write(&p, generate_pem().expect("key")).expect("write key");
        p
    };
    let (old, new, rogue) = (pem("old.pem"), pem("new.pem"), pem("rogue.pem"));
    let admin = free_port();
    let jwks_url = format!("http://{admin}{}", portier::assertion::JWKS_PATH);
    let flask = start_flask_with(&[
        ("PORTIER_JWKS_URL", jwks_url.clone()),
        ("PORTIER_AUDIENCE", "app".into()),
    ]);
    let jwks = JwksServer::start(vec![issuer().jwk()]);
    let next = Upstream::start();
    let mut setup = Setup::new(&jwks, &next, &next);
    setup.app = flask.addr;
    setup.admin = Some(admin);
    setup.reload_poll_ms = 50;
    setup.policies = r#"
[[route]]
name = "me"
path = "/api/me"
methods = ["GET"]
upstream = "app"

[[route]]
name = "pro"
path = "/api/pro"
methods = ["GET"]
upstream = "app"

[[route]]
name = "next-me"
path = "/next/api/me"
methods = ["GET"]
upstream = "next"
"#
    .into();
    let assertion_section = |keys: &[(&str, &std::path::Path, bool)]| {
        let mut s = String::from(
            "[assertion]\nupstreams = [\"app\", \"next\"]\nttl_seconds = 120\njwks_max_age_seconds = 1\npublic_jwks_path = \"/.well-known/portier-jwks.json\"\n",
        );
        for (kid, path, active) in keys {
            s.push_str(&format!(
                "[[assertion.keys]]\nkid = \"{kid}\"\npem_file = \"{}\"\nactive = {active}\n",
                path.display()
            ));
        }
        s
    };
    setup.extra_config = assertion_section(&[("old", &old, true)]);
    let portier = PortierProcess::start(setup);
    assert!(portier::server::wait_listening(
        admin,
        Duration::from_secs(10)
    ));
    let r = get(admin, portier::assertion::JWKS_PATH, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("public, max-age=1"));
    // The same document on the public listener at `public_jwks_path`, signed out.
    let public = get(portier.addr, "/.well-known/portier-jwks.json", &[]);
    assert_eq!(public.status, 200);
    assert_eq!(public.header("cache-control"), Some("public, max-age=1"));
    assert_eq!(public.body, r.body);
    assert!(public.body.contains("\"kid\":\"old\""), "{}", public.body);

    let pro = token_with("user_2abc", json!({"pla": "u:pro"}));
    let free = token_with("user_free", json!({}));
    // Through Portier: the view sees the verified caller. A client's own assertion (signed by
    // a key Portier does not have) is replaced, never passed on.
    let forged = {
        let cfg = AssertionConfig {
            issuer: "portier".into(),
            upstreams: vec!["app".into()],
            ttl: Duration::from_secs(120),
            jwks_max_age: Duration::from_secs(1),
            public_jwks_path: None,
            cache_max_bytes: 1 << 20,
            keys: vec![AssertionKey {
                kid: "old".into(),
                source: KeySource::File(rogue.clone()),
                active: true,
            }],
        };
        let evil = portier::auth::Identity::from_claims(
            json!({"sub": "user_evil", "sid": "sess_evil", "exp": 4_000_000_000_i64})
                .as_object()
                .cloned()
                .expect("claims"),
        )
        .expect("identity");
        let b = Binding {
            upstream: "app",
            method: "GET",
            path: "/api/me",
        };
        Signer::new(&cfg)
            .expect("signer")
            .assertion(&evil, b, now())
            .expect("jwt")
            .0
    };
    let r = get(
        portier.addr,
        "/api/me",
        &[
            ("Authorization", &bearer(&pro)),
            ("X-Portier-Assertion", &forged),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["user"]["id"], "user_2abc");
    assert_eq!(body["user"]["session_id"], "sess_2abc");
    assert_eq!(body["user"]["plans"], json!(["u:pro"]));
    assert_eq!(body["user"]["pro"], true);
    let captured = body["assertion"].as_str().expect("assertion").to_owned();
    assert_ne!(captured, forged);
    // The helper's own plan check.
    let r = get(
        portier.addr,
        "/api/pro",
        &[("Authorization", &bearer(&free))],
    );
    assert_eq!(
        (r.status, r.reason().as_str()),
        (403, "plan_required"),
        "{}",
        r.body
    );

    // Straight to Flask: headers alone get nothing.
    let r = get(flask.addr, "/api/me", &[("X-Portier-User-Id", "user_2abc")]);
    assert_eq!((r.status, r.reason().as_str()), (401, "assertion_missing"));
    // The captured assertion works where it was made for, and nowhere else.
    let with = |a: &str| vec![("X-Portier-Assertion", a.to_owned())];
    let direct = |path: &str, a: &str| {
        let h = with(a);
        let hs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        get(flask.addr, path, &hs)
    };
    assert_eq!(direct("/api/me", &captured).status, 200);
    let r = direct("/api/pro", &captured);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (401, "assertion_request_mismatch")
    );
    // One made for another upstream.
    let r = get(
        portier.addr,
        "/next/api/me",
        &[("Authorization", &bearer(&pro))],
    );
    assert_eq!(r.status, 200);
    let for_next = next
        .last()
        .header("x-portier-assertion")
        .expect("next's")
        .to_owned();
    let r = direct("/api/me", &for_next);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (401, "assertion_audience_mismatch")
    );
    // Expired (signed with Portier's real key ten minutes ago), and signed by an unknown key.
    let sign_with = |kid: &str, file: &std::path::Path, at: i64| {
        let cfg = AssertionConfig {
            issuer: "portier".into(),
            upstreams: vec!["app".into()],
            ttl: Duration::from_secs(120),
            jwks_max_age: Duration::from_secs(1),
            public_jwks_path: None,
            cache_max_bytes: 1 << 20,
            keys: vec![AssertionKey {
                kid: kid.into(),
                source: KeySource::File(file.to_path_buf()),
                active: true,
            }],
        };
        let id = portier::auth::Identity::from_claims(
            json!({"sub": "user_2abc", "sid": "sess_2abc", "exp": 4_000_000_000_i64})
                .as_object()
                .cloned()
                .expect("claims"),
        )
        .expect("identity");
        let b = Binding {
            upstream: "app",
            method: "GET",
            path: "/api/me",
        };
        Signer::new(&cfg)
            .expect("signer")
            .assertion(&id, b, at)
            .expect("jwt")
            .0
    };
    let r = direct("/api/me", &sign_with("old", &old, now() - 600));
    assert_eq!((r.status, r.reason().as_str()), (401, "assertion_expired"));
    let r = direct("/api/me", &sign_with("rogue", &rogue, now()));
    assert_eq!(
        (r.status, r.reason().as_str()),
        (401, "assertion_unknown_key")
    );

    // Rotation as the config documents it: publish, wait, sign with the new key, retire the old.
    let rewrite = |section: String| {
        let path = portier.config_path();
        let text = std::fs::read_to_string(&path).expect("config");
        let cut = text.find("[assertion]").expect("section");
        crate::shipped::replace_file(&path, &format!("{}{section}", &text[..cut]));
    };
    let wait_jwks = |has: &str, lacks: Option<&str>| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = get(admin, portier::assertion::JWKS_PATH, &[]);
            if r.body.contains(&format!("\"kid\":\"{has}\""))
                && lacks.is_none_or(|k| !r.body.contains(&format!("\"kid\":\"{k}\"")))
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "reload not seen: {}",
                r.body
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let kid_of = |jwt: &str| {
        use base64::Engine;
        let head = jwt.split('.').next().unwrap_or("");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head)
            .unwrap_or_default();
        serde_json::from_slice::<Value>(&bytes).unwrap_or_default()["kid"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(kid_of(&captured), "old");
    // Publish the new key first and let the backend's cached keys expire (max-age 1 s)...
    rewrite(assertion_section(&[
        ("old", &old, true),
        ("new", &new, false),
    ]));
    wait_jwks("new", None);
    std::thread::sleep(Duration::from_millis(1500));
    // ...then sign with it: not one request fails on the way.
    rewrite(assertion_section(&[
        ("old", &old, false),
        ("new", &new, true),
    ]));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let by_new = loop {
        let r = get(portier.addr, "/api/me", &[("Authorization", &bearer(&pro))]);
        assert_eq!(r.status, 200, "during the rotation: {}", r.body);
        let a = r.json()["assertion"].as_str().unwrap_or("").to_owned();
        if kid_of(&a) == "new" {
            break a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new key never signed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        direct("/api/me", &captured).status,
        200,
        "the old key is still published"
    );
    // Step 2: the old key is dropped; once the backend's cached keys expire it stops verifying.
    rewrite(assertion_section(&[("new", &new, true)]));
    wait_jwks("new", Some("old"));
    std::thread::sleep(Duration::from_millis(1500));
    let r = direct("/api/me", &captured);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (401, "assertion_unknown_key")
    );
    assert_eq!(direct("/api/me", &by_new).status, 200);
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
