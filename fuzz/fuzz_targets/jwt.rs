//! Token verification: starting from a token signed by the instance key, no mutation is
//! accepted as anyone else, and nothing panics on the way (headers, claims, base64).
#![no_main]
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use portier::auth::jwks::{JwksCache, JwksSource, JwksTiming, KeySet};
use portier::auth::{MissingAzp, Verifier, VerifierSettings};
use portier::dev::DevIssuer;

const ISSUER: &str = "https://clerk.fuzz.test";

fn verifier() -> &'static (Verifier, tokio::runtime::Runtime) {
    static V: OnceLock<(Verifier, tokio::runtime::Runtime)> = OnceLock::new();
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
        (v, rt)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let (v, rt) = verifier();
    // The key is made in this process: an input the fuzzer found cannot carry its
    // signature, so any acceptance is a forgery.
    if let Ok(id) = rt.block_on(v.verify(token)) {
        panic!("accepted a token the fuzzer made: {}", id.user_id);
    }
});
