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
    let app = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/flask_app/app.py");
    let mut child = Command::new(python())
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
