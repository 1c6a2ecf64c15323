"""The verified caller and Clerk's ``has()`` semantics for plans, features, roles, permissions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple

_USER_ID = re.compile(r"user_[A-Za-z0-9]+\Z")
_SESSION_ID = re.compile(r"sess_[A-Za-z0-9]+\Z")

_ORG_PREFIXES = ("org:", "o:", "organization:")
_USER_PREFIXES = ("user:", "u:")


class ClaimsError(ValueError):
    """A verified assertion whose claims are missing or of the wrong type or shape."""


def _org_prefixed(role: str) -> str:
    return role if role.startswith("org:") else f"org:{role}"


def has_entitlement(entries: Sequence[str], requested: str) -> bool:
    """Clerk ``has({plan})`` / ``has({feature})`` over ``"scope:name"`` entries.

    An entry's scope is ``u`` (user), ``o`` (organization) or ``ou``/``uo`` (both); an entry
    without a colon or with another scope never matches. ``requested`` may carry ``o:``,
    ``org:`` or ``organization:`` (org scope) or ``u:``/``user:`` (user scope); an unscoped name
    matches either scope.
    """
    want_user, want_org, name = True, True, requested
    for prefix in _ORG_PREFIXES:
        if requested.startswith(prefix):
            want_user, want_org, name = False, True, requested[len(prefix) :]
            break
    else:
        for prefix in _USER_PREFIXES:
            if requested.startswith(prefix):
                want_user, want_org, name = True, False, requested[len(prefix) :]
                break
    if not name:
        return False
    for entry in entries:
        scope, sep, entry_name = entry.strip().partition(":")
        if not sep or entry_name.strip() != name:
            continue
        user = scope in ("u", "uo", "ou")
        org = scope in ("o", "uo", "ou")
        if (want_user and user) or (want_org and org):
            return True
    return False


@dataclass(frozen=True)
class PortierUser:
    """The caller Portier vouched for, read from a verified assertion.

    Attributes:
        id: the Clerk user id (``user_...``), the assertion's ``sub``.
        session_id: the Clerk session id (``sess_...``), ``sid``.
        org_id: the active organization's id, or ``None`` without an active organization.
        org_slug: the active organization's slug, if any.
        org_role: the caller's role in the active organization, always ``org:``-prefixed
            (``"org:admin"``), or ``None``.
        org_permissions: the caller's permissions in the active organization
            (``("org:posts:edit", ...)``).
        plans: Clerk-scoped plan entries as Portier sent them (``("u:pro", "o:business")``).
        features: Clerk-scoped feature entries (``("u:dashboard", "o:reservations")``).
        actor: the impersonator's user id (``act.sub``) when the session is an impersonation.
    """

    id: str
    session_id: str
    org_id: Optional[str] = None
    org_slug: Optional[str] = None
    org_role: Optional[str] = None
    org_permissions: Tuple[str, ...] = ()
    plans: Tuple[str, ...] = ()
    features: Tuple[str, ...] = ()
    actor: Optional[str] = None

    def has_plan(self, name: str) -> bool:
        """Clerk ``has({plan: name})``: ``"pro"``, ``"org:business"``, ``"user:pro"``..."""
        return has_entitlement(self.plans, name)

    def has_feature(self, name: str) -> bool:
        """Clerk ``has({feature: name})``, scoped like :meth:`has_plan`."""
        return has_entitlement(self.features, name)

    def has_role(self, role: str) -> bool:
        """Clerk ``has({role})``: the active organization role; the ``org:`` prefix is optional."""
        return self.org_role is not None and self.org_role == _org_prefixed(role)

    def has_permission(self, permission: str) -> bool:
        """Clerk ``has({permission})``: exact match, e.g. ``"org:posts:edit"``."""
        return permission in self.org_permissions

    @property
    def is_impersonated(self) -> bool:
        """True when someone (:attr:`actor`) acts as this user."""
        return self.actor is not None


def _str(claims: Mapping[str, Any], name: str, *, required: bool) -> Optional[str]:
    value = claims.get(name)
    if value is None:
        if required:
            raise ClaimsError(f"claim {name!r} is missing")
        return None
    if not isinstance(value, str):
        raise ClaimsError(f"claim {name!r} is not a string")
    return value


def _str_list(claims: Mapping[str, Any], name: str) -> Tuple[str, ...]:
    value = claims.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ClaimsError(f"claim {name!r} is not a list of strings")
    return tuple(value)


def user_from_claims(claims: Mapping[str, Any]) -> PortierUser:
    """Builds the user from the claims of an assertion whose signature was already verified.

    Raises :class:`ClaimsError` when a claim is missing or has the wrong type.
    """
    sub = _str(claims, "sub", required=True)
    if sub is None or not _USER_ID.match(sub):
        raise ClaimsError("claim 'sub' is not a Clerk user id")
    sid = _str(claims, "sid", required=True)
    if sid is None or not _SESSION_ID.match(sid):
        raise ClaimsError("claim 'sid' is not a Clerk session id")

    org_id = org_slug = org_role = None
    org_permissions: Tuple[str, ...] = ()
    org = claims.get("org")
    if org is not None:
        if not isinstance(org, dict):
            raise ClaimsError("claim 'org' is not an object")
        org_id = _str(org, "id", required=True)
        if not org_id:
            raise ClaimsError("claim 'org.id' is empty")
        org_slug = _str(org, "slug", required=False)
        role = _str(org, "role", required=False)
        org_role = _org_prefixed(role) if role else None
        org_permissions = _str_list(org, "permissions")

    actor = None
    act = claims.get("act")
    if act is not None:
        if not isinstance(act, dict):
            raise ClaimsError("claim 'act' is not an object")
        actor = _str(act, "sub", required=True)

    return PortierUser(
        id=sub,
        session_id=sid,
        org_id=org_id,
        org_slug=org_slug,
        org_role=org_role,
        org_permissions=org_permissions,
        plans=_str_list(claims, "plans"),
        features=_str_list(claims, "features"),
        actor=actor,
    )
