//! Micro-benchmarks of the per-request hot path: token verification (verified-token cache hit,
//! and cache miss with the RS256 work), path canonicalisation, policy lookup + evaluation at
//! 10 / 1,000 / 10,000 routes and at growing path depth, the upstream header rewrite, webhook
//! HMAC, SigV4 signing and presigning, the identity assertion (cached and signed).
//!
//! `cargo bench --bench hot` runs them (about a minute and a half); `cargo bench --bench hot --
//! --test` runs each once as a smoke test. After each group the allocations one call makes are
//! printed (`allocs/op`), counted by the wrapper allocator below, outside criterion's timing.
//! Goals: cache-hit verify <= 1 us, policy at 10,000 routes <= 2 us (issue 6); SigV4 header
//! signing <= 2 us and presign <= 3 us (issue 17).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The allocation counter wraps the system allocator: the one unsafe code in the repo.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::hint::black_box;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Uri};
use jsonwebtoken::Algorithm;
use portier::auth::jwks::{JwksCache, JwksSource, JwksTiming, KeySet};
use portier::auth::{Identity, MissingAzp, Verifier, VerifierSettings};
use portier::dev::DevIssuer;
use portier::guards::webhook::{self, WebhookHeaders, WebhookSecrets};
use portier::path::canonicalize;
use portier::policy::{self, Authn, Decision, PolicySet, RequestFacts};
use portier::s3::{self, Addressing, Credentials, Payload, S3Target};
use serde_json::{json, Value};

const ISSUER: &str = "https://clerk.bench.test";
const AZP: &str = "https://app.bench.test";

// === allocation counting ===

/// The system allocator with a counter, so each group can report allocations per call. It
/// counts only while `COUNTING` is set (outside criterion's timing), so the timed loops pay one
/// relaxed load per allocation, not a locked add.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a side
// effect that does not touch the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations (including reallocations) per call of `f`, averaged over a few hundred calls.
fn allocs_per_op(name: &str, mut f: impl FnMut()) {
    const N: u64 = 200;
    f();
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..N {
        f();
    }
    COUNTING.store(false, Ordering::SeqCst);
    let n = ALLOCS.load(Ordering::Relaxed) - before;
    eprintln!("allocs/op {name}: {:.1}", n as f64 / N as f64);
}

// === helpers ===

/// Polls a future that is expected to finish without waiting (the verifier with a static key
/// set never awaits), so no executor overhead is measured.
fn ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a future the bench expects to be ready went pending"),
    }
}

fn issuer() -> DevIssuer {
    DevIssuer::generate(ISSUER, "ins_bench").expect("RSA key generation")
}

/// A session token like Clerk's (about 600 bytes) with a `pro` plan.
fn session_token(issuer: &DevIssuer) -> String {
    let mut claims = issuer.claims("user_2bench0000000000000000000", AZP, 3600);
    claims["pla"] = json!("u:pro");
    claims["fea"] = json!("u:dashboard");
    issuer.token(&claims)
}

