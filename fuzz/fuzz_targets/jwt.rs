//! Token verification, two ways:
//! - a token the fuzzer made (header, claims, base64 bytes) is never accepted: the key is made
//!   in this process, so acceptance would be a forgery;
//! - claims the fuzzer wrote (JSON), signed here with the instance key, reach the claim rules:
//!   an accepted set always satisfies them (issuer, `exp` an integer in the future, `sub` a
//!   user id, `sid` present, not pending, integer `nbf`/`iat` not in the future), and the
//!   identity is the claims' own.
#![no_main]
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use portier::auth::jwks::{JwksCache, JwksSource, JwksTiming, KeySet};
use portier::auth::{MissingAzp, Verifier, VerifierSettings};
use portier::dev::DevIssuer;

const ISSUER: &str = "https://clerk.fuzz.test";

fn verifier() -> &'static (Verifier, tokio::runtime::Runtime, DevIssuer) {
    static V: OnceLock<(Verifier, tokio::runtime::Runtime, DevIssuer)> = OnceLock::new();
    V.get_or_init(|| {
        let issuer = DevIssuer::generate(ISSUER, "ins_fuzz").expect("issuer");
        // A key made in this process: the seeds are well-formed tokens of other keys, so
        // every header, claim and base64 parser runs, and nothing can carry this signature.
        let doc = serde_json::json!({ "keys": [issuer.jwk()] }).to_string();
        let keys = KeySet::from_jwks(doc.as_bytes()).expect("jwks");
        let jwks = JwksCache::new(JwksSource::Static(Arc::new(keys)), JwksTiming::default())
            .expect("cache");
        let v = Verifier::new(
            VerifierSettings {
                issuer: ISSUER.into(),
                authorized_parties: vec![],
                missing_azp: MissingAzp::Allow,
                leeway: Duration::from_secs(5),
                algorithms: vec![jsonwebtoken::Algorithm::RS256],
                max_token_bytes: 8192,
                token_cache_capacity: 0,
                cookie_suffix: None,
            },
            jwks,
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        (v, rt, issuer)
    })
}

/// The claim rules, restated independently of the verifier; `before`/`after` bracket the
/// verification (its clock reads a time between them).
fn claims_hold(c: &serde_json::Map<String, serde_json::Value>, before: i64, after: i64) -> bool {
    // A time claim, when present, is an integer.
    let time = |k: &str| -> Result<Option<i64>, ()> {
        match c.get(k) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or(()),
        }
    };
    let (Ok(exp), Ok(nbf), Ok(iat)) = (time("exp"), time("nbf"), time("iat")) else {
        return false;
    };
    let user_id = |s: &str| {
        s.strip_prefix("user_").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        })
    };
    c.get("iss").and_then(|v| v.as_str()) == Some(ISSUER)
        && exp.is_some_and(|e| e > before - 5)
        && nbf.is_none_or(|n| n <= after + 5)
        && iat.is_none_or(|i| i <= after + 5)
        && c.get("sub").and_then(|v| v.as_str()).is_some_and(user_id)
        && c.get("sid").and_then(|v| v.as_str()).is_some()
        && c.get("sts").and_then(|v| v.as_str()) != Some("pending")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (v, rt, issuer) = verifier();
    if let Ok(serde_json::Value::Object(claims)) = serde_json::from_str(text) {
        // Claims signed with the instance key: the claim rules decide.
        let token = issuer.token(&serde_json::Value::Object(claims.clone()));
        let before = portier::auth::verify::unix_now();
        let verified = rt.block_on(v.verify(&token));
        let after = portier::auth::verify::unix_now();
        if let Ok(id) = verified {
            assert!(
                claims_hold(&claims, before, after),
                "accepted claims that break a rule: {claims:?}"
            );
            assert_eq!(
                Some(id.user_id.as_str()),
                claims.get("sub").and_then(|s| s.as_str())
            );
        }
        return;
    }
    // The key is made in this process: an input the fuzzer found cannot carry its
    // signature, so any acceptance is a forgery.
    if let Ok(id) = rt.block_on(v.verify(text)) {
        panic!("accepted a token the fuzzer made: {}", id.user_id);
    }
});
