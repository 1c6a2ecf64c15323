//! What `portier check` says about a valid config beyond its errors, as warnings on the line
//! they concern. Secrets live in env vars, not in the file; `portier run` refuses to start
//! when one is unset, but `check` usually runs where they are not set (CI, a laptop), so an
//! unset one is a warning here. An egress rule that another rule of the service already
//! covers is a warning too: it usually means an edit meant something narrower.

use std::path::Path;

use super::Config;
use crate::diag::{Diagnostic, Diagnostics};
use crate::s3::CredentialSource;

/// One warning per secret env var `cfg` needs that `is_set` says is not set.
pub fn unset_secrets(
    cfg: &Config,
    file: &Path,
    src: &str,
    is_set: impl Fn(&str) -> bool,
) -> Diagnostics {
    let mut needed: Vec<(String, &str)> = Vec::new();
    for (name, w) in &cfg.webhooks {
        // Only the first is required: the others are rotation slots.
        if let Some(env) = w.secrets_env.first() {
            needed.push((format!("webhooks.{name}.secrets_env"), env));
        }
    }
    if let Some(s3) = &cfg.s3 {
        if let CredentialSource::Static(names) = &s3.credentials.source {
            needed.push(("s3.access_key_id_env".into(), &names.access_key_id));
            needed.push(("s3.secret_access_key_env".into(), &names.secret_access_key));
        }
    }
    if let Some(e) = &cfg.egress {
        for (name, s) in &e.services {
            needed.push((format!("egress.services.{name}.secret_env"), &s.secret_env));
        }
    }
    if let Some(a) = &cfg.assertion {
        for (i, k) in a.keys.iter().enumerate() {
            if let crate::config::KeySource::Env(env) = &k.source {
                needed.push((format!("assertion.keys[{i}].pem_env"), env));
            }
        }
    }
    let mut out = Diagnostics::default();
    for (key, env) in needed {
        if is_set(env) {
            continue;
        }
        let message = format!("environment variable {env} is not set here; `portier run` needs it");
        out.push(
            Diagnostic::line(file, line_naming(src, env), key, message)
                .warning()
                .code("env_unset"),
        );
    }
    out
}

/// One warning per egress rule that another rule of the same service already covers: every
/// permission it grants, on every key its patterns match (`GetObject` on `user_*/images/**`
/// under `read` on `**`), see [`super::Rule::covered_by`].
pub fn redundant_egress_rules(cfg: &Config, file: &Path, src: &str) -> Diagnostics {
    let mut out = Diagnostics::default();
    let Some(e) = &cfg.egress else {
        return out;
    };
    for (name, svc) in &e.services {
        for (j, r) in svc.rules.iter().enumerate() {
            let covered_by = svc.rules.iter().enumerate().find(|(i, o)| {
                *i != j
                    && r.covered_by(o)
                    // Of two rules that cover each other only the second is reported.
                    && (!o.covered_by(r) || *i < j)
            });
            if let Some((i, _)) = covered_by {
                let header = format!("[[egress.services.{name}.allow]]");
                let line = src
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| l.trim() == header)
                    .nth(j)
                    .map_or(1, |(n, _)| n + 1);
                out.push(
                    Diagnostic::line(
                        file,
                        line,
                        format!("egress.services.{name}.allow[{j}]"),
                        format!("everything this rule allows, allow[{i}] already allows"),
                    )
                    .warning()
                    .code("redundant_rule"),
                );
            }
        }
    }
    out
}

/// The first line that names `env` as a quoted string, or 1.
/// A warning when an upstream receives Clerk's cookies (`credentials = "forward"`, as Next.js
/// needs) but this instance's cookie suffix is unknown: Clerk's SDK there reads
/// `__session_<suffix>` first, and Portier can then only refuse requests whose suffixed and
/// plain cookies differ (`session_cookie_conflict`) instead of reading the same cookie.
pub fn unknown_cookie_suffix(cfg: &Config, file: &Path, src: &str) -> Diagnostics {
    let mut out = Diagnostics::default();
    if cfg.verifier.cookie_suffix.is_some() {
        return out;
    }
    for (name, up) in &cfg.upstreams {
        if up.credentials != crate::config::Credentials::Forward {
            continue;
        }
        let header = format!("[upstreams.{name}]");
        let line = src
            .lines()
            .position(|l| l.trim() == header)
            .map_or(1, |i| i + 1);
        out.push(
            Diagnostic::line(
                file,
                line,
                format!("upstreams.{name}.credentials"),
                "Clerk's cookies go to this upstream but clerk.publishable_key is not set: \
                 set it so Portier reads the same __session_<suffix> cookie as Clerk's SDK",
            )
            .warning()
            .code("cookie_suffix_unknown"),
        );
    }
    out
}