fn verifier(issuer: &DevIssuer, token_cache_capacity: u64) -> Verifier {
    let doc = json!({ "keys": [issuer.jwk()] }).to_string();
    let keys = KeySet::from_jwks(doc.as_bytes()).expect("JWKS");
    let jwks = JwksCache::new(JwksSource::Static(Arc::new(keys)), JwksTiming::default())
        .expect("static key cache");
    Verifier::new(
        VerifierSettings {
            issuer: ISSUER.to_string(),
            authorized_parties: vec![AZP.to_string()],
            missing_azp: MissingAzp::Reject,
            leeway: Duration::from_secs(5),
            algorithms: vec![Algorithm::RS256],
            max_token_bytes: 8192,
            token_cache_capacity,
            cookie_suffix: None,
        },
        jwks,
    )
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

// === token verification ===

fn bench_verify(c: &mut Criterion) {
    let iss = issuer();
    let token = session_token(&iss);
    let mut g = c.benchmark_group("verify");

    let hit = verifier(&iss, 100_000);
    ready(hit.verify(&token)).expect("token verifies");
    g.bench_function("cache_hit", |b| {
        b.iter(|| ready(hit.verify(black_box(&token))).expect("verifies"))
    });
    allocs_per_op("verify/cache_hit", || {
        let _ = ready(hit.verify(&token));
    });

    // Capacity 0: moka keeps nothing, so every call parses, finds the key and checks RS256.
    let miss = verifier(&iss, 0);
    g.bench_function("cache_miss_rs256", |b| {
        b.iter(|| ready(miss.verify(black_box(&token))).expect("verifies"))
    });
    allocs_per_op("verify/cache_miss_rs256", || {
        let _ = ready(miss.verify(&token));
    });
    let hits = miss.cache_hits.load(Ordering::Relaxed);
    let misses = miss.cache_misses.load(Ordering::Relaxed);
    eprintln!(
        "verify/cache_miss_rs256: {misses} misses, {hits} hits ({:.2}% misses)",
        100.0 * misses as f64 / (hits + misses).max(1) as f64
    );
    g.finish();
}

// === path canonicalisation ===

fn bench_path(c: &mut Criterion) {
    let typical = "/api/jobs/user_2abc/reports/2024-06/summary.json";
    let long = format!(
        "/{}file%20name%C3%A9.txt",
        "segment-with-some-length/%7Euser/".repeat(40)
    );
    let mut g = c.benchmark_group("canonicalize");
    g.bench_function("typical_50B", |b| {
        b.iter(|| canonicalize(black_box(typical)).expect("canonical"))
    });
    g.bench_function(format!("long_{}B", long.len()), |b| {
        b.iter(|| canonicalize(black_box(&long)).expect("canonical"))
    });
    g.finish();
    allocs_per_op("canonicalize/typical", || {
        let _ = canonicalize(typical);
    });
}

// === policy evaluation ===

/// Depths of the extra routes used to show that cost follows the path, not the route count.
const DEPTHS: [usize; 4] = [2, 4, 8, 16];

/// `n` generated routes of mixed shapes (static, `{param}`, `{tail..}`, several requirement
/// kinds), plus one route per depth in [`DEPTHS`].
fn policy_source(n: usize) -> String {
    let mut s = String::with_capacity(n * 120);
    for i in 0..n {
        let svc = i % 37;
        let (path, extra) = match i % 4 {
            0 => (format!("/api/s{svc}/r{i}/{{id}}"), "plan = [\"pro\"]\n"),
            1 => (
                format!("/api/s{svc}/r{i}/{{id}}/items/{{rest..}}"),
                "feature = [\"dashboard\"]\n",
            ),
            2 => (format!("/app/s{svc}/page{i}"), "access = \"public\"\n"),
            _ => (
                format!("/users/s{svc}/r{i}/{{user_id}}/{{rest..}}"),
                "owner = \"user_id\"\n",
            ),
        };
        s.push_str(&format!(
            "[[route]]\nname = \"r{i}\"\npath = \"{path}\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"app\"\n{extra}\n"
        ));
    }
    for d in DEPTHS {
        let statics: String = (1..d).map(|k| format!("/d{d}s{k}")).collect();
        s.push_str(&format!(
            "[[route]]\nname = \"depth{d}\"\npath = \"{statics}/{{id}}\"\nmethods = [\"GET\"]\nupstream = \"app\"\nplan = [\"pro\"]\n\n"
        ));
    }
    s
}

fn compile(n: usize) -> PolicySet {
    let sources = vec![(PathBuf::from("bench.toml"), policy_source(n))];
    PolicySet::compile(&sources, &["app"]).expect("generated policies compile")
}

fn bench_policy(c: &mut Criterion) {
    let iss = issuer();
    let mut claims = iss.claims("user_2bench0000000000000000000", AZP, 3600);
    claims["pla"] = json!("u:pro");
    claims["fea"] = json!("u:dashboard");
    let Value::Object(map) = claims else {
        unreachable!("claims are an object")
    };
    let authn = Authn::SignedIn(Arc::new(Identity::from_claims(map).expect("identity")));
    let facts = RequestFacts {
        method: "GET",
        navigation: false,
        handshake: None,
    };

    let mut g = c.benchmark_group("policy_decide");
    let sets: Vec<(usize, PolicySet)> = [10, 1_000, 10_000]
        .into_iter()
        .map(|n| (n, compile(n)))
        .collect();
    for (n, set) in &sets {
        // A route near the end of the generated set, matched through a `{param}` and a tail.
        let i = (n - 1) / 4 * 4 + 1;
        let path = format!("/api/s{}/r{i}/42/items/a/b", i % 37);
        let (route, decision) = policy::decide(set, &path, &facts, &authn);
        assert!(route.is_some(), "{path} must match");
        assert!(matches!(decision, Decision::Allow { .. }), "{decision:?}");
        g.bench_with_input(BenchmarkId::new("routes", n), &path, |b, path| {
            b.iter(|| policy::decide(set, black_box(path), &facts, &authn))
        });
        allocs_per_op(&format!("policy_decide/routes/{n}"), || {
            let _ = policy::decide(set, &path, &facts, &authn);
        });
    }
    g.finish();

    let (_, big) = sets.last().expect("three sets");
    let mut g = c.benchmark_group("policy_decide_depth_10000_routes");
    for d in DEPTHS {
        let statics: String = (1..d).map(|k| format!("/d{d}s{k}")).collect();
        let path = format!("{statics}/42");
        let (route, decision) = policy::decide(big, &path, &facts, &authn);
        assert!(route.is_some(), "{path} must match");
        assert!(matches!(decision, Decision::Allow { .. }), "{decision:?}");
        g.bench_with_input(BenchmarkId::new("depth", d), &path, |b, path| {
            b.iter(|| policy::decide(big, black_box(path), &facts, &authn))
        });
    }
    g.finish();
}

// === upstream headers ===

/// The header rewrite of an allowed request (`prepare_upstream_headers`): spoof and credential
/// stripping, forwarding headers, identity headers, on a request shaped like Pingora's parse
/// of a browser's (header case kept), cloned each time as the proxy clones it.
fn bench_upstream_headers(c: &mut Criterion) {
    use pingora::http::RequestHeader;
    use portier::admission::upstream::{prepare_upstream_headers, Forwarding};
    use portier::config::{Credentials as UpstreamCredentials, IdentityHeaders};
    use portier::headers::HeaderGuard;
    let iss = issuer();
    let mut claims = iss.claims("user_2bench0000000000000000000", AZP, 3600);
    claims["pla"] = json!("u:pro");
    claims["fea"] = json!("u:dashboard");
    let Value::Object(map) = claims else {
        unreachable!("claims are an object")
    };
    let id = Identity::from_claims(map).expect("identity");
    let guard = HeaderGuard::new(&IdentityHeaders::default());
    let mut req = RequestHeader::build("GET", b"/api/items/42", None).expect("request");
    for (k, v) in [
        ("Host", "app.example.com"),
        (
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
        ),
        ("Accept", "application/json"),
        ("Accept-Language", "en-US,en;q=0.5"),
        ("Authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
        (
            "Cookie",
            "theme=dark; __session=eyJ; __client_uat=1700000000",
        ),
        ("Referer", "https://app.example.com/dashboard"),
    ] {
        req.append_header(k.to_string(), v).expect("header");
    }
    let peer: std::net::IpAddr = "203.0.113.7".parse().expect("ip");
    let fwd = Forwarding {
        peer: Some(peer),
        client: Some(peer),
        trusted: &[],
    };
    let run = |req: &RequestHeader| {
        let mut up = req.clone();
        prepare_upstream_headers(&mut up, &guard, UpstreamCredentials::Strip, Some(&id), fwd)
            .expect("headers");
        up
    };
    c.bench_function("upstream_headers_browser_request", |b| {
        b.iter(|| run(black_box(&req)))
    });
    allocs_per_op("upstream_headers_browser_request (incl. the clone)", || {
        let _ = run(&req);
    });
    allocs_per_op("request header clone alone", || {
        let _ = req.clone();
    });
}

// === webhook HMAC ===

fn bench_webhook(c: &mut Criterion) {
    let raw: [u8; 32] = [7; 32];
    let secret = format!("whsec_{}", STANDARD.encode(raw));
    let secrets = WebhookSecrets::new([secret.as_str()]).expect("secret");
    let body = vec![b'x'; 1024];
    let now = portier::auth::verify::unix_now();
    let id = "msg_2bench";
    let ts = now.to_string();
    let key = hmac::Key::new(hmac::HMAC_SHA256, &raw);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(format!("{id}.{ts}.").as_bytes());
    ctx.update(&body);
    let sig = STANDARD.encode(ctx.sign().as_ref());
    let headers = WebhookHeaders {
        id: id.to_string(),
        timestamp: ts,
        signature: format!("v1,{sig}"),
    };
    webhook::verify(&secrets, &headers, &body, now, 300).expect("signature verifies");
    c.bench_function("webhook_verify_1KiB", |b| {
        b.iter(|| webhook::verify(&secrets, &headers, black_box(&body), now, 300))
    });
    allocs_per_op("webhook_verify_1KiB", || {
        let _ = webhook::verify(&secrets, &headers, &body, now, 300);
    });
}

// === SigV4 ===

fn bench_sigv4(c: &mut Criterion) {
    let creds = Credentials::new(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        None,
    )
    .expect("credentials");
    let target = S3Target::new(
        "https://s3.eu-west-1.amazonaws.com",
        "eu-west-1",
        "portier-bench",
        Addressing::VirtualHosted,
    )
    .expect("target");
    let key = "user_2bench/uploads/report 2024.pdf";
    let uri: Uri = target.object_uri(key).expect("object uri");
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/pdf"));
    headers.insert("content-length", HeaderValue::from_static("1048576"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    let now = SystemTime::now();
    let mut g = c.benchmark_group("sigv4");
    g.bench_function("sign_headers_put", |b| {
        b.iter(|| {
            s3::sign_headers(
                &creds,
                "eu-west-1",
                "PUT",
                black_box(&uri),
                &headers,
                Payload::Unsigned,
                now,
            )
            .expect("signs")
        })
    });
    g.bench_function("presign_get", |b| {
        b.iter(|| {
            s3::presign(
                &creds,
                &target,
                "GET",
                black_box(key),
                Duration::from_secs(900),
                now,
            )
            .expect("presigns")
        })
    });
    g.finish();
    allocs_per_op("sigv4/sign_headers_put", || {
        let _ = s3::sign_headers(
            &creds,
            "eu-west-1",
            "PUT",
            &uri,
            &headers,
            Payload::Unsigned,
            now,
        );
    });
    allocs_per_op("sigv4/presign_get", || {
        let _ = s3::presign(&creds, &target, "GET", key, Duration::from_secs(900), now);
    });
}

/// The identity assertion on an asserted upstream: a cache hit (same caller, route and
/// method within half the lifetime: what a repeated request costs), and a fresh signature
/// with each algorithm (what a new path or caller costs); plus `jsonwebtoken::encode` of the
/// same claims, which parses the PKCS#8 key on every call (why the JWS is assembled by hand).
fn bench_assertion(c: &mut Criterion) {
    use portier::assertion::{generate_pem, Binding, Signer};
    use portier::config::{AssertionConfig, AssertionKey, KeySource};
    let dir = std::env::temp_dir().join(format!("portier-bench-assertion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ec_pem = generate_pem().expect("ec key");
    std::fs::write(dir.join("ec.pem"), &ec_pem).expect("write");
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let ed = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("ed key");
    std::fs::write(
        dir.join("ed.pem"),
        pem::encode(&pem::Pem::new("PRIVATE KEY", ed.as_ref().to_vec())),
    )
    .expect("write");
    let signer = |file: &str, capacity: u64| {
        Signer::new(&AssertionConfig {
            issuer: "portier".into(),
            upstreams: vec!["flask".into()],
            ttl: Duration::from_secs(120),
            jwks_max_age: Duration::from_secs(300),
            public_jwks_path: None,
            cache_max_bytes: capacity,
            keys: vec![AssertionKey {
                kid: "k1".into(),
                source: KeySource::File(dir.join(file)),
                active: true,
            }],
        })
        .expect("signer")
    };
    let claims = json!({"sub": "user_2bench", "sid": "sess_2bench", "exp": 4_000_000_000_i64,
        "pla": "u:pro", "org_id": "org_1", "org_role": "org:admin"});
    let id = Identity::from_claims(claims.as_object().cloned().expect("object")).expect("id");
    let b = Binding {
        upstream: "flask",
        method: "GET",
        path: "/api/books/42",
    };
    let now = 1_900_000_000;
    let cached = signer("ec.pem", 1 << 20);
    // Misses: each call is 61 s later than the last, past the reuse window of the one
    // before, so it signs (and inserts), as a new caller or path does.
    let es256 = signer("ec.pem", 1 << 20);
    let eddsa = signer("ed.pem", 1 << 20);
    cached.assertion(&id, b, now).expect("warm");
    let mut g = c.benchmark_group("assertion");
    g.bench_function("cache_hit", |bn| {
        bn.iter(|| cached.assertion(black_box(&id), b, now).expect("jwt"))
    });
    let mut t = now;
    g.bench_function("sign_es256", |bn| {
        bn.iter(|| {
            t += 61;
            es256.assertion(black_box(&id), b, t).expect("jwt")
        })
    });
    g.bench_function("sign_eddsa", |bn| {
        bn.iter(|| {
            t += 61;
            eddsa.assertion(black_box(&id), b, t).expect("jwt")
        })
    });
    let key = jsonwebtoken::EncodingKey::from_ec_pem(ec_pem.as_bytes()).expect("jwt key");
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let payload = json!({"iss": "portier", "aud": "flask", "sub": "user_2bench",
        "sid": "sess_2bench", "htm": "GET", "htu": "/api/books/42", "iat": now, "exp": now + 120});
    g.bench_function("jsonwebtoken_encode_es256", |bn| {
        bn.iter(|| jsonwebtoken::encode(&header, black_box(&payload), &key).expect("jwt"))
    });
    g.finish();
    allocs_per_op("assertion/cache_hit", || {
        let _ = cached.assertion(&id, b, now);
    });
    allocs_per_op("assertion/sign_es256", || {
        t += 61;
        let _ = es256.assertion(&id, b, t);
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = hot;
    config = config();
    targets = bench_verify, bench_path, bench_policy, bench_upstream_headers, bench_webhook,
        bench_sigv4, bench_assertion
}
criterion_main!(hot);
