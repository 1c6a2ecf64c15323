"""Verify Portier's signed per-request identity assertion in a Flask app.

Portier (the authorization sidecar in front of this app) signs, per request, who the caller is:
a compact JWS in ``X-Portier-Assertion``, bound to the request's method and path. This package
checks it against Portier's JWKS and gives views the caller::

    from portier_flask import PortierAuth, current_user, require_auth, require_plan

    PortierAuth(app, jwks_url="http://127.0.0.1:9901/.well-known/jwks.json", audience="flask")

    @app.get("/api/books")
    @require_plan("pro")
    def books():
        return {"user": current_user().id}

Plain ``x-portier-*`` identity headers are never read.
"""

from ._errors import ERROR_CODES, PortierAuthError
from ._user import PortierUser, has_entitlement
from .extension import (
    PortierAuth,
    PortierConfigError,
    PortierSettings,
    current_user,
    require_auth,
    require_feature,
    require_org_permission,
    require_org_role,
    require_plan,
)

__version__ = "0.1.0"

__all__ = [
    "ERROR_CODES",
    "PortierAuth",
    "PortierAuthError",
    "PortierConfigError",
    "PortierSettings",
    "PortierUser",
    "__version__",
    "current_user",
    "has_entitlement",
    "require_auth",
    "require_feature",
    "require_org_permission",
    "require_org_role",
    "require_plan",
]
