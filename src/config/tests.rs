//! Config checks: each section's refusals, with file, line and key.

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::*;
use crate::auth::MissingAzp;

const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:8080"]

[clerk]
issuer = "https://clerk.example.com"
authorized_parties = ["https://app.example.com"]

[clerk.jwks]
frontend_api = "https://clerk.example.com"

[upstreams.flask]
peers = ["127.0.0.1:9006"]
"#;

#[test]
fn good_config_loads_with_defaults() {
    let c = Config::parse(Path::new("/etc/portier/config.toml"), GOOD).unwrap();
    assert_eq!(c.verifier.leeway, Duration::from_secs(5));
    assert_eq!(c.verifier.missing_azp, MissingAzp::Reject);
    assert_eq!(c.verifier.algorithms, vec![Algorithm::RS256]);
    assert_eq!(c.policies_dir, Path::new("/etc/portier/policies"));
    assert_eq!(
        c.jwks_source,
        JwksSourceConfig::Url {
            url: "https://clerk.example.com/.well-known/jwks.json"
                .parse()
                .unwrap(),
            secret_key_env: None
        }
    );
    assert_eq!(c.upstreams["flask"].credentials, Credentials::Strip);
}

#[test]
fn every_error_is_reported_with_line_and_key() {
    let bad = r#"
[clerk]
issuer = "http://127.0.0.1:9999"
algorithms = ["HS256"]

[clerk.jwks]
url = "http://example.com/jwks"

[upstreams.flask]
peers = ["nope"]
"#;
    let errs = Config::parse(Path::new("c.toml"), bad).unwrap_err();
    let text = errs.to_string();
    assert!(text.contains("c.toml:3:10: clerk.issuer:"), "{text}");
    assert!(text.contains("c.toml:4:14: clerk.algorithms:"), "{text}");
    assert!(text.contains("c.toml:7:7: clerk.jwks.url:"), "{text}");
    assert!(
        text.contains("c.toml:10:9: upstreams.flask.peers:"),
        "{text}"
    );
    assert_eq!(errs.0.len(), 4, "{text}");
}

#[test]
fn cidrs() {
    let c = Cidr::parse("10.0.0.0/8").unwrap();
    assert!(c.contains("10.1.2.3".parse().unwrap()));
    assert!(!c.contains("11.0.0.1".parse().unwrap()));
    assert!(Cidr::parse("127.0.0.1")
        .unwrap()
        .contains("127.0.0.1".parse().unwrap()));
    assert!(Cidr::parse("::1/128")
        .unwrap()
        .contains("::1".parse().unwrap()));
    assert!(Cidr::parse("10.0.0.0/33").is_none());
    assert!(Cidr::parse("nope").is_none());
}

#[test]
fn unknown_keys_are_errors() {
    let bad = GOOD.replace("[upstreams.flask]", "[upstreams.flask]\ntimeout = 5");
    let errs = Config::parse(Path::new("c.toml"), &bad).unwrap_err();
    assert!(
        errs.to_string()
            .contains("c.toml:13:1: timeout: unknown field `timeout`"),
        "{errs}"
    );
}

fn errors_of(extra: &str) -> String {
    let text = format!("{GOOD}\n{extra}");
    match Config::parse(Path::new("c.toml"), &text) {
        Ok(_) => String::new(),
        Err(d) => d.to_string(),
    }
}

#[test]
fn server_section_refusals() {
    let bad = GOOD.replace(
        "listen = [\"127.0.0.1:8080\"]",
        "listen = [\"nope\"]\nthreads = 0\ntrusted_proxies = [\"10.0.0.0/33\"]",
    );
    let text = Config::parse(Path::new("c.toml"), &bad)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("server.listen: \"nope\" is not an address:port"),
        "{text}"
    );
    assert!(
        text.contains("server.threads: must be at least 1"),
        "{text}"
    );
    assert!(
        text.contains("trusted_proxies: \"10.0.0.0/33\" is not an address or CIDR range"),
        "{text}"
    );
}

