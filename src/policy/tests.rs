use std::path::PathBuf;

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::auth::{Identity, TokenSource};

fn set(src: &str) -> PolicySet {
    PolicySet::compile(
        &[(PathBuf::from("p.toml"), src.to_string())],
        &["app", "web"],
    )
    .unwrap_or_else(|d| panic!("{d}"))
}

fn errors(src: &str) -> String {
    PolicySet::compile(&[(PathBuf::from("p.toml"), src.to_string())], &["app"])
        .expect_err("should fail")
        .to_string()
}

fn id(extra: serde_json::Value) -> Arc<Identity> {
    let mut c = json!({"exp": 4_000_000_000i64, "sid": "sess_1", "sub": "user_a", "v": 2});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    Arc::new(Identity::from_claims(c.as_object().unwrap().clone()).unwrap())
}

const GET: RequestFacts<'static> = RequestFacts {
    method: "GET",
    navigation: false,
    handshake: None,
};

fn run(s: &PolicySet, path: &str, req: &RequestFacts<'_>, a: &Authn) -> Decision {
    decide(s, path, req, a).1
}

const ROUTES: &str = r#"
[[route]]
name = "pub"
path = "/p/{rest..}"
methods = ["GET"]
upstream = "app"
access = "public"

[[route]]
name = "files"
path = "/files/{key..}"
methods = ["GET", "PUT"]
upstream = "app"
owner = "key"

[[route]]
name = "pro-or-biz"
path = "/gen"
methods = ["*"]
upstream = "app"
plan = ["pro", "business"]

[[route]]
name = "page"
path = "/page"
methods = ["GET"]
upstream = "web"
page = true
feature = ["dash"]
"#;

#[test]
fn public_routes_allow_anyone_and_keep_a_valid_identity() {
    let s = set(ROUTES);
    let out = Authn::SignedOut {
        reason: Reason::TokenExpired,
        source: Some(TokenSource::Header),
    };
    assert_eq!(
        run(&s, "/p/x", &GET, &out),
        Decision::Allow {
            identity: None,
            signed_out_page: None,
            shadow: None
        }
    );
    let me = id(json!({}));
    assert_eq!(
        run(&s, "/p/x", &GET, &Authn::SignedIn(me.clone())),
        Decision::Allow {
            identity: Some(me),
            signed_out_page: None,
            shadow: None
        }
    );
}

#[test]
fn signed_out_callers_get_the_authentication_reason() {
    let s = set(ROUTES);
    for r in [
        Reason::TokenMissing,
        Reason::TokenExpired,
        Reason::JwksUnavailable,
    ] {
        let a = Authn::SignedOut {
            reason: r,
            source: None,
        };
        assert_eq!(run(&s, "/gen", &GET, &a), Decision::Deny(r));
    }
}

#[test]
fn tail_ownership_is_a_whole_segment_prefix() {
    let s = set(ROUTES);
    let me = Authn::SignedIn(id(json!({})));
    assert!(matches!(
        run(&s, "/files/user_a/images/x.png", &GET, &me),
        Decision::Allow { .. }
    ));
    assert!(matches!(
        run(&s, "/files/user_a", &GET, &me),
        Decision::Allow { .. }
    ));
    for p in [
        "/files/user_ab/x",
        "/files/user_b/x",
        "/files/x/user_a/y",
        "/files",
    ] {
        assert_eq!(
            run(&s, p, &GET, &me),
            Decision::Deny(Reason::NotOwner),
            "{p}"
        );
    }
}

#[test]
fn plans_are_alternatives() {
    let s = set(ROUTES);
    let post = RequestFacts {
        method: "POST",
        navigation: false,
        handshake: None,
    };
    assert!(matches!(
        run(
            &s,
            "/gen",
            &post,
            &Authn::SignedIn(id(json!({"pla": "o:business"})))
        ),
        Decision::Allow { .. }
    ));
    assert!(matches!(
        run(
            &s,
            "/gen",
            &post,
            &Authn::SignedIn(id(json!({"pla": "u:pro"})))
        ),
        Decision::Allow { .. }
    ));
    assert_eq!(
        run(
            &s,
            "/gen",
            &post,
            &Authn::SignedIn(id(json!({"pla": "u:free"})))
        ),
        Decision::Deny(Reason::PlanRequired)
    );
}

