//! The JWKS cache under rotation, concurrency and key-server outages.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::common::*;

#[test]
fn many_concurrent_requests_with_a_new_kid_cause_one_fetch() {
    let w = World::start();
    // Warm the cache with key 1.
    assert_eq!(w.get_as("/api/books/1", &token("user_a")).status, 200);
    assert_eq!(w.jwks.fetch_count(), 1);
    // Rotation: key 2 is published; the JWKS answer is slow so that every request waits on it.
    w.jwks.keys.lock().expect("keys").push(issuer2().jwk());
    w.jwks.delay_ms.store(300, Ordering::SeqCst);
    let addr = w.portier.addr;
    let threads: Vec<_> = (0..200)
        .map(|i| {
            // Distinct tokens (distinct jti), so the verified-token cache does not absorb them.
            let t = issuer2().token(&issuer2().claims(&format!("user_n{i}"), AZP, 60));
            std::thread::spawn(move || {
                get(addr, "/api/books/1", &[("Authorization", &bearer(&t))]).status
            })
        })
        .collect();
    let statuses: Vec<u16> = threads
        .into_iter()
        .map(|t| t.join().expect("join"))
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        w.jwks.fetch_count(),
        2,
        "exactly one refresh for 200 waiters"
    );
}

#[test]
fn random_kids_cannot_flood_the_key_server() {
    let w = World::start();
    assert_eq!(w.get_as("/api/books/1", &token("user_a")).status, 200);
    for i in 0..50 {
        let t = issuer().sign(
            &serde_json::json!({"alg": "RS256", "kid": format!("ins_random{i}")}),
            &issuer().claims("user_a", AZP, 60),
        );
        let r = w.get_as("/api/books/1", &t);
        assert_eq!((r.status, r.reason().as_str()), (401, "token_unknown_key"));
    }
    // One initial fetch plus at most one forced refresh in the cooldown window.
    assert_eq!(w.jwks.fetch_count(), 2);
}

#[test]
fn key_server_down_keeps_cached_keys_and_answers_503_for_unknown_kids() {
    let w = World::start_with(|s| s.jwks_extra = "ttl_seconds = 1".into());
    assert_eq!(w.get_as("/api/books/1", &token("user_a")).status, 200);
    w.jwks.up.store(false, Ordering::SeqCst);
    // Past the TTL the refresh fails; the last good keys keep serving (new token: no cache hit).
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let r = w.get_as("/api/books/1", &token("user_b"));
    assert_eq!(
        r.status, 200,
        "stale keys serve through the outage: {}",
        r.body
    );
    // A kid we never saw cannot be verified while the server is down: 503, not 401.
    let r = w.get_as(
        "/api/books/1",
        &issuer2().token(&issuer2().claims("user_c", AZP, 60)),
    );
    assert_eq!((r.status, r.reason().as_str()), (503, "jwks_unavailable"));
    assert!(r.header("www-authenticate").is_none());
    assert!(
        w.portier
            .gateway
            .verifier()
            .jwks
            .stats
            .failures
            .load(Ordering::Relaxed)
            >= 1
    );
}

#[test]
fn no_keys_ever_is_503() {
    let w = World::start();
    w.jwks.up.store(false, Ordering::SeqCst);
    let r = w.get_as("/api/books/1", &token("user_a"));
    assert_eq!((r.status, r.reason().as_str()), (503, "jwks_unavailable"));
    assert_eq!(w.app.count(), 0);
    // Public routes still serve, anonymously.
    let r = w.get_as("/public/x", &token("user_a"));
    assert_eq!(r.status, 200);
    assert_eq!(w.app.last().header("x-portier-user-id"), None);
}

#[test]
fn rotation_is_picked_up_and_retired_keys_stop_working() {
    let w = World::start_with(|s| s.jwks_extra = "ttl_seconds = 1".into());
    let old = token("user_a");
    assert_eq!(w.get_as("/api/books/1", &old).status, 200);
    // Publish key 2 and retire key 1.
    *w.jwks.keys.lock().expect("keys") = vec![issuer2().jwk()];
    let new = issuer2().token(&issuer2().claims("user_b", AZP, 60));
    assert_eq!(
        w.get_as("/api/books/1", &new).status,
        200,
        "new kid verified without restart"
    );
    std::thread::sleep(std::time::Duration::from_millis(1200));
    // A token by the retired key that was never verified before is refused.
    let r = w.get_as("/api/books/1", &token("user_c"));
    assert_eq!((r.status, r.reason().as_str()), (401, "token_unknown_key"));
    let _ = Arc::strong_count(&w.portier.gateway);
}

/// A key server that hangs (30 s) delays only the requests that need it (an unknown kid), and
/// those only up to `fetch_timeout_ms`; never those whose key is cached.
#[test]
fn a_hanging_key_server_does_not_delay_requests_with_cached_keys() {
    let w = World::start_with(|s| s.jwks_extra = "fetch_timeout_ms = 2000".into());
    assert_eq!(w.get_as("/api/books/1", &token("user_a")).status, 200);
    w.jwks.delay_ms.store(30_000, Ordering::SeqCst);
    let addr = w.portier.addr;
    let unknown = issuer2().token(&issuer2().claims("user_b", AZP, 60));
    let waiting = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        let r = get(
            addr,
            "/api/books/1",
            &[("Authorization", &bearer(&unknown))],
        );
        (r.status, r.reason(), t.elapsed())
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    let t = std::time::Instant::now();
    for i in 0..20 {
        // Distinct tokens: each is verified (RS256) with the cached key.
        let r = w.get_as("/api/books/1", &token(&format!("user_c{i}")));
        assert_eq!(r.status, 200);
    }
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "cached-key requests waited: {:?}",
        t.elapsed()
    );
    let (status, reason, took) = waiting.join().expect("join");
    assert_eq!(
        (status, reason.as_str()),
        (503, "jwks_unavailable"),
        "a kid no key server answered for is not the client's fault: 503, once the fetch gives up"
    );
    assert!(
        took < std::time::Duration::from_secs(10),
        "bounded by fetch_timeout_ms, not the 30 s hang: {took:?}"
    );
    w.jwks.delay_ms.store(0, Ordering::SeqCst);
}