fn line_naming(src: &str, env: &str) -> usize {
    let quoted = format!("\"{env}\"");
    src.lines()
        .position(|l| l.contains(&quoted))
        .map_or(1, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_clerk_cookies_without_a_known_suffix_is_a_warning() {
        let base = r#"
[clerk]
issuer = "https://clerk.example.com"
__PK__
[clerk.jwks]
url = "https://clerk.example.com/.well-known/jwks.json"

[upstreams.flask]
peers = ["127.0.0.1:5000"]

[upstreams.nextjs]
peers = ["127.0.0.1:3000"]
credentials = "forward"
"#;
        let file = Path::new("config.toml");
        let src = base.replace("__PK__", "");
        let cfg = Config::parse(file, &src).expect("config");
        let d = unknown_cookie_suffix(&cfg, file, &src);
        let got: Vec<(usize, &str, &str)> =
            d.0.iter()
                .map(|d| (d.line, d.key.as_str(), d.code))
                .collect();
        assert_eq!(
            got,
            vec![(11, "upstreams.nextjs.credentials", "cookie_suffix_unknown")]
        );
        assert_eq!(d.errors(), 0);
        let src = base.replace(
            "__PK__",
            "publishable_key = \"pk_live_Y2xlcmsuZXhhbXBsZS5jb20k\"",
        );
        let cfg = Config::parse(file, &src).expect("config");
        assert_eq!(unknown_cookie_suffix(&cfg, file, &src).warnings(), 0);
    }

    #[test]
    fn unset_secret_envs_are_warnings_on_the_line_that_names_them() {
        let src = r#"
[server]
listen = ["127.0.0.1:8080"]

[clerk]
issuer = "https://clerk.example.com"
authorized_parties = ["https://app.example.com"]

[clerk.jwks]
url = "https://clerk.example.com/.well-known/jwks.json"

[upstreams.flask]
peers = ["127.0.0.1:5000"]

[webhooks.workers]
secrets_env = ["WH_UNSET", "WH_ROTATION_SLOT"]

[s3]
endpoint = "http://127.0.0.1:9000"
region = "us-east-1"
bucket = "app-media"
addressing = "path"
access_key_id_env = "S3_AK"
secret_access_key_env = "S3_SK"

[egress]
listen = "127.0.0.1:9100"
bucket = "media"

[egress.services.api]
access_key_id = "PORTIERLOCALAPI0001"
secret_env = "EGRESS_API_SECRET"
[[egress.services.api.allow]]
operations = ["read"]
keys = ["user_*/**"]
"#;
        let file = Path::new("config.toml");
        let cfg = Config::parse(file, src).expect("config");
        let d = unset_secrets(&cfg, file, src, |e| e == "EGRESS_API_SECRET_SET");
        let got: Vec<(usize, &str, &str)> =
            d.0.iter()
                .map(|d| (d.line, d.key.as_str(), d.code))
                .collect();
        assert_eq!(
            got,
            vec![
                (16, "webhooks.workers.secrets_env", "env_unset"),
                (23, "s3.access_key_id_env", "env_unset"),
                (24, "s3.secret_access_key_env", "env_unset"),
                (32, "egress.services.api.secret_env", "env_unset"),
            ]
        );
        assert_eq!(d.errors(), 0);
        assert_eq!(unset_secrets(&cfg, file, src, |_| true).warnings(), 0);
        assert!(redundant_egress_rules(&cfg, file, src).is_empty());
    }

    #[test]
    fn a_rule_another_rule_covers_is_a_warning_on_its_line() {
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
            .expect("shipped config");
        let file = Path::new("config.toml");
        let cfg = Config::parse(file, &shipped).expect("config");
        assert!(
            redundant_egress_rules(&cfg, file, &shipped).is_empty(),
            "the shipped rules"
        );
        let src = format!(
            "{shipped}\n[[egress.services.flask.allow]]\noperations = [\"GetObject\"]\nkeys = [\"user_*/**\"]\n"
        );
        let cfg = Config::parse(file, &src).expect("config");
        let d = redundant_egress_rules(&cfg, file, &src);
        assert_eq!(d.0.len(), 1, "{d}");
        assert_eq!(d.0[0].key, "egress.services.flask.allow[1]");
        assert_eq!(d.0[0].code, "redundant_rule");
        assert_eq!(d.0[0].line, src.lines().count() - 2);
        // Covered by meaning, not by spelling: GetObject on user_*/images/** is within the
        // flask service's read on user_*/**; the workers' HeadObject within their GetObject.
        for (extra, key) in [
            (
                "[[egress.services.flask.allow]]\noperations = [\"GetObject\"]\nkeys = [\"user_*/images/**\"]\n",
                "egress.services.flask.allow[1]",
            ),
            (
                "[[egress.services.workers.allow]]\noperations = [\"HeadObject\"]\nkeys = [\"user_1/books/*.epub\"]\n",
                "egress.services.workers.allow[1]",
            ),
        ] {
            let src = format!("{shipped}\n{extra}");
            let cfg = Config::parse(file, &src).expect("config");
            let d = redundant_egress_rules(&cfg, file, &src);
            assert_eq!(d.0.len(), 1, "{extra}: {d}");
            assert_eq!(d.0[0].key, key);
            assert_eq!(d.0[0].line, src.lines().count() - 2);
        }
        // Not covered: a listing of everything, a write outside the patterns.
        for extra in [
            "[[egress.services.flask.allow]]\noperations = [\"ListObjectsV2\"]\nkeys = [\"**\"]\n",
            "[[egress.services.workers.allow]]\noperations = [\"PutObject\"]\nkeys = [\"user_*/audio/**\"]\n",
        ] {
            let src = format!("{shipped}\n{extra}");
            let cfg = Config::parse(file, &src).expect("config");
            assert!(redundant_egress_rules(&cfg, file, &src).is_empty(), "{extra}");
        }
    }
}