#[test]
fn page_pass_through_needs_a_handshake_on_a_page_route() {
    let s = set(ROUTES);
    let nav = RequestFacts {
        method: "GET",
        navigation: true,
        handshake: Some(super::Handshake::Expired),
    };
    let expired_cookie = Authn::SignedOut {
        reason: Reason::TokenExpired,
        source: Some(TokenSource::Cookie),
    };
    assert_eq!(
        run(&s, "/page", &nav, &expired_cookie),
        Decision::Allow {
            identity: None,
            signed_out_page: Some(Reason::TokenExpired),
            shadow: None
        }
    );
    assert_eq!(
        run(&s, "/page", &GET, &expired_cookie),
        Decision::Deny(Reason::TokenExpired)
    );
    let header = Authn::SignedOut {
        reason: Reason::TokenExpired,
        source: Some(TokenSource::Header),
    };
    let no_handshake = RequestFacts {
        handshake: None,
        ..nav
    };
    assert_eq!(
        run(&s, "/page", &no_handshake, &header),
        Decision::Deny(Reason::TokenExpired)
    );
    assert_eq!(
        run(&s, "/gen", &nav, &expired_cookie),
        Decision::Deny(Reason::TokenExpired),
        "only page routes pass"
    );
    let invalid = Authn::SignedOut {
        reason: Reason::TokenInvalidSignature,
        source: Some(TokenSource::Cookie),
    };
    assert_eq!(
        run(&s, "/page", &no_handshake, &invalid),
        Decision::Deny(Reason::TokenInvalidSignature)
    );
    // Signed in, the page's requirements apply as usual...
    let signed_in = Authn::SignedIn(id(json!({})));
    assert_eq!(
        run(&s, "/page", &no_handshake, &signed_in),
        Decision::Deny(Reason::FeatureRequired)
    );
    // ...unless Clerk's middleware would refresh the session first (a valid token older than
    // `__client_uat`): the app answers, checked against the refusal it would have had.
    let stale = RequestFacts {
        handshake: Some(super::Handshake::IatBeforeClientUat),
        ..nav
    };
    assert_eq!(
        run(&s, "/page", &stale, &signed_in),
        Decision::Allow {
            identity: None,
            signed_out_page: Some(Reason::FeatureRequired),
            shadow: None
        }
    );
    assert_eq!(
        run(&s, "/gen", &stale, &signed_in),
        Decision::Deny(Reason::PlanRequired),
        "only page routes pass"
    );
    // A session that holds the policy is forwarded as usual (Clerk's middleware handshakes).
    assert!(matches!(
        run(
            &s,
            "/page",
            &stale,
            &Authn::SignedIn(id(json!({"fea": "u:dash"})))
        ),
        Decision::Allow {
            identity: Some(_),
            signed_out_page: None,
            ..
        }
    ));
}

#[test]
fn lookup_reasons() {
    let s = set(ROUTES);
    let me = Authn::SignedIn(id(json!({})));
    assert_eq!(run(&s, "/nope", &GET, &me), Decision::Deny(Reason::NoRoute));
    let del = RequestFacts {
        method: "DELETE",
        navigation: false,
        handshake: None,
    };
    assert_eq!(
        run(&s, "/files/user_a/x", &del, &me),
        Decision::Deny(Reason::MethodNotAllowed)
    );
    assert_eq!(s.allowed_methods("/files/user_a/x"), ["GET", "PUT"]);
    let trace = RequestFacts {
        method: "TRACE",
        navigation: false,
        handshake: None,
    };
    assert_eq!(
        run(&s, "/gen", &trace, &me),
        Decision::Deny(Reason::MethodNotAllowed)
    );
}

