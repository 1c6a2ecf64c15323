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

/// One run of `check` reports every problem of a policy file: an unknown key no longer hides
/// the route's other errors, and a duplicate name or an undeclared plan is found on a route
/// that has errors of its own.
#[test]
fn check_reports_every_error_of_a_file_in_one_run() {
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.0.join("policies")).expect("mkdir");
    std::fs::write(
        dir.0.join("config.toml"),
        "[clerk]\nissuer = \"https://clerk.example.com\"\n[clerk.jwks]\nfrontend_api = \"https://clerk.example.com\"\n[upstreams.flask]\npeers = [\"127.0.0.1:9006\"]\n[policies]\nplans = [\"pro\"]\n",
    )
    .expect("write");
    std::fs::write(
        dir.0.join("policies/p.toml"),
        r#"[[route]]
name = "books"
path = "/books"
methods = ["GET"]
upstream = "flask"

[[route]]
name = "books"
path = "/books/{id}"
methods = ["GET", "FETCH"]
upstream = "django"
plan = ["gold"]
colour = "blue"
"#,
    )
    .expect("write");
    let out = portier()
        .args(["check", "--format", "json", "-c"])
        .arg(dir.0.join("config.toml"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let findings: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let list = findings.as_array().expect("array");
    let has = |code: &str, key: &str, line: u64| {
        list.iter()
            .any(|f| f["code"] == code && f["key"] == key && f["line"] == line)
    };
    assert!(has("invalid", "colour", 13), "unknown key: {findings}");
    assert!(
        has("invalid", "route.methods", 10),
        "unknown method: {findings}"
    );
    assert!(has("unknown_upstream", "route.upstream", 11), "{findings}");
    assert!(has("unknown_plan", "route.plan", 8), "{findings}");
    assert!(has("duplicate_name", "route.name", 8), "{findings}");
    assert_eq!(list.len(), 5, "exactly these five: {findings}");
}

/// `portier dev --policies DIR` reloads the directory on change, as `portier run` does.
#[test]
fn dev_applies_a_policy_edit_without_a_restart() {
    let dir = TempDir::new();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for e in std::fs::read_dir(&shipped).expect("policies") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "toml") {
            std::fs::copy(&p, dir.0.join(p.file_name().expect("name"))).expect("copy");
        }
    }
    let listen = crate::common::free_port();
    let mut child = portier()
        .args(["dev", "--listen", &listen.to_string(), "--policies"])
        .arg(&dir.0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start portier dev");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(&mut child);
    assert!(
        portier::server::wait_listening(listen, std::time::Duration::from_secs(20)),
        "portier dev did not start"
    );
    assert_eq!(crate::common::get(listen, "/api/health", &[]).status, 200);
    let api = dir.0.join("api.toml");
    let text = std::fs::read_to_string(&api).expect("api.toml");
    let edited = text.replace(
        "name = \"api-health\"\npath = \"/api/health\"",
        "name = \"api-health\"\npath = \"/api/healthz\"",
    );
    assert_ne!(text, edited);
    let tmp = dir.0.join("api.toml.tmp");
    std::fs::write(&tmp, edited).expect("write");
    std::fs::rename(&tmp, &api).expect("rename");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let old = crate::common::get(listen, "/api/health", &[]);
        if old.status == 404 && old.reason() == "no_route" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edit was not applied: {} {}",
            old.status,
            old.body
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(crate::common::get(listen, "/api/healthz", &[]).status, 200);
}
