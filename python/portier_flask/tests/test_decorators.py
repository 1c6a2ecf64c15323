"""The decorators' 403 refusals, current_user(), flask.g, and misuse."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import REMOVE, Harness, assert_refusal, mint
from flask import Flask, g, jsonify

from portier_flask import (
    PortierAuth,
    current_user,
    require_auth,
    require_feature,
    require_org_permission,
    require_org_role,
    require_plan,
)

# === plans, features, roles, permissions ===


def test_require_plan_allows_any_of(h: Harness) -> None:
    assert h.get("/api/pro", mint(h.key, htu="/api/pro")).status_code == 200
    only_enterprise = mint(h.key, htu="/api/pro", plans=["o:enterprise"])
    assert h.get("/api/pro", only_enterprise).status_code == 200


def test_require_plan_refuses_with_403(h: Harness) -> None:
    token = mint(h.key, htu="/api/pro", plans=["u:free"])
    assert_refusal(h.get("/api/pro", token), 403, "plan_required")
    # an entry without a scope never matches
    token = mint(h.key, htu="/api/pro", plans=["pro"])
    assert_refusal(h.get("/api/pro", token), 403, "plan_required")
    # org:pro asks the organization; a user plan does not count
    assert_refusal(h.get("/api/org-plan", mint(h.key, htu="/api/org-plan")), 403, "plan_required")
    token = mint(h.key, htu="/api/org-plan", plans=["ou:pro"])
    assert h.get("/api/org-plan", token).status_code == 200


def test_require_feature(h: Harness) -> None:
    assert h.get("/api/dashboard", mint(h.key, htu="/api/dashboard")).status_code == 200
    assert_refusal(h.get("/api/beta", mint(h.key, htu="/api/beta")), 403, "feature_required")
    token = mint(h.key, htu="/api/dashboard", features=["o:reservations"])
    assert_refusal(h.get("/api/dashboard", token), 403, "feature_required")


def test_require_org_role(h: Harness) -> None:
    assert h.get("/api/admin", mint(h.key, htu="/api/admin")).status_code == 200
    # a role written without the org: prefix is normalised
    token = mint(h.key, htu="/api/admin", org={"id": "org_1", "role": "admin"})
    assert h.get("/api/admin", token).status_code == 200
    token = mint(h.key, htu="/api/admin", org={"id": "org_1", "role": "org:member"})
    assert_refusal(h.get("/api/admin", token), 403, "org_role_required")
    assert_refusal(
        h.get("/api/admin", mint(h.key, htu="/api/admin", org=REMOVE)), 403, "org_role_required"
    )
    token = mint(h.key, htu="/api/billing", org={"id": "org_1", "role": "owner"})
    assert h.get("/api/billing", token).status_code == 200


def test_require_org_permission(h: Harness) -> None:
    assert h.get("/api/posts/edit", mint(h.key, htu="/api/posts/edit")).status_code == 200
    assert_refusal(
        h.get("/api/posts/delete", mint(h.key, htu="/api/posts/delete")),
        403,
        "org_permission_required",
    )
    token = mint(h.key, htu="/api/posts/edit", org=REMOVE)
    assert_refusal(h.get("/api/posts/edit", token), 403, "org_permission_required")


def test_stacked_decorators_verify_once_and_check_all(h: Harness) -> None:
    assert h.get("/api/stacked", mint(h.key, htu="/api/stacked")).status_code == 200
    token = mint(h.key, htu="/api/stacked", features=[])
    assert_refusal(h.get("/api/stacked", token), 403, "feature_required")
    assert_refusal(h.get("/api/stacked"), 401, "assertion_missing")


def test_authorization_decorators_imply_authentication(h: Harness) -> None:
    for path in ("/api/pro", "/api/dashboard", "/api/admin", "/api/posts/edit"):
        assert_refusal(h.get(path), 401, "assertion_missing")
        assert_refusal(
            h.get(path, mint(h.key, htu=path, aud="x")), 401, "assertion_audience_mismatch"
        )


# === current_user() and flask.g ===


def test_current_user_in_an_undecorated_view(h: Harness) -> None:
    assert h.get("/api/optional").get_json() == {"user": None, "g": None}
    resp = h.get("/api/optional", mint(h.key, htu="/api/optional"))
    assert resp.get_json() == {"user": "user_123", "g": "user_123"}
    # an invalid assertion does not refuse an optional view: it is no user
    resp = h.get("/api/optional", mint(h.key, htu="/api/elsewhere"))
    assert resp.status_code == 200
    assert resp.get_json() == {"user": None, "g": None}


def test_a_shared_app_context_does_not_leak_the_previous_user(h: Harness) -> None:
    with h.app.app_context():
        first = h.get("/api/optional", mint(h.key, htu="/api/optional"))
        assert first.get_json()["user"] == "user_123"
        second = h.get("/api/optional")
        assert second.get_json() == {"user": None, "g": None}


def test_user_is_frozen(h: Harness) -> None:
    app = Flask(__name__)
    app.config["TESTING"] = True
    PortierAuth(app, jwks_url=h.jwks.url, audience="flask")

    @app.get("/api/books/b1")
    @require_auth
    def view() -> Any:
        user = current_user()
        assert user is not None
        with pytest.raises(AttributeError):
            user.id = "user_evil"  # type: ignore[misc]
        assert isinstance(user.plans, tuple)
        return jsonify(ok=True)

    resp = app.test_client().get("/api/books/b1", headers={"X-Portier-Assertion": mint(h.key)})
    assert resp.status_code == 200


def test_async_views_are_guarded(h: Harness) -> None:
    pytest.importorskip("asgiref")
    app = Flask(__name__)
    app.config["TESTING"] = True
    PortierAuth(app, jwks_url=h.jwks.url, audience="flask")

    @app.get("/api/books/b1")
    @require_plan("pro")
    async def view() -> Any:
        user = current_user()
        assert user is not None
        return jsonify(user=user.id)

    client = app.test_client()
    resp = client.get("/api/books/b1", headers={"X-Portier-Assertion": mint(h.key)})
    assert resp.get_json() == {"user": "user_123"}
    assert_refusal(client.get("/api/books/b1"), 401, "assertion_missing")


# === misuse ===


def test_decorators_need_names() -> None:
    with pytest.raises(TypeError):
        require_plan()
    with pytest.raises(TypeError):
        require_feature("")
    with pytest.raises(TypeError):
        require_org_role(1)  # type: ignore[arg-type]

    def view() -> str:
        return "x"

    with pytest.raises(TypeError):
        require_org_permission(view)  # type: ignore[arg-type]  # forgot the parentheses' names


def test_without_init_app_the_view_fails_loudly() -> None:
    app = Flask(__name__)
    app.config["TESTING"] = True

    @app.get("/x")
    @require_auth
    def view() -> str:
        return "reached"

    with pytest.raises(RuntimeError, match="not initialised"):
        app.test_client().get("/x")
    app.config["TESTING"] = False
    assert app.test_client().get("/x").status_code == 500


def test_the_extension_is_registered(h: Harness) -> None:
    ext = h.app.extensions["portier"]
    assert isinstance(ext, PortierAuth)
    with h.app.app_context():
        assert ext.settings().audience == "flask"
        assert ext.keys.url == h.jwks.url


def test_g_holds_the_user_inside_decorated_views(h: Harness) -> None:
    app = Flask(__name__)
    app.config["TESTING"] = True
    PortierAuth(app, jwks_url=h.jwks.url, audience="flask")

    @app.get("/api/books/b1")
    @require_auth
    def view() -> Any:
        return jsonify(user=g.portier_user.id, same=g.portier_user is current_user())

    resp = app.test_client().get("/api/books/b1", headers={"X-Portier-Assertion": mint(h.key)})
    assert resp.get_json() == {"user": "user_123", "same": True}