#[test]
fn compile_errors_are_all_reported_with_lines() {
    let text = errors(
        r#"
[[route]]
name = "a"
path = "/x/{id}"
methods = ["GET", "get"]
upstream = "nope"
owner = "uid"

[[route]]
name = "a"
path = "/y/{rest..}/z"
methods = []
upstream = "app"
access = "public"
plan = ["pro"]
"#,
    );
    for want in [
        "p.toml:5:11: route.methods: unknown method \"get\"",
        "p.toml:6:12: route.upstream: unknown upstream \"nope\"",
        "p.toml:7:9: route.owner: \"uid\" is not a parameter",
        "p.toml:11:8: route.path:",
        "p.toml:12:11: route.methods: list at least one method",
        "p.toml:15:8: route.access: a public route cannot have requirements",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn ambiguity_and_duplicates() {
    let text = errors(
        r#"
[[route]]
name = "a"
path = "/x/{id}"
methods = ["GET"]
upstream = "app"

[[route]]
name = "b"
path = "/x/{other}"
methods = ["GET", "POST"]
upstream = "app"

[[route]]
name = "a"
path = "/z"
methods = ["GET"]
upstream = "app"
"#,
    );
    assert!(
        text.contains("p.toml:10:8: route.path: ambiguous"),
        "{text}"
    );
    assert!(
        text.contains("p.toml:15:8: route.name: duplicate route name \"a\""),
        "{text}"
    );
    // Disjoint methods on one shape are fine.
    set(r#"
[[route]]
name = "read"
path = "/x/{id}"
methods = ["GET"]
upstream = "app"
[[route]]
name = "write"
path = "/x/{id}"
methods = ["POST"]
upstream = "app"
"#);
}

#[test]
fn patterns() {
    assert!(parse_pattern("/a/{b}/{c..}").is_ok());
    for bad in [
        "a", "/a/", "/a//b", "/{B}", "/{a}/{a}", "/x{a}", "/{t..}/x", "/a/../b", "/%2e",
    ] {
        assert!(parse_pattern(bad).is_err(), "{bad}");
    }
}

#[test]
fn claims_compare_exactly() {
    let s = set(r#"
[[route]]
name = "c"
path = "/c"
methods = ["GET"]
upstream = "app"
[route.claims]
"metadata.subscription" = "pro"
"metadata.seats" = 5
"#);
    let ok = Authn::SignedIn(id(json!({"metadata": {"subscription": "pro", "seats": 5}})));
    assert!(matches!(run(&s, "/c", &GET, &ok), Decision::Allow { .. }));
    for bad in [
        json!({"metadata": {"subscription": "pro", "seats": "5"}}),
        json!({"metadata": "pro"}),
        json!({}),
    ] {
        assert_eq!(
            run(&s, "/c", &GET, &Authn::SignedIn(id(bad))),
            Decision::Deny(Reason::ClaimMismatch)
        );
    }
}

#[test]
fn shipped_policies_compile() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let known = Known {
        upstreams: &["flask", "nextjs", "s3"],
        webhooks: &["workers", "clerk"],
        declared: None,
    };
    let s = PolicySet::load_dir_with(&dir, known).unwrap_or_else(|d| panic!("{d}"));
    assert!(s.routes.len() >= 10);
}

/// Randomised: any path, method and caller gets a decision (never a panic), and an allowed
/// request on an owner route is always the owner's.
#[test]
fn random_requests_on_the_shipped_policies() {
    use rand::{Rng, SeedableRng};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let known = Known {
        upstreams: &["flask", "nextjs", "s3"],
        webhooks: &["workers", "clerk"],
        declared: None,
    };
    let set = PolicySet::load_dir_with(&dir, known).unwrap_or_else(|d| panic!("{d}"));
    let segs = [
        "api",
        "jobs",
        "chapters",
        "files",
        "images",
        "videos",
        "user_a",
        "user_b",
        "x",
        "%2e",
        "..",
        "",
        "generate",
        "webhooks",
        "clerk",
        "_next",
        "dashboard",
    ];
    let methods = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
    ];
    let me = Authn::SignedIn(id(json!({"pla": "u:pro"})));
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for _ in 0..50_000 {
        let mut p = String::new();
        for _ in 0..rng.random_range(0..6) {
            p.push('/');
            p.push_str(segs[rng.random_range(0..segs.len())]);
        }
        if p.is_empty() {
            p.push('/');
        }
        let method = methods[rng.random_range(0..methods.len())];
        let Ok(c) = crate::path::canonicalize(&p) else {
            continue;
        };
        let req = RequestFacts {
            method,
            navigation: rng.random_bool(0.5),
            handshake: None,
        };
        let (route, d) = decide(&set, &c, &req, &me);
        if let (Some(i), Decision::Allow { .. }) = (route, &d) {
            let r = &set.routes[i];
            for q in &r.requires {
                if let Requirement::Owner { param, .. } = q {
                    let m = set.lookup(method, &c).expect("matched");
                    let (s, e) = m.params.get(*param).copied().unwrap_or((0, 0));
                    let value = &c[s..e];
                    let owned = value == "user_a"
                        || value.starts_with("user_a/")
                        || (r.is_s3() && value.is_empty());
                    assert!(
                        owned,
                        "{method} {c} allowed on {} with owner value {value:?}",
                        r.name
                    );
                }
            }
        }
    }
}

#[test]
fn presign_routes_must_name_an_object_route() {
    let src = r#"
[[route]]
name = "presign"
path = "/files/presigned-url"
methods = ["POST"]
upstream = "s3"
s3 = "presign"
presign_for = "filez"
"#;
    let text = PolicySet::compile(&[(PathBuf::from("p.toml"), src.to_string())], &["s3"])
        .expect_err("unknown presign_for")
        .to_string();
    assert!(
        text.contains("p.toml:3:1: route.presign_for: \"filez\" is not an s3 = \"object\" route"),
        "{text}"
    );
}

fn errors_with(src: &str, upstreams: &[&str], webhooks: &[&str]) -> String {
    PolicySet::compile_with(
        &[(PathBuf::from("p.toml"), src.to_string())],
        Known {
            upstreams,
            webhooks,
            declared: None,
        },
    )
    .expect_err("should fail")
    .to_string()
}

/// Shapes that would fail open are refused when compiling: a webhook route cannot serve the
/// bucket (its signature names no caller), an S3 route cannot run in shadow mode (a dry run
/// of ownership serves other users' keys) or be public.
#[test]
fn route_kinds_refuse_fail_open_shapes() {
    let text = errors_with(
        r#"
[[route]]
name = "hook-bucket"
path = "/hooks/{key..}"
methods = ["POST"]
upstream = "s3"
access = "webhook"
webhook = "w"
s3 = "object"

[[route]]
name = "shadow-bucket"
path = "/files/{key..}"
methods = ["GET"]
upstream = "s3"
s3 = "object"
owner = "key"
mode = "shadow"

[[route]]
name = "public-bucket"
path = "/pub/{key..}"
methods = ["GET"]
upstream = "s3"
s3 = "object"
access = "public"

[[route]]
name = "shadow-hook"
path = "/h"
methods = ["POST"]
upstream = "app"
access = "webhook"
webhook = "w"
mode = "shadow"

[[route]]
name = "everyones-bucket"
path = "/all/{key..}"
methods = ["GET"]
upstream = "s3"
s3 = "object"

[[route]]
name = "shadow-owner"
path = "/jobs/{user_id}"
methods = ["GET"]
upstream = "app"
owner = "user_id"
mode = "shadow"
"#,
        &["app", "s3"],
        &["w"],
    );
    assert!(
        text.contains("p.toml:38:8: route.owner: an s3 object route must own its keys"),
        "{text}"
    );
    assert!(
        text.contains("p.toml:50:8: route.mode: a route with owner is always enforced"),
        "{text}"
    );
    assert!(
        text.contains("p.toml:9:6: route.s3: a webhook route cannot serve the bucket"),
        "{text}"
    );
    assert!(
        text.contains("p.toml:18:8: route.mode: an s3 route is always enforced"),
        "{text}"
    );
    assert!(
        text.contains("p.toml:26:10: route.access: an s3 route is always signed in"),
        "{text}"
    );
    assert!(
        text.contains("p.toml:35:8: route.mode: a webhook route is always enforced"),
        "{text}"
    );
}

#[test]
fn options_only_meaningful_for_one_kind_are_refused_elsewhere() {
    let text = errors_with(
        r#"
[[route]]
name = "a"
path = "/a/{key..}"
methods = ["GET"]
upstream = "app"
webhook = "w"
presign_for = "x"
[route.kinds.images]

[[route]]
name = "b"
path = "/b/{key..}"
methods = ["GET"]
upstream = "s3"
s3 = "object"
page = true
timeout_ms = 5
"#,
        &["app", "s3"],
        &["w"],
    );
    for want in [
        "route.webhook: only used with access = \"webhook\"",
        "route.presign_for: only used with s3 = \"presign\"",
        "route.kinds: only used with s3 = \"object\"",
        "route.page: only used with session routes to an app",
        "route.timeout_ms: s3 routes use [s3] read_timeout_ms",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn compiled_kinds_carry_their_options() {
    let s = PolicySet::compile_with(
        &[(
            PathBuf::from("p.toml"),
            r#"
[[route]]
name = "files"
path = "/f/{key..}"
methods = ["GET"]
upstream = "s3"
s3 = "object"
owner = "key"
[route.kinds.images]
max_body_bytes = 10

[[route]]
name = "hook"
path = "/h"
methods = ["POST"]
upstream = "app"
access = "webhook"
webhook = "w"

[[route]]
name = "page"
path = "/p"
methods = ["GET"]
upstream = "app"
page = true
"#
            .to_string(),
        )],
        Known {
            upstreams: &["app", "s3"],
            webhooks: &["w"],
            declared: None,
        },
    )
    .unwrap_or_else(|d| panic!("{d}"));
    match &s.routes[0].kind {
        RouteKind::S3Object(o) => {
            assert!(o.owner);
            assert_eq!(o.kinds["images"].max_body_bytes, Some(10));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.routes[1].webhook(), Some("w"));
    assert_eq!(
        s.routes[1].access(),
        None,
        "a webhook route reads no session"
    );
    assert!(s.routes[2].is_page());
}

/// `explain`'s steps are the ones `evaluate` took, object rules included.
#[test]
fn the_trace_records_object_rules() {
    let s = PolicySet::compile_with(
        &[(
            PathBuf::from("p.toml"),
            r#"
[[route]]
name = "files"
path = "/f/{key..}"
methods = ["GET"]
upstream = "s3"
s3 = "object"
owner = "key"
[route.kinds.videos]
plan = ["pro"]
"#
            .to_string(),
        )],
        Known {
            upstreams: &["s3"],
            webhooks: &[],
            declared: None,
        },
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let me = Authn::SignedIn(id(json!({})));
    let ex = explain(&s, "/f/user_a/videos/v.mp4", &GET, &me);
    let checks: Vec<(&str, bool)> = ex
        .steps
        .iter()
        .map(|s| (s.check.as_str(), s.passed))
        .collect();
    assert_eq!(
        checks,
        vec![
            ("access: signed in (caller user_a)", true),
            ("key: user_a/videos/v.mp4", true),
            ("owner: key is under user_a/", true),
            ("kind: videos", true),
            ("kind videos: plan: any of pro", false),
        ]
    );
    assert_eq!(ex.decision, Decision::Deny(Reason::PlanRequired));
    let ex = explain(&s, "/f/user_b/videos/v.mp4", &GET, &me);
    assert_eq!(ex.steps.last().map(|s| s.reason), Some(Some("not_owner")));
}
