"""Clerk has() semantics on PortierUser, without HTTP."""

from __future__ import annotations

from typing import List

import pytest

from portier_flask import PortierUser, has_entitlement

PLANS = ["u:pro", "o:business"]


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("pro", True),
        ("org:pro", False),
        ("o:pro", False),
        ("organization:pro", False),
        ("user:pro", True),
        ("u:pro", True),
        ("business", True),
        ("o:business", True),
        ("org:business", True),
        ("organization:business", True),
        ("user:business", False),
        ("enterprise", False),
        ("", False),
        ("org:", False),
        ("Pro", False),
    ],
)
def test_plan_vectors(requested: str, expected: bool) -> None:
    assert (
        PortierUser(id="user_1", session_id="sess_1", plans=tuple(PLANS)).has_plan(requested)
        is expected
    )


@pytest.mark.parametrize(
    ("entries", "requested", "expected"),
    [
        (["uo:chat"], "chat", True),
        (["uo:chat"], "org:chat", True),
        (["ou:chat"], "user:chat", True),
        (["chat"], "chat", False),  # no scope: never matches
        (["x:chat"], "chat", False),  # unknown scope
        (["u:"], "", False),
        ([" u:chat "], "chat", True),
        (["u:a:b"], "a:b", True),
        (["o:a:b"], "org:a:b", True),
    ],
)
def test_entitlement_edge_cases(entries: List[str], requested: str, expected: bool) -> None:
    assert has_entitlement(entries, requested) is expected


def test_features_use_the_same_rules() -> None:
    user = PortierUser(
        id="user_1",
        session_id="sess_1",
        features=("o:reservations", "u:dashboard", "uo:support-chat", "o:impersonation"),
    )
    assert user.has_feature("dashboard")
    assert not user.has_feature("org:dashboard")
    assert user.has_feature("org:reservations")
    assert not user.has_feature("pro")


def test_roles_and_permissions() -> None:
    user = PortierUser(
        id="user_1",
        session_id="sess_1",
        org_id="org_1",
        org_role="org:admin",
        org_permissions=("org:posts:edit",),
    )
    assert user.has_role("admin") and user.has_role("org:admin")
    assert not user.has_role("member")
    assert user.has_permission("org:posts:edit")
    assert not user.has_permission("posts:edit")
    nobody = PortierUser(id="user_1", session_id="sess_1")
    assert not nobody.has_role("admin") and not nobody.has_permission("org:posts:edit")
    assert not nobody.is_impersonated
    assert PortierUser(id="user_1", session_id="sess_1", actor="user_2").is_impersonated