#[test]
fn identity_headers_may_not_collide_after_folding() {
    let text = errors_of("[identity_headers]\nuser_id = \"x-user\"\nsession_id = \"X_User\"\n");
    assert!(
        text.contains("is used twice (after folding case, '_' and '.')"),
        "{text}"
    );
}

#[test]
fn upstream_refusals() {
    let text = errors_of(
        "[upstreams.s3]\npeers = [\"127.0.0.1:1\"]\n[upstreams.api]\npeers = []\ntls = true\n[upstreams.api.health_check]\nkind = \"http\"\npath = \"health\"\ninterval_seconds = 0\n",
    );
    assert!(text.contains("upstreams.s3: \"s3\" is reserved"), "{text}");
    assert!(
        text.contains("upstreams.api.peers: list at least one peer"),
        "{text}"
    );
    assert!(
        text.contains("upstreams.api.sni: a TLS upstream needs sni"),
        "{text}"
    );
    assert!(
        text.contains("upstreams.api.health_check.path: must start with '/'"),
        "{text}"
    );
    assert!(
        text.contains("upstreams.api.health_check.interval_seconds: must be positive"),
        "{text}"
    );
}

#[test]
fn rate_limit_webhook_and_log_refusals() {
    let text = errors_of(
        "[rate_limit]\nstore = \"redis\"\nredis_url = \"redis://user:pw@127.0.0.1/\"\n[webhooks.w]\nsecrets_env = []\ntolerance_seconds = 0\n[decision_log]\nsample_rate = 2.0\n[limits]\nmax_header_bytes = 10\n",
    );
    assert!(
        text.contains("rate_limit.redis_url: credentials do not belong in config"),
        "{text}"
    );
    assert!(
        text.contains("webhooks.w.secrets_env: name at least one env var"),
        "{text}"
    );
    assert!(
        text.contains("webhooks.w.tolerance_seconds: must be between 1 and 3600"),
        "{text}"
    );
    assert!(
        text.contains("decision_log.sample_rate: must be between 0 and 1"),
        "{text}"
    );
    assert!(
        text.contains("limits.max_header_bytes: must be at least 1024"),
        "{text}"
    );
    let text = errors_of("[rate_limit]\nstore = \"redis\"\n");
    assert!(
        text.contains("needs exactly one of redis_url_env, redis_url"),
        "{text}"
    );
}

#[test]
fn s3_refusals_and_defaults() {
    let text = errors_of(
        "[s3]\nendpoint = \"ftp://x\"\nregion = \"us-east-1\"\nbucket = \"b\"\npresign_default_seconds = 7200\npresign_max_seconds = 3600\n",
    );
    assert!(
        text.contains("s3.presign_max_seconds: 0 < presign_default_seconds"),
        "{text}"
    );
    assert!(text.contains("s3.endpoint:"), "{text}");
    let text = errors_of(
        "[s3]\nendpoint = \"https://s3.amazonaws.com\"\nregion = \"us-east-1\"\nbucket = \"b\"\n",
    );
    assert!(
        text.contains(":18:10: s3.bucket: S3 bucket name is invalid"),
        "{text}"
    );
    let ok = format!(
        "{GOOD}\n[s3]\nendpoint = \"https://s3.eu-west-1.amazonaws.com\"\nregion = \"eu-west-1\"\nbucket = \"media\"\n"
    );
    let c = Config::parse(Path::new("c.toml"), &ok).unwrap();
    let s3 = c.s3.as_ref().unwrap();
    assert_eq!(s3.presign_default, Duration::from_secs(3600));
    // Without a credentials table or env names: the AWS SDKs' default chain.
    assert_eq!(
        s3.credentials.source,
        crate::s3::CredentialSource::Default { profile: None }
    );
    assert!(
        c.upstream_names().contains(&"s3"),
        "the bucket is an upstream name"
    );
}

