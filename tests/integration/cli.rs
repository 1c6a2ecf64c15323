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
fn check_warns_about_unset_secret_env_vars_on_their_line() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    let run = |set: bool, deny: bool| {
        let mut cmd = portier();
        cmd.args(["check", "--format", "json", "-c", config]);
        if deny {
            cmd.arg("--deny-warnings");
        }
        for name in [
            "WORKER_WEBHOOK_SECRET",
            "CLERK_WEBHOOK_SECRET",
            "EGRESS_FLASK_SECRET",
            "EGRESS_WORKERS_SECRET",
            "PORTIER_ASSERTION_KEY",
        ] {
            if set {
                cmd.env(name, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
            } else {
                cmd.env_remove(name);
            }
        }
        let out = cmd.output().expect("run");
        let findings: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let unset: Vec<(String, u64)> = findings
            .as_array()
            .expect("array")
            .iter()
            .filter(|f| f["code"] == "env_unset")
            .map(|f| {
                assert_eq!(f["severity"], "warning");
                (
                    f["key"].as_str().unwrap_or("").to_owned(),
                    f["line"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        (out.status.code(), unset)
    };
    let src = std::fs::read_to_string(config).expect("config");
    let line_of =
        |needle: &str| src.lines().position(|l| l.contains(needle)).expect("named") as u64 + 1;
    let (code, unset) = run(false, false);
    assert_eq!(code, Some(0), "a warning does not fail the check");
    assert_eq!(
        unset,
        vec![
            (
                "webhooks.workers.secrets_env".to_owned(),
                line_of("\"WORKER_WEBHOOK_SECRET\"")
            ),
            (
                "webhooks.clerk.secrets_env".to_owned(),
                line_of("\"CLERK_WEBHOOK_SECRET\"")
            ),
            (
                "egress.services.flask.secret_env".to_owned(),
                line_of("\"EGRESS_FLASK_SECRET\"")
            ),
            (
                "egress.services.workers.secret_env".to_owned(),
                line_of("\"EGRESS_WORKERS_SECRET\"")
            ),
            (
                "assertion.keys[0].pem_env".to_owned(),
                line_of("\"PORTIER_ASSERTION_KEY\"")
            ),
        ],
        "the rotation slot CLERK_WEBHOOK_SECRET_PREVIOUS is optional"
    );
    assert_eq!(run(false, true).0, Some(1), "--deny-warnings");
    assert_eq!(run(true, true), (Some(0), vec![]));
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
    let mut child = portier()
        .args(["dev", "--listen", "127.0.0.1:0", "--egress", "127.0.0.1:0"])
        .arg("--policies")
        .arg(&dir.0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start portier dev");
    let bound = crate::common::listening(&mut child, std::time::Duration::from_secs(30))
        .expect("portier dev printed its addresses");
    let listen = bound.public[0];
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

/// What `portier dev` prints for a boto3 backend works as printed: the egress listener takes
/// the local key pair and writes to the embedded store.
#[test]
fn dev_prints_a_boto3_command_that_works_through_its_egress() {
    use std::io::BufRead;
    let mut child = portier()
        .args(["dev", "--listen", "127.0.0.1:0", "--egress", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start portier dev");
    let stdout = child.stdout.take().expect("stdout");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(child);
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut command = Vec::new();
    let mut in_block = false;
    let mut egress = None;
    for line in lines.by_ref() {
        let line = line.expect("line");
        if let Some(rest) = line.strip_prefix("portier listening ") {
            egress = crate::common::parse_bound(rest).egress;
        } else if line.contains("through the egress listener") {
            in_block = true;
        } else if in_block && line.trim().is_empty() {
            break;
        } else if in_block {
            command.push(line);
        }
    }
    assert!(!command.is_empty(), "no boto3 command was printed");
    let egress = egress.expect("portier dev printed its addresses first");
    let python = std::env::var("PORTIER_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_string());
    let script = command
        .join("\n")
        .replace(" python3 -c", &format!(" {python} -c"));
    assert!(
        script.contains(&format!("AWS_ENDPOINT_URL_S3=http://{egress}")),
        "{script}"
    );
    assert!(portier::server::wait_listening(
        egress,
        std::time::Duration::from_secs(20)
    ));
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .output()
        .expect("bash");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.trim().parse::<u32>().is_ok_and(|n| n >= 1),
        "{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `portier explain --egress SERVICE` decides with the shipped egress rules.
#[test]
fn explain_egress_uses_the_shipped_service_rules() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    let run = |args: &[&str]| {
        let out = portier()
            .args(["explain", "-c", config, "--format", "json", "--egress"])
            .args(args)
            .output()
            .expect("run");
        (
            out.status.code(),
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default(),
        )
    };
    let (code, r) = run(&["workers", "PUT", "/app-media/user_2abc/videos/v.mp4"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        (r["operation"].as_str(), r["decision"].as_str()),
        (Some("PutObject"), Some("allow"))
    );
    let (_, r) = run(&["workers", "GET", "/app-media?list-type=2&prefix=user_2abc/"]);
    assert_eq!(
        (r["decision"].as_str(), r["error"].as_str()),
        (Some("deny"), Some("AccessDenied"))
    );
    let (_, r) = run(&[
        "flask",
        "PUT",
        "/app-media/user_2abc/images/copy.png",
        "-H",
        "x-amz-copy-source: app-media/user_9/images/a.png",
    ]);
    assert_eq!(
        (
            r["operation"].as_str(),
            r["copy_source"].as_str(),
            r["decision"].as_str()
        ),
        (
            Some("CopyObject"),
            Some("user_9/images/a.png"),
            Some("allow")
        )
    );
    let (code, _) = run(&["nobody", "GET", "/app-media/k"]);
    assert_eq!(code, Some(1), "an unknown service is an error");
}
