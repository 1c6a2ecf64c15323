//! The `portier` binary: `check` reports every error with file and line.

use std::process::Command;

use crate::common::TempDir;

fn portier() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portier"))
}

#[test]
fn check_passes_on_the_shipped_config() {
    let out = portier()
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("route(s)"));
}

#[test]
fn check_prints_every_error_with_file_and_line() {
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.0.join("policies")).expect("mkdir");
    std::fs::write(
        dir.0.join("config.toml"),
        r#"[clerk]
issuer = "https://clerk.example.com"
[clerk.jwks]
frontend_api = "https://clerk.example.com"
[upstreams.flask]
peers = ["127.0.0.1:9006"]
"#,
    )
    .expect("write");
    std::fs::write(
        dir.0.join("policies/a.toml"),
        r#"[[route]]
name = "one"
path = "/api/{id}/x"
methods = ["GET"]
upstream = "flask"

[[route]]
name = "two"
path = "/api/{other}/x"
methods = ["GET", "POST"]
upstream = "flask"

[[route]]
name = "three"
path = "/api/{rest..}/x"
methods = ["GET"]
upstream = "django"
owner = "nobody"
"#,
    )
    .expect("write");
    std::fs::write(
        dir.0.join("policies/b.toml"),
        r#"[[route]]
name = "four"
path = "/b"
methods = ["GET"]
upstream = "flask"
acess = "public"
"#,
    )
    .expect("write");
    let out = portier()
        .args(["check", "-c"])
        .arg(dir.0.join("config.toml"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let a = dir.0.join("policies/a.toml").display().to_string();
    let b = dir.0.join("policies/b.toml").display().to_string();
    for want in [
        format!("{a}:9:8: route.path: ambiguous"),
        format!("{a}:15:8: route.path: \"/api/{{rest..}}/x\": a tail wildcard"),
        format!("{a}:17:12: route.upstream: unknown upstream \"django\""),
        format!("{b}:6:1: acess: unknown field `acess`"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn check_reports_config_errors() {
    let dir = TempDir::new();
    std::fs::write(
        dir.0.join("config.toml"),
        "[clerk]\nissuer = \"https://x\"\n",
    )
    .expect("write");
    let out = portier()
        .args(["check", "-c"])
        .arg(dir.0.join("config.toml"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.toml:"), "{err}");
}
