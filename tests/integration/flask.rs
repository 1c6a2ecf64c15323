//! End to end with the real Flask app of `tests/flask_app` behind Portier. Flask comes from
//! PyPI, installed by `scripts/setup` into `.venv`; `PORTIER_PYTHON` overrides the interpreter.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

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
