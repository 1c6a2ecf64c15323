//! Path attacks (peers.md): encoded dots and slashes, `..;`, fragments, double slashes. None
//! may reach a route it should not; the canonical form is what the upstream receives.

use crate::common::*;

#[test]
fn encoded_and_dotted_paths_never_reach_a_protected_route() {
    let w = World::start();
    // A signed-in non-admin: allowed on /public, refused on /admin.
    let t = token("user_abc");
    let auth = bearer(&t);
    let attacks = [
        "/public/../admin/x",
        "/public/./../admin/x",
        "/public/%2e%2e/admin/x",
        "/public/%2E%2E/admin/x",
        "/public/.%2e/admin/x",
        "/public/%2e./admin/x",
        "/public/..%2fadmin/x",
        "/public%2f..%2fadmin/x",
        "/public/..%5cadmin/x",
        "/public/..\\admin/x",
        "/public/..;/admin/x",
        "/public;/../admin/x",
        "/public/%252e%252e/admin/x",
        "/public/%00/../admin/x",
        "/public/x%23/../../admin/x",
        "/public/x/..",
    ];
    for a in attacks {
        let r = w.get(a, &[("Authorization", &auth)]);
        assert_eq!(
            (r.status, r.reason().as_str()),
            (400, "bad_path"),
            "{a}: {}",
            r.body
        );
    }
    assert_eq!(w.app.count(), 0, "no attack reached any upstream");

    // A fragment is not part of a request target: refused, never routed on its prefix.
    let r = w.get("/admin/x#/public/y", &[("Authorization", &auth)]);
    assert!(
        r.status == 400 || r.status == 403,
        "fragment: {} {}",
        r.status,
        r.body
    );
    assert_eq!(w.app.count(), 0);

    // Double slashes collapse: //admin is /admin, and is refused like /admin.
    let r = w.get("//admin//x", &[("Authorization", &auth)]);
    assert_eq!((r.status, r.reason().as_str()), (403, "org_role_required"));
    // And the collapsed form is what is matched and forwarded.
    let r = w.get("//public///a//b?q=1", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(w.app.last().path, "/public/a/b?q=1");
}

#[test]
fn absolute_form_targets_use_the_same_canonical_path() {
    let w = World::start();
    let r = w.get("http://portier.test/public/a", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(w.app.last().path, "/public/a");
    let r = w.get("http://portier.test/public/%2e%2e/admin", &[]);
    assert_eq!((r.status, r.reason().as_str()), (400, "bad_path"));
}

#[test]
fn deny_by_default() {
    let w = World::start();
    let t = token("user_abc");
    let r = w.get_as("/nowhere", &t);
    assert_eq!((r.status, r.reason().as_str()), (404, "no_route"));
    let r = w.get_as("/api", &t);
    assert_eq!((r.status, r.reason().as_str()), (404, "no_route"));
    let r = raw(
        w.portier.addr,
        "DELETE",
        "/api/books/1",
        &[("Authorization", &bearer(&t))],
    );
    assert_eq!((r.status, r.reason().as_str()), (405, "method_not_allowed"));
    assert_eq!(r.header("allow"), Some("GET, POST"));
    assert_eq!(w.app.count(), 0);
}
