"""No token text in response bodies or logs, whatever the refusal."""

from __future__ import annotations

import logging
import time
from typing import Callable, Dict

import pytest
from conftest import Harness, claims, es256_key, mint, raw_token


def tokens(h: Harness) -> Dict[str, Callable[[], str]]:
    now = int(time.time())
    return {
        "valid": lambda: mint(h.key),
        "expired": lambda: mint(h.key, iat=now - 500, exp=now - 300),
        "audience": lambda: mint(h.key, aud="other"),
        "issuer": lambda: mint(h.key, iss="other"),
        "request": lambda: mint(h.key, htu="/api/other"),
        "unknown_key": lambda: mint(es256_key("stranger")),
        "bad_signature": lambda: mint(es256_key(h.key.kid)),
        "bad_claims": lambda: mint(h.key, sub="bob"),
        "none": lambda: raw_token({"alg": "none", "typ": "JWT", "kid": h.key.kid}, claims(), b"s"),
        "plan": lambda: mint(h.key, htu="/api/pro", plans=[]),
    }


@pytest.mark.parametrize(
    "case",
    [
        "valid",
        "expired",
        "audience",
        "issuer",
        "request",
        "unknown_key",
        "bad_signature",
        "bad_claims",
        "none",
        "plan",
    ],
)
def test_no_token_text_in_bodies_or_logs(
    h: Harness, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = tokens(h)[case]()
    path = "/api/pro" if case == "plan" else "/api/books/b1"
    with caplog.at_level(logging.DEBUG):
        resp = h.get(path, token)
        optional = h.get("/api/optional", token)
    if case == "valid":
        assert resp.status_code == 200
    else:
        assert resp.status_code in (401, 403)
        assert "portier_flask" in caplog.text  # the refusal was logged...
    pieces = [token, *[p for p in token.split(".") if len(p) >= 8]]
    for body in (resp.get_data(as_text=True), optional.get_data(as_text=True)):
        for piece in pieces:
            assert piece not in body
    for piece in pieces:
        assert piece not in caplog.text  # ...without any of the token


def test_jwks_outage_is_logged_as_a_warning(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    h.jwks.stop()
    with caplog.at_level(logging.INFO, logger="portier_flask"):
        resp = h.get("/api/books/b1", mint(h.key))
    assert resp.status_code == 503
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "JWKS" in warnings[0].getMessage()


def test_refusals_are_logged_at_info_with_the_code(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="portier_flask"):
        h.get("/api/books/b1", mint(h.key, aud="other"))
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert refusals[0].levelno == logging.INFO
    assert "assertion_audience_mismatch" in refusals[0].getMessage()
