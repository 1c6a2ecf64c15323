//! Every token check refuses with its status and reason code, through the real proxy.

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portier::auth::verify::unix_now;
use serde_json::{json, Value};

use crate::common::*;

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn claims() -> Value {
    issuer().claims("user_abc", AZP, 60)
}

fn with(mut c: Value, k: &str, v: Value) -> Value {
    c[k] = v;
    c
}

fn without(mut c: Value, k: &str) -> Value {
    if let Some(o) = c.as_object_mut() {
        o.remove(k);
    }
    c
}

#[test]
fn every_bad_token_is_refused_with_its_reason() {
    let w = World::start();
    let iss = issuer();
    let now = unix_now();

    // alg none: header says none, no signature.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims())
    );
    // HS256 "signed" with the RSA public key as the HMAC secret (algorithm confusion).
    let hs_header = json!({"alg": "HS256", "typ": "JWT", "kid": iss.kid});
    let msg = format!("{}.{}", b64(&hs_header), b64(&claims()));
    let key = hmac::Key::new(hmac::HMAC_SHA256, iss.public_pem().as_bytes());
    let hs256 = format!(
        "{msg}.{}",
        URL_SAFE_NO_PAD.encode(hmac::sign(&key, msg.as_bytes()))
    );
    // Tampered payload: the signature of one payload on another (sub swapped).
    let good = iss.token(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&with(claims(), "sub", json!("user_admin"))),
        parts[2]
    );
    // Flip a byte in the middle of the signature.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("sig");
    sig[100] ^= 0x55;
    let bad_sig = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
    let other_key = issuer2().token(&claims());
    let unknown_kid = iss.sign(
        &json!({"alg": "RS256", "typ": "JWT", "kid": "ins_nope"}),
        &claims(),
    );
    let huge = iss.token(&with(claims(), "pad", json!("x".repeat(9000))));

    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("alg none", none, 401, "token_invalid_algorithm"),
        (
            "HS256 with the public key",
            hs256,
            401,
            "token_invalid_algorithm",
        ),
        ("tampered payload", tampered, 401, "token_invalid_signature"),
        (
            "flipped signature byte",
            bad_sig,
            401,
            "token_invalid_signature",
        ),
        (
            "signed by a key not in the JWKS (kid collision-free)",
            other_key,
            401,
            "token_unknown_key",
        ),
        ("unknown kid", unknown_kid, 401, "token_unknown_key"),
        ("oversized token", huge, 401, "token_too_large"),
        ("garbage", "not.a.jwt".into(), 401, "token_invalid"),
        ("two parts", "abc.def".into(), 401, "token_invalid"),
        (
            "wrong iss",
            iss.token(&with(
                claims(),
                "iss",
                json!("https://other.clerk.accounts.dev"),
            )),
            401,
            "issuer_mismatch",
        ),
        (
            "wrong azp",
            iss.token(&with(claims(), "azp", json!("https://evil.example"))),
            401,
            "azp_mismatch",
        ),
        (
            "missing azp",
            iss.token(&without(claims(), "azp")),
            401,
            "azp_mismatch",
        ),
        (
            "expired",
            iss.token(&with(claims(), "exp", json!(now - 30))),
            401,
            "token_expired",
        ),
        (
            "expired inside leeway is fine? no: 6 s past",
            iss.token(&with(claims(), "exp", json!(now - 6))),
            401,
            "token_expired",
        ),
        (
            "not yet valid",
            iss.token(&with(claims(), "nbf", json!(now + 60))),
            401,
            "token_not_yet_valid",
        ),
        (
            "iat in the future",
            iss.token(&with(claims(), "iat", json!(now + 60))),
            401,
            "token_iat_in_future",
        ),
        (
            "exp as a string",
            iss.token(&with(claims(), "exp", json!((now + 60).to_string()))),
            401,
            "token_invalid",
        ),
        (
            "exp missing",
            iss.token(&without(claims(), "exp")),
            401,
            "token_invalid",
        ),
        (
            "nbf as a string",
            iss.token(&with(claims(), "nbf", json!("0"))),
            401,
            "token_invalid",
        ),
        (
            "pending session",
            iss.token(&with(claims(), "sts", json!("pending"))),
            401,
            "session_pending",
        ),
        (
            "no sid",
            iss.token(&without(claims(), "sid")),
            401,
            "token_invalid",
        ),
        (
            "machine subject",
            iss.token(&with(claims(), "sub", json!("mch_123"))),
            401,
            "token_invalid",
        ),
        (
            "typ not JWT",
            iss.sign(
                &json!({"alg": "RS256", "typ": "at+jwt", "kid": iss.kid}),
                &claims(),
            ),
            401,
            "token_invalid",
        ),
        (
            "JWT template category",
            iss.sign(
                &json!({"alg": "RS256", "kid": iss.kid, "cat": "cl_B7d4PD222AAA"}),
                &claims(),
            ),
            401,
            "token_invalid",
        ),
    ];
    for (what, tok, status, reason) in &cases {
        let r = w.get_as("/api/books/1", tok);
        assert_eq!(
            (r.status, r.reason().as_str()),
            (*status, *reason),
            "{what}: {}",
            r.body
        );
        assert!(
            r.header("www-authenticate")
                .is_some_and(|h| h.contains(reason)),
            "{what}: WWW-Authenticate names the reason"
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(w.app.count(), 0, "no refused request reached the upstream");

    // Within the 5 s leeway an expired token still passes; a token without typ/cat too.
    let r = w.get_as(
        "/api/books/1",
        &iss.token(&with(claims(), "exp", json!(now - 2))),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = w.get_as(
        "/api/books/1",
        &iss.sign(&json!({"alg": "RS256", "kid": iss.kid}), &claims()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn token_sources_follow_clerk() {
    let w = World::start();
    let t = token("user_abc");
    // No token at all.
    let r = w.get("/api/books/1", &[]);
    assert_eq!((r.status, r.reason().as_str()), (401, "token_missing"));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portier\"")
    );
    // Cookie.
    let r = w.get(
        "/api/books/1",
        &[("Cookie", &format!("theme=dark; __session={t}"))],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // A suffixed cookie is the session only when the instance's suffix is configured
    // (security review, finding 5: it could be another app's, or tossed from a sibling
    // subdomain); see security::the_publishable_key_names_the_suffixed_session_cookie.
    let r = w.get(
        "/api/books/1",
        &[("Cookie", &format!("__session_Ab12Cd34={t}"))],
    );
    assert_eq!((r.status, r.reason().as_str()), (401, "token_missing"));
    // Wrong cookie names are not session cookies.
    for name in ["session", "__Session", "__sessionid", "_session"] {
        let r = w.get("/api/books/1", &[("Cookie", &format!("{name}={t}"))]);
        assert_eq!(
            (r.status, r.reason().as_str()),
            (401, "token_missing"),
            "{name}"
        );
    }
    // The Authorization header wins even when it is bad and the cookie is good.
    let r = w.get(
        "/api/books/1",
        &[
            ("Authorization", "Bearer nope.nope.nope"),
            ("Cookie", &format!("__session={t}")),
        ],
    );
    assert_eq!((r.status, r.reason().as_str()), (401, "token_invalid"));
    // A non-Bearer scheme is no token, and the cookie is not consulted.
    let r = w.get(
        "/api/books/1",
        &[
            ("Authorization", "Basic dXNlcjpwYXNz"),
            ("Cookie", &format!("__session={t}")),
        ],
    );
    assert_eq!((r.status, r.reason().as_str()), (401, "token_missing"));
}

#[test]
fn v1_and_v2_claims_and_has_vectors() {
    let w = World::start();
    // v2: the payload of clerk-tokens.md.
    let v2 = token_with(
        "user_abc",
        json!({"pla": "u:pro,o:business", "fea": "o:reservations,u:dashboard,uo:support-chat,o:impersonation",
               "o": {"id": "org_1", "slg": "acme", "rol": "admin", "per": "read,manage", "fpm": "2,3"}}),
    );
    for (path, status, reason) in [
        ("/api/pro", 200, ""),
        ("/api/dashboard", 200, ""),
        ("/admin/x", 200, ""),
        ("/api/reservations", 200, ""),
        ("/api/metadata-pro", 403, "claim_mismatch"),
    ] {
        let r = w.get_as(path, &v2);
        assert_eq!(
            (r.status, r.reason().as_str()),
            (status, reason),
            "v2 {path}: {}",
            r.body
        );
    }
    let seen = w.app.last();
    assert_eq!(seen.header("x-portier-org-id"), Some("org_1"));
    assert_eq!(seen.header("x-portier-org-role"), Some("org:admin"));
    assert_eq!(seen.header("x-portier-plans"), Some("u:pro,o:business"));

    // v1: flat org claims, no plans or features.
    let mut v1 = issuer().claims("user_v1", AZP, 60);
    if let Some(o) = v1.as_object_mut() {
        o.remove("v");
        o.insert("org_id".into(), json!("org_2d3Z"));
        o.insert("org_role".into(), json!("org:admin"));
        o.insert("org_slug".into(), json!("marine-projex"));
        o.insert("org_permissions".into(), json!(["org:reservations:manage"]));
        o.insert("metadata".into(), json!({"subscription": "pro"}));
    }
    let v1 = issuer().token(&v1);
    for (path, status, reason) in [
        ("/api/pro", 403, "plan_required"),
        ("/api/dashboard", 403, "feature_required"),
        ("/admin/x", 200, ""),
        ("/api/reservations", 200, ""),
        ("/api/metadata-pro", 200, ""),
    ] {
        let r = w.get_as(path, &v1);
        assert_eq!(
            (r.status, r.reason().as_str()),
            (status, reason),
            "v1 {path}: {}",
            r.body
        );
    }
    assert_eq!(w.app.last().header("x-portier-user-id"), Some("user_v1"));

    // Scoped plans: an org-only plan does not satisfy a user request for it and vice versa.
    let org_pro = token_with("user_o", json!({"pla": "o:pro"}));
    let r = w.get_as("/api/pro", &org_pro);
    assert_eq!(r.status, 200, "unscoped plan matches org scope too");
    let member = token_with("user_m", json!({"o": {"id": "org_1", "rol": "member"}}));
    let r = w.get_as("/admin/x", &member);
    assert_eq!((r.status, r.reason().as_str()), (403, "org_role_required"));
    let r = w.get_as("/api/reservations", &member);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (403, "org_permission_required")
    );
}

#[test]
fn ownership_of_path_segments() {
    let w = World::start();
    let t = token("user_abc");
    assert_eq!(w.get_as("/api/jobs/user_abc/1", &t).status, 200);
    let r = w.get_as("/api/jobs/user_xyz/1", &t);
    assert_eq!((r.status, r.reason().as_str()), (403, "not_owner"));
    // A prefix of the caller's id is another user.
    let r = w.get_as("/api/jobs/user_ab/1", &t);
    assert_eq!((r.status, r.reason().as_str()), (403, "not_owner"));
    // Percent-encoded letters decode to the same canonical id (and that form is forwarded).
    let r = w.get_as("/api/jobs/%75ser_abc/1", &t);
    assert_eq!(r.status, 200);
    assert_eq!(w.app.last().path, "/api/jobs/user_abc/1");
}

#[test]
fn verified_tokens_are_cached() {
    let w = World::start();
    let t = token("user_cache");
    for _ in 0..5 {
        assert_eq!(w.get_as("/api/books/1", &t).status, 200);
    }
    assert_eq!(
        w.portier
            .gateway
            .verifier()
            .cached(&t)
            .map(|i| i.user_id.clone()),
        Some("user_cache".into())
    );
    assert_eq!(w.jwks.fetch_count(), 1, "one JWKS fetch for all of it");
}
