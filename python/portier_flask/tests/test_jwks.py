"""The key cache: lazy fetch, unknown kids and their cooldown, rotation, outages, concurrency."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest
from conftest import Harness, JwksServer, Key, assert_refusal, ed25519_key, es256_key, mint
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

from portier_flask._jwks import (
    JwksCache,
    JwksFetchError,
    JwksUnavailable,
    UnknownKey,
    max_age,
    parse_jwks,
    parse_key,
)

# === through the app, against the real JWKS server ===


def test_keys_are_fetched_lazily_and_once(h: Harness) -> None:
    assert h.jwks.fetches == 0  # init_app fetched nothing
    for _ in range(5):
        assert h.get("/api/books/b1", mint(h.key)).status_code == 200
    assert h.jwks.fetches == 1


def test_unknown_kid_refetches_once_then_is_refused(h: Harness) -> None:
    assert h.get("/api/books/b1", mint(h.key)).status_code == 200
    assert h.jwks.fetches == 1
    stranger = es256_key("not-published")
    assert_refusal(h.get("/api/books/b1", mint(stranger)), 401, "assertion_unknown_key")
    assert h.jwks.fetches == 2


def test_unknown_kid_on_a_cold_cache_costs_one_fetch(h: Harness) -> None:
    stranger = es256_key("not-published")
    assert_refusal(h.get("/api/books/b1", mint(stranger)), 401, "assertion_unknown_key")
    assert h.jwks.fetches == 1


def test_many_unknown_kids_within_the_cooldown_cost_one_extra_fetch(h: Harness) -> None:
    assert h.get("/api/books/b1", mint(h.key)).status_code == 200
    signer = es256_key("unused")
    for i in range(50):
        token = mint(signer, headers={"kid": f"random-{i}"})
        assert_refusal(h.get("/api/books/b1", token), 401, "assertion_unknown_key")
    assert h.jwks.fetches == 2
    # known keys keep working meanwhile, without fetches
    assert h.get("/api/books/b1", mint(h.key)).status_code == 200
    assert h.jwks.fetches == 2


def test_unknown_kid_refresh_is_allowed_again_after_the_cooldown(h: Harness) -> None:
    app = h.make(unknown_kid_cooldown_seconds=0.5)
    client = app.test_client()
    signer = es256_key("unused")

    def unknown(i: int) -> int:
        token = mint(signer, headers={"kid": f"random-{i}"})
        return client.get("/api/books/b1", headers={"X-Portier-Assertion": token}).status_code

    assert unknown(0) == 401  # cold cache: 1 fetch
    assert unknown(1) == 401  # forced refresh: 2
    assert unknown(2) == 401  # within the cooldown: none
    assert h.jwks.fetches == 2
    time.sleep(0.6)
    assert unknown(3) == 401
    assert h.jwks.fetches == 3


def test_a_newly_published_key_is_found_by_the_unknown_kid_refresh(
    h: Harness, jwks: JwksServer, key: Key
) -> None:
    assert h.get("/api/books/b1", mint(key)).status_code == 200
    new = es256_key("portier-es256-2")
    jwks.publish(key, new)
    assert h.get("/api/books/b1", mint(new)).status_code == 200
    assert jwks.fetches == 2


def test_rotation_old_and_new_then_new_only(jwks: JwksServer, make_app: Any) -> None:
    old, new = es256_key("2026-01"), ed25519_key("2026-02")
    jwks.publish(old, new)
    app = make_app(jwks_cache_seconds=0.5)
    client = app.test_client()

    def status(k: Key) -> int:
        resp = client.get("/api/books/b1", headers={"X-Portier-Assertion": mint(k)})
        return int(resp.status_code)

    assert status(old) == 200
    assert status(new) == 200
    assert jwks.fetches == 1
    jwks.publish(new)
    assert status(old) == 200  # still cached
    time.sleep(0.6)  # the cache expires
    resp = client.get("/api/books/b1", headers={"X-Portier-Assertion": mint(old)})
    assert_refusal(resp, 401, "assertion_unknown_key")
    assert status(new) == 200
    assert jwks.fetches == 2  # the expiry refetch was the only one: no forced one on top


def test_max_age_shorter_than_the_cache_bound_wins(jwks: JwksServer, make_app: Any) -> None:
    k = es256_key("k")
    jwks.publish(k)
    jwks.cache_control = "max-age=1"
    app = make_app(jwks_cache_seconds=300)
    client = app.test_client()
    headers = {"X-Portier-Assertion": mint(k)}
    assert client.get("/api/books/b1", headers=headers).status_code == 200
    assert client.get("/api/books/b1", headers=headers).status_code == 200
    assert jwks.fetches == 1
    time.sleep(1.1)
    assert client.get("/api/books/b1", headers=headers).status_code == 200
    assert jwks.fetches == 2


def test_jwks_down_with_nothing_cached_is_503(h: Harness) -> None:
    h.jwks.stop()
    resp = h.get("/api/books/b1", mint(h.key))
    assert_refusal(resp, 503, "jwks_unavailable")


def test_jwks_error_status_with_nothing_cached_is_503(h: Harness) -> None:
    h.jwks.status = 500
    assert_refusal(h.get("/api/books/b1", mint(h.key)), 503, "jwks_unavailable")


def test_jwks_down_with_keys_cached_still_verifies(h: Harness) -> None:
    assert h.get("/api/books/b1", mint(h.key)).status_code == 200
    h.jwks.stop()
    assert h.get("/api/books/b1", mint(h.key)).status_code == 200


def test_jwks_down_after_expiry_keeps_the_last_good_keys(
    jwks: JwksServer, key: Key, make_app: Any
) -> None:
    jwks.publish(key)
    app = make_app(jwks_cache_seconds=0.1, unknown_kid_cooldown_seconds=0)
    client = app.test_client()
    headers = {"X-Portier-Assertion": mint(key)}
    assert client.get("/api/books/b1", headers=headers).status_code == 200
    jwks.status = 503
    time.sleep(0.15)
    assert client.get("/api/books/b1", headers=headers).status_code == 200
    assert jwks.fetches == 2  # it did try
    # an unknown kid while the JWKS is failing: the keys may have rotated, so try again later
    resp = client.get("/api/books/b1", headers={"X-Portier-Assertion": mint(es256_key("new"))})
    assert_refusal(resp, 503, "jwks_unavailable")


def test_a_failed_fetch_is_not_retried_within_the_cooldown(h: Harness) -> None:
    h.jwks.status = 500
    for _ in range(5):
        assert_refusal(h.get("/api/books/b1", mint(h.key)), 503, "jwks_unavailable")
    assert h.jwks.fetches == 1


def test_the_jwks_recovers_after_the_cooldown(jwks: JwksServer, key: Key, make_app: Any) -> None:
    jwks.publish(key)
    jwks.status = 500
    app = make_app(unknown_kid_cooldown_seconds=0.1)
    client = app.test_client()
    headers = {"X-Portier-Assertion": mint(key)}
    assert client.get("/api/books/b1", headers=headers).status_code == 503
    jwks.status = 200
    time.sleep(0.15)
    assert client.get("/api/books/b1", headers=headers).status_code == 200


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"keys": {}}', b'{"nokeys": []}', b'{"keys": []}', b"\xff\xfe"],
)
def test_a_broken_jwks_document_is_a_failed_fetch(h: Harness, body: bytes) -> None:
    h.jwks.body = body
    assert_refusal(h.get("/api/books/b1", mint(h.key)), 503, "jwks_unavailable")


def test_redirects_are_not_followed(h: Harness, jwks: JwksServer) -> None:
    jwks.status = 302
    jwks.location = jwks.url + "?elsewhere"
    assert_refusal(h.get("/api/books/b1", mint(h.key)), 503, "jwks_unavailable")
    assert jwks.fetches == 1


def test_a_slow_jwks_times_out(jwks: JwksServer, key: Key, make_app: Any) -> None:
    jwks.publish(key)
    jwks.delay = 1.0
    app = make_app(timeout=0.2)
    started = time.monotonic()
    resp = app.test_client().get("/api/books/b1", headers={"X-Portier-Assertion": mint(key)})
    assert_refusal(resp, 503, "jwks_unavailable")
    assert time.monotonic() - started < 0.9


def test_concurrent_requests_on_a_cold_cache_share_one_fetch(
    jwks: JwksServer, key: Key, make_app: Any
) -> None:
    jwks.publish(key)
    jwks.delay = 0.2
    app = make_app()
    token = mint(key)
    barrier = threading.Barrier(12)
    statuses: List[int] = []
    lock = threading.Lock()

    def worker() -> None:
        client = app.test_client()
        barrier.wait(timeout=5)
        code = client.get("/api/books/b1", headers={"X-Portier-Assertion": token}).status_code
        with lock:
            statuses.append(code)

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert statuses == [200] * 12
    assert jwks.fetches == 1


def test_concurrent_unknown_kids_share_one_forced_fetch(h: Harness, jwks: JwksServer) -> None:
    assert h.get("/api/books/b1", mint(h.key)).status_code == 200
    jwks.delay = 0.2
    signer = es256_key("unused")
    barrier = threading.Barrier(10)
    statuses: List[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        client = h.app.test_client()
        token = mint(signer, headers={"kid": f"random-{i}"})
        barrier.wait(timeout=5)
        code = client.get("/api/books/b1", headers={"X-Portier-Assertion": token}).status_code
        with lock:
            statuses.append(code)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert statuses == [401] * 10
    assert jwks.fetches == 2


# === the cache alone, with a fake clock and fetcher ===


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeFetch:
    def __init__(self, keys: List[Key], cache_control: Optional[str] = None) -> None:
        self.keys = keys
        self.cache_control = cache_control
        self.calls = 0
        self.fail = False

    def __call__(self, url: str, timeout: float) -> Tuple[bytes, Optional[str]]:
        self.calls += 1
        if self.fail:
            raise JwksFetchError("down")
        return json.dumps({"keys": [k.jwk for k in self.keys]}).encode(), self.cache_control


def cache(fetch: FakeFetch, clock: FakeClock, **kw: Any) -> JwksCache:
    options: Dict[str, Any] = {"max_ttl": 300.0, "cooldown": 10.0, "timeout": 1.0}
    options.update(kw)
    return JwksCache("http://127.0.0.1:1/jwks", fetch=fetch, clock=clock, **options)


@pytest.mark.parametrize(
    ("cache_control", "ttl"),
    [
        (None, 300.0),
        ("public, max-age=60", 60.0),
        ("max-age=3600", 300.0),  # bounded by jwks_cache_seconds
        ("max-age=0", 1.0),  # raised to the floor
        ("no-store", 1.0),
        ("no-cache, max-age=60", 1.0),
        ("max-age=abc", 300.0),
        ("s-maxage=5", 300.0),
    ],
)
def test_ttl_follows_max_age_within_bounds(cache_control: Optional[str], ttl: float) -> None:
    k = es256_key("k")
    fetch, clock = FakeFetch([k], cache_control), FakeClock()
    c = cache(fetch, clock)
    c.get("k")
    clock.now += ttl - 0.01
    c.get("k")
    assert fetch.calls == 1
    clock.now += 0.02
    c.get("k")
    assert fetch.calls == 2


def test_unknown_kid_cooldown_with_a_fake_clock() -> None:
    fetch, clock = FakeFetch([es256_key("k")]), FakeClock()
    c = cache(fetch, clock, cooldown=10.0)
    c.get("k")
    for kid in ("a", "b", "c"):
        with pytest.raises(UnknownKey):
            c.get(kid)
    assert fetch.calls == 2
    clock.now += 9.9
    with pytest.raises(UnknownKey):
        c.get("d")
    assert fetch.calls == 2
    clock.now += 0.2
    with pytest.raises(UnknownKey):
        c.get("e")
    assert fetch.calls == 3


def test_failure_keeps_the_last_good_keys_and_backs_off() -> None:
    fetch, clock = FakeFetch([es256_key("k")]), FakeClock()
    c = cache(fetch, clock, max_ttl=60.0, cooldown=10.0)
    assert c.get("k").alg == "ES256"
    fetch.fail = True
    clock.now += 61
    assert c.get("k").kid == "k"  # stale but kept
    assert fetch.calls == 2
    clock.now += 5
    assert c.get("k").kid == "k"
    assert fetch.calls == 2  # backing off
    clock.now += 6
    fetch.fail = False
    assert c.get("k").kid == "k"
    assert fetch.calls == 3


def test_nothing_cached_and_failing_is_unavailable() -> None:
    fetch, clock = FakeFetch([]), FakeClock()
    fetch.fail = True
    c = cache(fetch, clock)
    with pytest.raises(JwksUnavailable):
        c.get("k")


# === parsing ===


def test_only_p256_and_ed25519_keys_are_kept(caplog: pytest.LogCaptureFixture) -> None:
    ec, ed = es256_key("ec"), ed25519_key("ed")
    rsa = {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB", "alg": "RS256", "use": "sig"}
    oct_ = {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}
    p384 = dict(ec.jwk, crv="P-384", kid="p384")
    wrong_alg = dict(ec.jwk, alg="HS256", kid="ec-hs256")
    ed_wrong_alg = dict(ed.jwk, alg="ES256", kid="ed-es256")
    enc = dict(ec.jwk, use="enc", kid="ec-enc")
    private = dict(ec.jwk, d="AAAA", kid="ec-private")
    bad_point = dict(ec.jwk, y=ec.jwk["x"], kid="ec-bad-point")
    short = dict(ed.jwk, x="AAAA", kid="ed-short")
    no_kid = {k: v for k, v in ec.jwk.items() if k != "kid"}
    no_alg = {k: v for k, v in ed.jwk.items() if k != "alg"}
    no_alg["kid"] = "ed-no-alg"
    doc = {
        "keys": [
            ec.jwk,
            ed.jwk,
            rsa,
            oct_,
            p384,
            wrong_alg,
            ed_wrong_alg,
            enc,
            private,
            bad_point,
            short,
            no_kid,
            no_alg,
            "junk",
            dict(ec.jwk, x=ed.jwk["x"]),  # duplicate kid "ec": the first one stays
        ]
    }
    with caplog.at_level("DEBUG", logger="portier_flask"):
        keys = parse_jwks(json.dumps(doc).encode())
    assert sorted(keys) == ["ec", "ed", "ed-no-alg"]
    assert keys["ec"].alg == "ES256" and keys["ed"].alg == "EdDSA"
    assert keys["ed-no-alg"].alg == "EdDSA"
    ec_public = keys["ec"].key
    assert isinstance(ec_public, EllipticCurvePublicKey)
    assert ec_public.public_numbers() == ec.private.public_key().public_numbers()
    assert "private material" in caplog.text


def test_parse_key_refuses_key_ops_without_verify() -> None:
    k = es256_key("k")
    with pytest.raises(ValueError, match="key_ops"):
        parse_key(dict(k.jwk, key_ops=["sign"]))
    assert parse_key(dict(k.jwk, key_ops=["verify"])).kid == "k"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("max-age=60", 60.0),
        ("public, MAX-AGE=120, must-revalidate", 120.0),
        ('max-age="30"', 30.0),
        ("no-store", 0.0),
        ("private", None),
    ],
)
def test_max_age_parsing(value: Optional[str], expected: Optional[float]) -> None:
    assert max_age(value) == expected
