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

#[test]
fn check_lints_in_json_for_ci() {
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
[policies]
plans = ["pro"]
"#,
    )
    .expect("write");
    std::fs::write(
        dir.0.join("policies/l.toml"),
        r#"[[route]]
name = "files"
path = "/f/{rest..}"
methods = ["GET"]
upstream = "flask"

[[route]]
name = "root"
path = "/f"
methods = ["GET"]
upstream = "flask"

[[route]]
name = "one"
path = "/f/{a}"
methods = ["GET"]
upstream = "flask"

[[route]]
name = "more"
path = "/f/{a}/{rest..}"
methods = ["GET", "POST"]
upstream = "flask"
access = "public"

[[route]]
name = "gold"
path = "/gold"
methods = ["GET"]
upstream = "flask"
plan = ["gold"]
"#,
    )
    .expect("write");
    let out = portier()
        .args(["check", "--format", "json", "-c"])
        .arg(dir.0.join("config.toml"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "errors fail the check");
    let findings: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let list = findings.as_array().expect("array");
    let find = |code: &str| {
        list.iter()
            .find(|f| f["code"] == code)
            .unwrap_or_else(|| panic!("no {code} in {findings}"))
    };
    assert_eq!(find("shadowed_route")["line"], 2);
    assert_eq!(find("public_write")["line"], 20);
    assert_eq!(find("public_write")["severity"], "warning");
    let overlaps: Vec<u64> = list
        .iter()
        .filter(|f| f["code"] == "overlapping_routes")
        .filter_map(|f| f["line"].as_u64())
        .collect();
    assert!(
        overlaps.contains(&20),
        "public \"more\" overrides signed-in \"files\": {overlaps:?}"
    );
    assert_eq!(find("unknown_plan")["line"], 27);
    assert!(find("unknown_plan")["file"]
        .as_str()
        .unwrap_or("")
        .ends_with("policies/l.toml"));
}

#[test]
fn policy_tests_pass_and_fail_like_a_test_runner() {
    let shipped = portier()
        .args([
            "test",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
        ])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&shipped.stdout);
    assert!(shipped.status.success(), "{stdout}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    let dir = TempDir::new();
    std::fs::write(
        dir.0.join("wrong.toml"),
        "[[case]]\nname = \"books are public (wrong)\"\npath = \"/api/books/1\"\nexpect = \"allow\"\n",
    )
    .expect("write");
    let out = portier()
        .args([
            "test",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
            "--cases",
        ])
        .arg(&dir.0)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("test books are public (wrong) ... FAILED"),
        "{stdout}"
    );
    assert!(
        stdout.contains("wrong.toml:1: expected allow, got deny"),
        "{stdout}"
    );
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");
}
