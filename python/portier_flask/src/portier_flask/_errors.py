"""Refusal codes and the JSON responses that carry them.

The codes are a public contract shared with Portier itself: clients and dashboards match on them,
so they never change once shipped. Messages are fixed strings so that no internal detail (the
token, key ids, parser output) can reach a client; details go to the log instead.
"""

from __future__ import annotations

import json
from typing import Dict, Mapping, Tuple

from flask import Response, current_app

#: Every refusal this package makes: code -> (HTTP status, fixed message).
ERROR_CODES: Mapping[str, Tuple[int, str]] = {
    "assertion_missing": (401, "sign in required: the request carries no identity assertion"),
    "assertion_invalid": (401, "the identity assertion is malformed or has invalid claims"),
    "assertion_expired": (401, "the identity assertion has expired"),
    "assertion_audience_mismatch": (401, "the identity assertion was issued for another service"),
    "assertion_issuer_mismatch": (401, "the identity assertion was issued by another issuer"),
    "assertion_request_mismatch": (401, "the identity assertion was issued for another request"),
    "assertion_unknown_key": (401, "the identity assertion was signed by an unknown key"),
    "jwks_unavailable": (503, "signing keys are unavailable; try again shortly"),
    "plan_required": (403, "your subscription plan does not include this"),
    "feature_required": (403, "your account does not have the feature this requires"),
    "org_role_required": (403, "your organization role does not allow this"),
    "org_permission_required": (403, "your organization permissions do not allow this"),
}


class PortierAuthError(Exception):
    """A refusal: the request could not be authenticated or authorized.

    ``code``, ``status`` and ``message`` are what the client gets. ``detail`` is for the log only
    and never contains the token; it is also what ``str()`` shows after the code.
    """

    code: str
    status: int
    message: str
    detail: str

    def __init__(self, code: str, detail: str = "") -> None:
        """Builds the refusal ``code`` (a key of :data:`ERROR_CODES`) with a log-only detail."""
        if code not in ERROR_CODES:
            raise ValueError(f"unknown Portier refusal code {code!r}")
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.status, self.message = ERROR_CODES[code]
        self.detail = detail


def www_authenticate(code: str) -> str:
    """The ``WWW-Authenticate`` value for a 401 with ``code`` (RFC 6750 section 3)."""
    if code == "assertion_missing":
        return 'Bearer realm="portier"'
    return f'Bearer realm="portier", error="invalid_token", error_description="{code}"'


def refusal_response(code: str) -> Response:
    """The JSON response for the refusal ``code``, in Portier's own error shape.

    ``{"error": code, "message": fixed text}``, ``application/json``, ``Cache-Control: no-store``,
    and ``WWW-Authenticate`` on 401s. Must be called inside an application context.
    """
    status, message = ERROR_CODES[code]
    body = json.dumps({"error": code, "message": message}, separators=(",", ":"))
    headers: Dict[str, str] = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = www_authenticate(code)
    response: Response = current_app.response_class(
        body, status=status, headers=headers, mimetype="application/json"
    )
    return response
