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
