"""Settings: arguments, app.config, defaults, and clear errors at init_app time."""

from __future__ import annotations

from typing import Any, Dict

import pytest
from conftest import Harness, mint
from flask import Flask

from portier_flask import PortierAuth, PortierConfigError


def app_with(config: Dict[str, Any]) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    return app


def test_missing_jwks_url_is_an_error() -> None:
    with pytest.raises(PortierConfigError, match="PORTIER_JWKS_URL"):
        PortierAuth(app_with({}), audience="flask")


def test_missing_audience_is_an_error() -> None:
    with pytest.raises(PortierConfigError, match="PORTIER_AUDIENCE"):
        PortierAuth(app_with({}), jwks_url="http://127.0.0.1:9/jwks")


def test_deferred_init_app_checks_too() -> None:
    auth = PortierAuth(jwks_url="http://127.0.0.1:9/jwks")
    app = app_with({})
    with pytest.raises(PortierConfigError):
        auth.init_app(app)
    assert "portier" not in app.extensions


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"jwks_url": "ftp://example.com/jwks"}, "http"),
        ({"jwks_url": "file:///etc/jwks.json"}, "http"),
        ({"jwks_url": "http:///nohost"}, "http"),
        ({"audience": ""}, "audience"),
        ({"issuer": ""}, "issuer"),
        ({"header": "X Bad Header"}, "header"),
        ({"header": ""}, "header"),
        ({"leeway": -1}, "leeway"),
        ({"leeway": 61}, "leeway"),
        ({"leeway": "5"}, "leeway"),
        ({"jwks_cache_seconds": 0}, "jwks_cache_seconds"),
        ({"unknown_kid_cooldown_seconds": -1}, "unknown_kid_cooldown_seconds"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": True}, "timeout"),
    ],
)
def test_invalid_settings_are_errors(options: Dict[str, Any], match: str) -> None:
    kwargs: Dict[str, Any] = {"jwks_url": "http://127.0.0.1:9/jwks", "audience": "flask"}
    kwargs.update(options)
    with pytest.raises(PortierConfigError, match=match):
        PortierAuth(app_with({}), **kwargs)


def test_config_values_are_a_string() -> None:
    with pytest.raises(PortierConfigError, match="PORTIER_AUDIENCE"):
        PortierAuth(app_with({"PORTIER_AUDIENCE": 5}), jwks_url="http://127.0.0.1:9/jwks")


def test_settings_from_app_config(h: Harness) -> None:
    app = app_with(
        {
            "TESTING": True,
            "PORTIER_JWKS_URL": h.jwks.url,
            "PORTIER_AUDIENCE": "api",
            "PORTIER_ISSUER": "portier-eu",
            "PORTIER_ASSERTION_HEADER": "X-Identity",
        }
    )
    auth = PortierAuth(app)
    with app.app_context():
        s = auth.settings()
    assert (s.jwks_url, s.audience, s.issuer, s.header) == (
        h.jwks.url,
        "api",
        "portier-eu",
        "X-Identity",
    )


def test_explicit_arguments_win_over_app_config(h: Harness) -> None:
    app = app_with(
        {
            "PORTIER_JWKS_URL": "http://127.0.0.1:9/wrong",
            "PORTIER_AUDIENCE": "wrong",
            "PORTIER_ISSUER": "wrong",
            "PORTIER_ASSERTION_HEADER": "X-Wrong",
        }
    )
    auth = PortierAuth(
        app, jwks_url=h.jwks.url, audience="flask", issuer="portier", header="X-Portier-Assertion"
    )
    with app.app_context():
        s = auth.settings()
    assert (s.jwks_url, s.audience, s.issuer, s.header) == (
        h.jwks.url,
        "flask",
        "portier",
        "X-Portier-Assertion",
    )


def test_defaults() -> None:
    app = app_with({})
    auth = PortierAuth(app, jwks_url="https://portier.internal/jwks", audience="flask")
    with app.app_context():
        s = auth.settings()
    assert s.issuer == "portier"
    assert s.header == "X-Portier-Assertion"
    assert (s.leeway, s.jwks_cache_seconds, s.unknown_kid_cooldown_seconds, s.timeout) == (
        5,
        300,
        10,
        2.0,
    )


def test_one_instance_serves_several_apps(h: Harness) -> None:
    auth = PortierAuth(jwks_url=h.jwks.url)
    a = app_with({"TESTING": True, "PORTIER_AUDIENCE": "flask"})
    b = app_with({"TESTING": True, "PORTIER_AUDIENCE": "billing"})
    auth.init_app(a)
    auth.init_app(b)
    from portier_flask import require_auth

    for app in (a, b):
        app.add_url_rule("/api/books/b1", "book", require_auth(lambda: "ok"))
    token = mint(h.key)  # aud "flask"
    assert (
        a.test_client().get("/api/books/b1", headers={"X-Portier-Assertion": token}).status_code
        == 200
    )
    assert (
        b.test_client().get("/api/books/b1", headers={"X-Portier-Assertion": token}).status_code
        == 401
    )


def test_init_app_twice_is_an_error() -> None:
    app = app_with({})
    PortierAuth(app, jwks_url="http://127.0.0.1:9/jwks", audience="flask")
    with pytest.raises(RuntimeError, match="already"):
        PortierAuth(app, jwks_url="http://127.0.0.1:9/jwks", audience="flask")
