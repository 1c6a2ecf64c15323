"""Verification of one identity assertion against the keys, the settings and the request."""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Dict, Mapping
from urllib.parse import unquote

import jwt

from ._errors import PortierAuthError
from ._jwks import JwksCache, JwksUnavailable, UnknownKey
from ._user import ClaimsError, PortierUser, user_from_claims

#: Algorithms an assertion may name; each must also match its key (see ``_jwks``).
ALGORITHMS = ("ES256", "EdDSA")
#: Longer header values are refused before any parsing (Portier's assertions are ~1 KB).
MAX_ASSERTION_BYTES = 8192
REQUIRED_CLAIMS = ("iss", "aud", "sub", "sid", "iat", "exp", "htm", "htu")

_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\Z")


def _short(value: Any) -> str:
    """A log-safe rendering of an attacker-controlled header field."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Verifier:
    """Checks assertions: header, key, signature, ``iss``/``aud``/time claims, claim types, and
    the binding to the request (``htm``/``htu``)."""

    def __init__(
        self,
        *,
        keys: JwksCache,
        issuer: str,
        audience: str,
        leeway: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Builds a verifier over ``keys`` for one issuer and one audience."""
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self._clock = clock

    def verify(self, token: str, *, method: str, path: str) -> PortierUser:
        """Verifies ``token`` for a request ``method`` on the decoded ``path``
        (``script_root + path``); returns the user or raises :class:`PortierAuthError`."""
        if len(token) > MAX_ASSERTION_BYTES:
            raise PortierAuthError("assertion_invalid", f"longer than {MAX_ASSERTION_BYTES} bytes")
        if not _COMPACT_JWS.match(token):
            raise PortierAuthError("assertion_invalid", "not a compact JWS")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise PortierAuthError("assertion_invalid", f"bad header: {exc}") from None

        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise PortierAuthError("assertion_invalid", f"alg {_short(alg)} is not accepted")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.upper() != "JWT":
            raise PortierAuthError("assertion_invalid", f"typ {_short(typ)} is not JWT")
        if "crit" in header:
            raise PortierAuthError("assertion_invalid", "crit header parameters not supported")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise PortierAuthError("assertion_invalid", "no kid")

        try:
            key = self.keys.get(kid)
        except UnknownKey:
            raise PortierAuthError("assertion_unknown_key", f"kid {_short(kid)}") from None
        except JwksUnavailable as exc:
            raise PortierAuthError("jwks_unavailable", str(exc)) from None
        if key.alg != alg:
            raise PortierAuthError(
                "assertion_invalid", f"alg {alg} does not match key {_short(kid)} ({key.alg})"
            )

        claims = self._decode(token, key.key, key.alg)
        self._check_claims(claims)
        try:
            user = user_from_claims(claims)
        except ClaimsError as exc:
            raise PortierAuthError("assertion_invalid", str(exc)) from None
        self._check_request(claims, method=method, path=path)
        return user

    def _decode(self, token: str, key: Any, alg: str) -> Dict[str, Any]:
        try:
            claims: Dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_iat": True,
                    "verify_nbf": True,
                    "verify_aud": True,
                    "verify_iss": True,
                    "require": list(REQUIRED_CLAIMS),
                },
            )
        except jwt.ExpiredSignatureError:
            raise PortierAuthError("assertion_expired", "exp is in the past") from None
        except jwt.InvalidAudienceError as exc:
            raise PortierAuthError("assertion_audience_mismatch", str(exc)) from None
        except jwt.InvalidIssuerError as exc:
            raise PortierAuthError("assertion_issuer_mismatch", str(exc)) from None
        except jwt.PyJWTError as exc:
            raise PortierAuthError("assertion_invalid", f"{type(exc).__name__}: {exc}") from None
        return claims

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        """Types PyJWT does not pin down, and the time checks done again with our clock."""
        if not isinstance(claims.get("iss"), str) or claims["iss"] != self.issuer:
            raise PortierAuthError("assertion_issuer_mismatch", "iss is not the issuer")
        if not isinstance(claims.get("aud"), str):
            # The spec makes aud a single string; a list is not an assertion Portier writes.
            raise PortierAuthError("assertion_invalid", "aud is not a string")
        if claims["aud"] != self.audience:
            raise PortierAuthError("assertion_audience_mismatch", "aud is not the audience")
        if not _is_number(claims.get("iat")) or not _is_number(claims.get("exp")):
            raise PortierAuthError("assertion_invalid", "iat/exp are not numbers")
        iat, exp = float(claims["iat"]), float(claims["exp"])
        now = self._clock()
        if exp <= now - self.leeway:
            raise PortierAuthError("assertion_expired", "exp is in the past")
        if iat > now + self.leeway:
            raise PortierAuthError("assertion_invalid", "iat is in the future")
        if exp < iat:
            raise PortierAuthError("assertion_invalid", "exp is before iat")
        for name in ("htm", "htu"):
            if not isinstance(claims.get(name), str) or not claims[name]:
                raise PortierAuthError("assertion_invalid", f"{name} is not a string")

    @staticmethod
    def _check_request(claims: Mapping[str, Any], *, method: str, path: str) -> None:
        htm, htu = claims["htm"], claims["htu"]
        if htm != method:
            raise PortierAuthError(
                "assertion_request_mismatch", f"htm {_short(htm)} but the method is {method}"
            )
        if "\ufffd" in path:
            # The request path was not valid UTF-8 (the WSGI layer replaced bytes): it cannot
            # be compared reliably with what Portier signed.
            raise PortierAuthError("assertion_request_mismatch", "the path is not valid UTF-8")
        try:
            signed_path = unquote(htu, errors="strict")
        except UnicodeDecodeError:
            raise PortierAuthError("assertion_request_mismatch", "htu is not UTF-8") from None
        if signed_path != path:
            raise PortierAuthError(
                "assertion_request_mismatch", f"htu {_short(htu)} but the path is {_short(path)}"
            )
