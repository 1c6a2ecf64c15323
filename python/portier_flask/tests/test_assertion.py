"""End to end through Flask's test client: verification outcomes and the refusal shape."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from conftest import REMOVE, Harness, assert_refusal, claims, es256_key, mint, raw_token
from cryptography.hazmat.primitives import serialization

# === the happy path ===


def test_valid_assertion_reaches_the_view_with_the_user(h: Harness) -> None:
    token = mint(h.key, act={"sub": "user_support1"})
    resp = h.get("/api/books/b1", token)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    data = resp.get_json()
    assert data["book"] == "b1"
    assert data["user"] == {
        "id": "user_123",
        "session_id": "sess_456",
        "org_id": "org_1",
        "org_slug": "acme",
        "org_role": "org:admin",
        "org_permissions": ["org:posts:edit", "org:posts:read"],
        "plans": ["u:pro", "o:business"],
        "features": ["o:reservations", "u:dashboard", "uo:support-chat"],
        "actor": "user_support1",
    }


def test_user_without_org_or_entitlements(h: Harness) -> None:
    token = mint(h.key, org=REMOVE, plans=REMOVE, features=REMOVE, htu="/api/called")
    resp = h.get("/api/called", token)
    assert resp.status_code == 200
    user = resp.get_json()["user"]
    assert user["org_id"] is None and user["org_role"] is None and user["org_permissions"] == []
    assert user["plans"] == [] and user["features"] == [] and user["actor"] is None


def test_require_auth_with_parentheses(h: Harness) -> None:
    assert h.get("/api/called", mint(h.key, htu="/api/called")).status_code == 200
    assert_refusal(h.get("/api/called"), 401, "assertion_missing")


def test_has_plan_and_has_feature_follow_clerk_semantics(h: Harness) -> None:
    resp = h.get("/api/has", mint(h.key, htu="/api/has"))
    assert resp.status_code == 200
    data = resp.get_json()
    assert data["plans"] == {
        "pro": True,
        "org:pro": False,
        "user:pro": True,
        "u:pro": True,
        "business": True,
        "o:business": True,
        "user:business": False,
    }
    assert data["features"] == {
        "dashboard": True,
        "org:dashboard": False,
        "pro": False,
        "support-chat": True,
        "o:support-chat": True,
    }


def test_ed25519_assertion_verifies(h: Harness, ed_key: Any) -> None:
    resp = h.get("/api/books/b1", mint(ed_key))
    assert resp.status_code == 200
    assert resp.get_json()["user"]["id"] == "user_123"


def test_float_times_are_accepted(h: Harness) -> None:
    now = time.time()
    assert h.get("/api/books/b1", mint(h.key, iat=now, exp=now + 60.5)).status_code == 200


# === plain identity headers are never trusted ===


FORGED = {
    "X-Portier-User-Id": "user_evil",
    "X-Portier-Session-Id": "sess_evil",
    "X-Portier-Org-Id": "org_evil",
    "X-Portier-Org-Role": "org:admin",
    "X-Portier-Plans": "u:enterprise",
    "X-Portier-Features": "u:dashboard",
}


def test_forged_identity_headers_without_assertion_are_refused(h: Harness) -> None:
    for path in ("/api/books/b1", "/api/pro", "/api/admin"):
        assert_refusal(h.get(path, headers=FORGED), 401, "assertion_missing")


def test_forged_identity_headers_next_to_an_assertion_are_ignored(h: Harness) -> None:
    resp = h.get("/api/books/b1", mint(h.key, org=REMOVE), headers=FORGED)
    assert resp.status_code == 200
    user = resp.get_json()["user"]
    assert user["id"] == "user_123" and user["org_id"] is None


def test_empty_assertion_header_is_missing(h: Harness) -> None:
    assert_refusal(h.get("/api/books/b1", ""), 401, "assertion_missing")


def test_two_assertion_headers_are_invalid(h: Harness) -> None:
    token = mint(h.key)
    resp = h.client.get(
        "/api/books/b1", headers=[("X-Portier-Assertion", token), ("X-Portier-Assertion", token)]
    )
    assert_refusal(resp, 401, "assertion_invalid")


# === claims ===


def test_wrong_audience(h: Harness) -> None:
    assert_refusal(
        h.get("/api/books/b1", mint(h.key, aud="nextjs")), 401, "assertion_audience_mismatch"
    )


def test_audience_list_is_not_accepted(h: Harness) -> None:
    assert_refusal(h.get("/api/books/b1", mint(h.key, aud=["flask"])), 401, "assertion_invalid")
    assert_refusal(
        h.get("/api/books/b1", mint(h.key, aud=["nextjs"])), 401, "assertion_audience_mismatch"
    )


def test_wrong_issuer(h: Harness) -> None:
    assert_refusal(
        h.get("/api/books/b1", mint(h.key, iss="someone-else")), 401, "assertion_issuer_mismatch"
    )


def test_expired_beyond_leeway(h: Harness) -> None:
    now = int(time.time())
    token = mint(h.key, iat=now - 200, exp=now - 30)
    assert_refusal(h.get("/api/books/b1", token), 401, "assertion_expired")


def test_expired_within_leeway_is_accepted(h: Harness) -> None:
    now = int(time.time())
    token = mint(h.key, iat=now - 122, exp=now - 2)  # leeway is 5 s
    assert h.get("/api/books/b1", token).status_code == 200


def test_zero_leeway_refuses_a_just_expired_assertion(h: Harness) -> None:
    app = h.make(leeway=0)
    now = int(time.time())
    resp = app.test_client().get(
        "/api/books/b1", headers={"X-Portier-Assertion": mint(h.key, iat=now - 122, exp=now - 2)}
    )
    assert_refusal(resp, 401, "assertion_expired")


def test_issued_in_the_future(h: Harness) -> None:
    now = int(time.time())
    token = mint(h.key, iat=now + 60, exp=now + 180)
    assert_refusal(h.get("/api/books/b1", token), 401, "assertion_invalid")


@pytest.mark.parametrize(
    "overrides",
    [
        {"sub": REMOVE},
        {"sid": REMOVE},
        {"iat": REMOVE},
        {"exp": REMOVE},
        {"htm": REMOVE},
        {"htu": REMOVE},
        {"iss": REMOVE},
        {"aud": REMOVE},
        {"sub": "bob"},
        {"sub": "user_"},
        {"sub": 123},
        {"sid": "session-1"},
        {"htm": ["GET"]},
        {"htu": 7},
        {"iat": True},
        {"iat": "now"},
        {"plans": "u:pro"},
        {"plans": ["u:pro", 3]},
        {"features": {"u": "dashboard"}},
        {"org": "org_1"},
        {"org": {"slug": "acme"}},
        {"org": {"id": "org_1", "permissions": "org:posts:edit"}},
        {"org": {"id": "org_1", "role": 1}},
        {"act": "user_support1"},
        {"act": {"sub": 5}},
    ],
    ids=lambda o: ",".join(f"{k}={'REMOVE' if v is REMOVE else v!r}" for k, v in o.items()),
)
def test_missing_or_mistyped_claims_are_invalid(h: Harness, overrides: Any) -> None:
    assert_refusal(h.get("/api/books/b1", mint(h.key, **overrides)), 401, "assertion_invalid")


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b", "a.b.c.d", "!!!.@@@.###", "eyJhbGciOiJFUzI1NiJ9.e30.", "x" * 9000],
)
def test_malformed_tokens_are_invalid(h: Harness, token: str) -> None:
    assert_refusal(h.get("/api/books/b1", token), 401, "assertion_invalid")


def test_tampered_payload_is_invalid(h: Harness) -> None:
    token = mint(h.key)
    header, _, signature = token.split(".")
    other = mint(h.key, sub="user_evil").split(".")[1]
    assert_refusal(
        h.get("/api/books/b1", f"{header}.{other}.{signature}"), 401, "assertion_invalid"
    )


def test_signature_by_another_key_with_a_known_kid_is_invalid(h: Harness) -> None:
    impostor = es256_key(h.key.kid)
    assert_refusal(h.get("/api/books/b1", mint(impostor)), 401, "assertion_invalid")


@pytest.mark.parametrize("typ", [None, "at+jwt", "JWS", 1])
def test_header_typ_must_be_jwt(h: Harness, typ: Any) -> None:
    token = mint(h.key, headers={"typ": typ})  # None: PyJWT leaves typ out
    assert_refusal(h.get("/api/books/b1", token), 401, "assertion_invalid")


def test_header_typ_is_case_insensitive(h: Harness) -> None:
    assert h.get("/api/books/b1", mint(h.key, headers={"typ": "jwt"})).status_code == 200


def test_crit_header_is_refused(h: Harness) -> None:
    token = mint(h.key, headers={"crit": ["exp"]})
    assert_refusal(h.get("/api/books/b1", token), 401, "assertion_invalid")


def test_missing_kid_is_invalid(h: Harness) -> None:
    import jwt as pyjwt

    token = pyjwt.encode(claims(), h.key.private, algorithm="ES256", headers={"typ": "JWT"})
    assert_refusal(h.get("/api/books/b1", token), 401, "assertion_invalid")


# === algorithm confusion ===


def test_alg_none_is_invalid(h: Harness) -> None:
    token = raw_token({"alg": "none", "typ": "JWT", "kid": h.key.kid}, claims(), b"")
    token = token.rstrip(".") + "."
    assert_refusal(h.get("/api/books/b1", token), 401, "assertion_invalid")
    # and with a non-empty junk signature (the compact-form check is not what stops it)
    token = raw_token({"alg": "none", "typ": "JWT", "kid": h.key.kid}, claims(), b"x")
    assert_refusal(h.get("/api/books/b1", token), 401, "assertion_invalid")
    assert h.jwks.fetches == 0  # refused before any key was needed


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_the_public_key_is_invalid(h: Harness, alg: str) -> None:
    pem = h.key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    for secret in (pem, json.dumps(h.key.jwk).encode()):
        unsigned = raw_token({"alg": alg, "typ": "JWT", "kid": h.key.kid}, claims(), b"")
        signing_input = unsigned.rsplit(".", 1)[0]
        mac = hmac.new(secret, signing_input.encode(), digest).digest()
        token = raw_token({"alg": alg, "typ": "JWT", "kid": h.key.kid}, claims(), mac)
        assert_refusal(h.get("/api/books/b1", token), 401, "assertion_invalid")


def test_es256_header_over_an_ed25519_key_is_invalid(h: Harness, ed_key: Any) -> None:
    # signed with a real EC key, but naming the Ed25519 key's kid
    token = mint(es256_key(ed_key.kid))
    assert_refusal(h.get("/api/books/b1", token), 401, "assertion_invalid")


def test_eddsa_header_over_an_ec_key_is_invalid(h: Harness, ed_key: Any) -> None:
    token = mint(ed_key, headers={"kid": h.key.kid})
    assert_refusal(h.get("/api/books/b1", token), 401, "assertion_invalid")


@pytest.mark.parametrize("alg", ["RS256", "ES384", "PS256", "ES256K", "Ed25519"])
def test_other_algorithms_are_invalid(h: Harness, alg: str) -> None:
    token = raw_token({"alg": alg, "typ": "JWT", "kid": h.key.kid}, claims(), b"\x00" * 64)
    assert_refusal(h.get("/api/books/b1", token), 401, "assertion_invalid")


# === binding to the request ===


def test_replay_on_another_path_is_a_request_mismatch(h: Harness) -> None:
    token = mint(h.key, htu="/api/books/b1")
    assert h.get("/api/books/b1", token).status_code == 200
    assert_refusal(h.get("/api/books/b2", token), 401, "assertion_request_mismatch")
    assert_refusal(h.get("/api/called", token), 401, "assertion_request_mismatch")


def test_replay_with_another_method_is_a_request_mismatch(h: Harness) -> None:
    token = mint(h.key, htm="GET")
    resp = h.client.post("/api/books/b1", headers={"X-Portier-Assertion": token})
    assert_refusal(resp, 401, "assertion_request_mismatch")
    post = mint(h.key, htm="POST")
    assert h.client.post("/api/books/b1", headers={"X-Portier-Assertion": post}).status_code == 200


def test_lower_case_htm_does_not_match(h: Harness) -> None:
    assert_refusal(
        h.get("/api/books/b1", mint(h.key, htm="get")), 401, "assertion_request_mismatch"
    )


def test_query_string_is_not_part_of_htu(h: Harness) -> None:
    token = mint(h.key, htu="/api/books/b1")
    assert h.get("/api/books/b1?page=2&x=%20", token).status_code == 200
    assert_refusal(
        h.get("/api/books/b1?page=2", mint(h.key, htu="/api/books/b1?page=2")),
        401,
        "assertion_request_mismatch",
    )


def test_percent_encoded_path_is_compared_decoded(h: Harness) -> None:
    token = mint(h.key, htu="/api/books/a%20b")
    resp = h.get("/api/books/a%20b", token)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["book"] == "a b"
    assert_refusal(h.get("/api/books/a%20c", token), 401, "assertion_request_mismatch")


def test_utf8_path(h: Harness) -> None:
    token = mint(h.key, htu="/api/books/caf%C3%A9")
    resp = h.get("/api/books/caf%C3%A9", token)
    assert resp.status_code == 200
    assert resp.get_json()["book"] == "café"


def test_invalid_utf8_in_htu_never_matches(h: Harness) -> None:
    token = mint(h.key, htu="/api/books/%FF")
    assert_refusal(h.get("/api/books/%FF", token), 401, "assertion_request_mismatch")
    token = mint(h.key, htu="/api/books/%EF%BF%BD")  # U+FFFD, what the WSGI layer makes of %FF
    assert_refusal(h.get("/api/books/%FF", token), 401, "assertion_request_mismatch")


def test_script_root_is_part_of_the_path(h: Harness) -> None:
    client = h.app.test_client()
    token = mint(h.key, htu="/backend/api/books/b1")
    resp = client.get(
        "/api/books/b1",
        base_url="http://localhost/backend",
        headers={"X-Portier-Assertion": token},
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    resp = client.get(
        "/api/books/b1",
        base_url="http://localhost/backend",
        headers={"X-Portier-Assertion": mint(h.key)},
    )
    assert_refusal(resp, 401, "assertion_request_mismatch")


# === settings ===


def test_custom_header_name(h: Harness) -> None:
    app = h.make(header="X-Edge-Identity")
    client = app.test_client()
    token = mint(h.key)
    assert client.get("/api/books/b1", headers={"X-Edge-Identity": token}).status_code == 200
    resp = client.get("/api/books/b1", headers={"X-Portier-Assertion": token})
    assert_refusal(resp, 401, "assertion_missing")


def test_custom_issuer_and_audience(h: Harness) -> None:
    app = h.make(issuer="portier-prod", audience="billing")
    client = app.test_client()
    ok = mint(h.key, iss="portier-prod", aud="billing")
    assert client.get("/api/books/b1", headers={"X-Portier-Assertion": ok}).status_code == 200
    other_aud = mint(h.key, iss="portier-prod")
    resp = client.get("/api/books/b1", headers={"X-Portier-Assertion": other_aud})
    assert_refusal(resp, 401, "assertion_audience_mismatch")
    other_iss = mint(h.key, aud="billing")
    resp = client.get("/api/books/b1", headers={"X-Portier-Assertion": other_iss})
    assert_refusal(resp, 401, "assertion_issuer_mismatch")