#[test]
fn jwks_sources_are_exactly_one() {
    let two = GOOD.replace(
        "frontend_api = \"https://clerk.example.com\"",
        "frontend_api = \"https://clerk.example.com\"\npem_env = \"CLERK_JWT_KEY\"\nsecret_key_env = \"X\"\nttl_seconds = 0",
    );
    let text = Config::parse(Path::new("c.toml"), &two)
        .unwrap_err()
        .to_string();
    assert!(text.contains("clerk.jwks: set exactly one of"), "{text}");
    assert!(
        text.contains("clerk.jwks.secret_key_env: only used with backend_api"),
        "{text}"
    );
    assert!(
        text.contains("ttl_seconds and unknown_kid_cooldown_seconds must be positive"),
        "{text}"
    );
}

#[test]
fn s3_credential_sources() {
    use crate::s3::CredentialSource;
    let s3 = |extra: &str| {
        format!(
            "{GOOD}\n[s3]\nendpoint = \"https://s3.eu-west-1.amazonaws.com\"\nregion = \"eu-west-1\"\nbucket = \"media\"\n{extra}"
        )
    };
    let parse = |t: &str| Config::parse(Path::new("/etc/portier/config.toml"), t);
    let c = parse(&s3("secret_access_key_env = \"MY_SK\"\n")).unwrap();
    match &c.s3.unwrap().credentials.source {
        CredentialSource::Static(n) => {
            assert_eq!(n.secret_access_key, "MY_SK");
            assert_eq!(n.access_key_id, "AWS_ACCESS_KEY_ID");
        }
        other => panic!("{other:?}"),
    }
    let c = parse(&s3(
        "[s3.credentials]\nsource = \"profile\"\nprofile = \"media\"\ncredentials_file = \"aws/credentials\"\nassume_role_arn = \"arn:aws:iam::1:role/r\"\n",
    ))
    .unwrap();
    let spec = c.s3.unwrap().credentials;
    assert_eq!(
        spec.source,
        CredentialSource::Profile {
            name: "media".into(),
            config_file: None,
            credentials_file: Some("/etc/portier/aws/credentials".into()),
        }
    );
    assert_eq!(spec.assume_role.unwrap().session_name, "portier");
    let text = parse(&s3(
        "access_key_id_env = \"AK\"\n[s3.credentials]\nsource = \"web_identity\"\nrefresh_before_seconds = 0\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        text.contains("s3.credentials.token_file: source = \"web_identity\" needs token_file"),
        "{text}"
    );
    assert!(text.contains("s3.credentials.role_arn"), "{text}");
    assert!(
        text.contains("env var names are the \"static\" source"),
        "{text}"
    );
    assert!(
        text.contains("refresh_before_seconds: must be positive"),
        "{text}"
    );
    let text = parse(&s3(
        "[s3.credentials]\nsource = \"static\"\nassume_role_arn = \"x\"\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        text.contains("assume a role on top of an SDK source"),
        "{text}"
    );
}

#[test]
fn assertion_refusals_name_their_key_and_the_defaults() {
    let text = errors_of(
        "[assertion]\nupstreams = [\"flask\", \"billing\"]\nttl_seconds = 3600\npublic_jwks_path = \"/a/../jwks\"\n[[assertion.keys]]\nkid = \"a b\"\npem_file = \"a.pem\"\npem_env = \"A\"\n[[assertion.keys]]\nkid = \"k2\"\npem_env = \"K2\"\n",
    );
    for want in [
        "assertion.upstreams: \"billing\" is not a configured upstream",
        "assertion.ttl_seconds: between 10 and 600",
        "assertion.public_jwks_path: a canonical path",
        "assertion.keys[0].kid: 1 to 64 letters",
        "assertion.keys[0]: exactly one of pem_file, pem_env",
        "assertion.keys: exactly one key signs (active = true); 0 are active",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
    let text = errors_of("[assertion]\nupstreams = [\"flask\"]\n");
    assert!(text.contains("assertion.keys: list at least one"), "{text}");
    let ok = format!(
        "{GOOD}\n[assertion]\nupstreams = [\"flask\"]\n[[assertion.keys]]\nkid = \"2026-12\"\npem_file = \"keys/a.pem\"\n"
    );
    let c = Config::parse(Path::new("/etc/portier/config.toml"), &ok).unwrap();
    let a = c.assertion.unwrap();
    assert_eq!(
        (a.issuer.as_str(), a.ttl, a.jwks_max_age),
        (
            "portier",
            Duration::from_secs(120),
            Duration::from_secs(300)
        )
    );
    assert_eq!(
        a.keys,
        vec![AssertionKey {
            kid: "2026-12".into(),
            source: KeySource::File("/etc/portier/keys/a.pem".into()),
            active: true,
        }],
        "a single key signs; its path is relative to the config file"
    );
}

/// `[egress]` refusals: one fixture per error, each reported on its line with its key.
#[test]
fn egress_refusals_name_their_line_and_key() {
    const S3: &str = "[s3]\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"us-east-1\"\nbucket = \"app-media\"\naddressing = \"path\"\n";
    const SERVICE: &str = "[egress.services.api]\naccess_key_id = \"PORTIERAPISERVICE01\"\nsecret_env = \"API_SECRET\"\n[[egress.services.api.allow]]\noperations = [\"read\"]\nkeys = [\"user_*/**\"]\n";
    let egress = |listen: &str, extra: &str| {
        format!("{S3}[egress]\nlisten = \"{listen}\"\n{extra}{SERVICE}")
    };
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "unknown operation",
            egress("127.0.0.1:9100", "").replace("[\"read\"]", "[\"read\", \"GetBucketAcl\"]"),
            "operations = [\"read\", \"GetBucketAcl\"]",
            "egress.services.api.allow[0].operations",
        ),
        (
            "duplicate access_key_id",
            format!(
                "{}[egress.services.other]\naccess_key_id = \"PORTIERAPISERVICE01\"\nsecret_env = \"OTHER_SECRET\"\n[[egress.services.other.allow]]\noperations = [\"read\"]\nkeys = [\"**\"]\n",
                egress("127.0.0.1:9100", "")
            ),
            // Services are checked in name order: `other` is the second user of the id.
            "access_key_id = \"PORTIERAPISERVICE01\"\nsecret_env = \"OTHER_SECRET\"",
            "egress.services.other.access_key_id",
        ),
        (
            "empty allow",
            format!(
                "{}[egress.services.idle]\naccess_key_id = \"PORTIERIDLESERVICE1\"\nsecret_env = \"IDLE_SECRET\"\n",
                egress("127.0.0.1:9100", "")
            ),
            "[egress.services.idle]",
            "egress.services.idle.allow",
        ),
        (
            "egress without [s3]",
            format!("[egress]\nlisten = \"127.0.0.1:9100\"\n{SERVICE}"),
            "[egress]",
            "egress",
        ),
        (
            "bad listen",
            egress("localhost-9100", ""),
            "listen = \"localhost-9100\"",
            "egress.listen",
        ),
        (
            "listen on server.listen's address",
            egress("127.0.0.1:8080", ""),
            "listen = \"127.0.0.1:8080\"",
            "egress.listen",
        ),
        (
            "listen on server.listen's port, all addresses",
            egress("0.0.0.0:8080", ""),
            "listen = \"0.0.0.0:8080\"",
            "egress.listen",
        ),
        (
            "invalid bucket name",
            egress("127.0.0.1:9100", "bucket = \"App_Media\"\n"),
            "bucket = \"App_Media\"",
            "egress.bucket",
        ),
    ];
    for (what, extra, line_text, key) in cases {
        let text = format!("{GOOD}\n{extra}");
        let at = text
            .find(line_text)
            .unwrap_or_else(|| panic!("{what}: fixture"));
        let line = text[..at].lines().count() + usize::from(text[..at].ends_with('\n'));
        let errs = Config::parse(Path::new("c.toml"), &text).unwrap_err();
        let found = errs.0.iter().any(|d| d.line == line && d.key == key);
        assert!(found, "{what}: want c.toml:{line} {key}, got:\n{errs}");
        assert_eq!(errs.0.len(), 1, "{what}: one error, got:\n{errs}");
    }
    // The same fixture without the mistake loads.
    let ok = format!(
        "{GOOD}\n{}",
        egress("127.0.0.1:9100", "bucket = \"media\"\n")
    );
    let c = Config::parse(Path::new("c.toml"), &ok).unwrap();
    assert_eq!(c.egress.unwrap().bucket, "media");
}
