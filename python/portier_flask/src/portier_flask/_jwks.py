"""Portier's public keys: fetching, parsing and a thread-safe cache.

Only two key types are accepted, each with exactly one algorithm, so the verification algorithm
always comes from the key and never from the token:

- ``{"kty": "EC", "crv": "P-256"}`` -> ES256
- ``{"kty": "OKP", "crv": "Ed25519"}`` -> EdDSA
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import logging
import math
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import IO, Any, Callable, Dict, Mapping, NoReturn, Optional, Tuple, Union

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger("portier_flask")

PublicKey = Union[ec.EllipticCurvePublicKey, Ed25519PublicKey]

#: A JWKS document larger than this is refused (Portier publishes a handful of keys).
MAX_JWKS_BYTES = 1 << 20
#: A ``max-age`` below this (``0``, ``no-cache``...) is raised to it, so that a misconfigured
#: header cannot turn every request into a fetch.
MIN_MAX_AGE_SECONDS = 1.0

_B64URL = re.compile(r"[A-Za-z0-9_-]*\Z")
_MAX_AGE = re.compile(r"\s*max-age\s*=\s*\"?(\d+)\"?\s*\Z", re.IGNORECASE)

#: ``fetch(url, timeout) -> (body, Cache-Control header or None)``; raises ``JwksFetchError``.
Fetcher = Callable[[str, float], Tuple[bytes, Optional[str]]]


@dataclass(frozen=True)
class VerificationKey:
    """One published public key and the only algorithm it verifies."""

    kid: str
    alg: str
    key: PublicKey


class JwksFetchError(Exception):
    """The JWKS could not be fetched or parsed (the message is safe to log)."""


class JwksUnavailable(Exception):
    """No keys could be fetched and none usable are cached."""


class UnknownKey(Exception):
    """No published key has the token's ``kid``, even after the allowed refresh."""


# === parsing ===


def _b64url_decode(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not _B64URL.match(value):
        raise ValueError(f"{name} is not base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{name} is not base64url") from exc


def parse_key(jwk: Mapping[str, Any]) -> VerificationKey:
    """Parses one JWK; raises ``ValueError`` (with a loggable reason) for a key not accepted."""
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError("no kid")
    if "d" in jwk:
        # A private key in a public document: something is badly wrong upstream. Refuse it
        # loudly rather than verify with a key that anyone who read the JWKS could sign with.
        raise ValueError("the key contains private material ('d')")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise ValueError(f"use is {use!r}, not 'sig'")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise ValueError("key_ops does not allow 'verify'")
    kty, crv, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    if kty == "EC" and crv == "P-256":
        if alg is not None and alg != "ES256":
            raise ValueError(f"alg {alg!r} does not fit an EC P-256 key")
        x = _b64url_decode(jwk.get("x"), "x")
        y = _b64url_decode(jwk.get("y"), "y")
        if len(x) != 32 or len(y) != 32:
            raise ValueError("x/y are not 32 bytes")
        # from_encoded_point checks that the point is on the curve.
        point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
        return VerificationKey(kid, "ES256", point)
    if kty == "OKP" and crv == "Ed25519":
        if alg is not None and alg != "EdDSA":
            raise ValueError(f"alg {alg!r} does not fit an Ed25519 key")
        x = _b64url_decode(jwk.get("x"), "x")
        if len(x) != 32:
            raise ValueError("x is not 32 bytes")
        return VerificationKey(kid, "EdDSA", Ed25519PublicKey.from_public_bytes(x))
    raise ValueError(f"unsupported key type kty={kty!r} crv={crv!r}")


def parse_jwks(body: bytes) -> Dict[str, VerificationKey]:
    """Parses a JWKS document into ``{kid: key}``.

    Keys of other types or with bad material are skipped (and logged). A document that is not a
    JWKS, or that holds no usable key, raises ``JwksFetchError``: Portier always publishes its
    signing key, so an empty set is treated as a broken answer and the last good keys are kept.
    """
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise JwksFetchError("the JWKS is not JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksFetchError('the JWKS has no "keys" list')
    keys: Dict[str, VerificationKey] = {}
    for index, jwk in enumerate(doc["keys"]):
        if not isinstance(jwk, dict):
            log.warning("portier_flask: JWKS key #%d is not an object; skipped", index)
            continue
        try:
            key = parse_key(jwk)
        except ValueError as exc:
            log.info("portier_flask: JWKS key #%d skipped: %s", index, exc)
            continue
        if key.kid in keys:
            log.warning("portier_flask: JWKS kid %r appears twice; the first is kept", key.kid)
            continue
        keys[key.kid] = key
    if not keys:
        raise JwksFetchError("the JWKS holds no usable ES256/EdDSA key")
    return keys


def max_age(cache_control: Optional[str]) -> Optional[float]:
    """The ``max-age`` of a ``Cache-Control`` value; 0 for ``no-store``/``no-cache``; else None."""
    if not cache_control:
        return None
    result: Optional[float] = None
    for directive in cache_control.split(","):
        name = directive.strip().lower()
        if name in ("no-store", "no-cache"):
            return 0.0
        match = _MAX_AGE.match(directive)
        if match and result is None:
            result = float(match.group(1))
    return result


# === fetching ===


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Keys come from the configured URL only: a redirect is a failed fetch."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> NoReturn:
        """Refuses every redirect."""
        raise urllib.error.HTTPError(req.full_url, code, f"redirect refused ({msg})", headers, fp)


def http_fetch(url: str, timeout: float) -> Tuple[bytes, Optional[str]]:
    """GETs the JWKS at ``url``: no proxies from the environment, no redirects, 200 only.

    ``timeout`` bounds each network operation and (approximately) the whole body read.
    """
    from . import __version__

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked at init_app
        url,
        headers={"Accept": "application/json", "User-Agent": f"portier-flask/{__version__}"},
    )
    deadline = time.monotonic() + timeout
    try:
        with opener.open(request, timeout=timeout) as response:
            if response.status != 200:
                raise JwksFetchError(f"HTTP {response.status}")
            chunks = []
            size = 0
            while True:
                chunk = response.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_JWKS_BYTES:
                    raise JwksFetchError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise JwksFetchError("the JWKS download took longer than the timeout")
                chunks.append(chunk)
            cache_control = response.headers.get("Cache-Control")
            return b"".join(chunks), cache_control
    except urllib.error.HTTPError as exc:
        exc.close()  # the error carries the open response
        raise JwksFetchError(f"HTTP {exc.code}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise JwksFetchError(f"{type(exc).__name__}: {exc}") from None


# === cache ===


class JwksCache:
    """Thread-safe, lazily fetched key set.

    - Keys are kept for the response's ``max-age`` (at least ``MIN_MAX_AGE_SECONDS``), bounded
      by ``max_ttl``; without ``max-age`` for ``max_ttl``.
    - An unknown ``kid`` forces a refresh at most once per ``cooldown`` seconds, so tokens with
      random kids cannot turn into a flood of fetches.
    - One fetch at a time: concurrent callers that need keys wait for it and share its result.
    - A failed refresh keeps the last good keys; after a failure the next fetch is attempted no
      sooner than ``cooldown`` seconds later.
    """

    def __init__(
        self,
        url: str,
        *,
        max_ttl: float,
        cooldown: float,
        timeout: float,
        fetch: Fetcher = http_fetch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Creates an empty cache for the JWKS at ``url``; nothing is fetched until needed."""
        self.url = url
        parts = urllib.parse.urlsplit(url)
        # for logs: without any user:password@ and without the query string
        self._log_url = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        self._max_ttl = max_ttl
        self._cooldown = cooldown
        self._timeout = timeout
        self._fetch = fetch
        self._clock = clock
        self._state_lock = threading.Lock()  # guards the fields below; never held over I/O
        self._fetch_lock = threading.Lock()  # one fetch at a time
        self._keys: Optional[Dict[str, VerificationKey]] = None
        self._expires_at = -math.inf
        self._last_forced = -math.inf
        self._last_failure = -math.inf
        self._attempts = 0  # fetch attempts finished, to let waiters share a result
        self._last_attempt_ok = False

    def get(self, kid: str) -> VerificationKey:
        """The key named ``kid``; raises ``UnknownKey`` or ``JwksUnavailable``."""
        with self._state_lock:
            keys, expires_at, attempts = self._keys, self._expires_at, self._attempts
        fetched = False
        if keys is None or self._clock() >= expires_at:
            keys, fetched = self._refresh(attempts, forced=False)
        key = keys.get(kid)
        if key is not None:
            return key
        if fetched:
            # These keys were just fetched for this call: asking again cannot help.
            raise UnknownKey(kid)
        with self._state_lock:
            now = self._clock()
            if now - self._last_forced < self._cooldown:
                raise UnknownKey(kid)
            self._last_forced = now
            attempts = self._attempts
        keys, _ = self._refresh(attempts, forced=True)
        key = keys.get(kid)
        if key is None:
            raise UnknownKey(kid)
        return key

    def _refresh(
        self, seen_attempts: int, *, forced: bool
    ) -> Tuple[Dict[str, VerificationKey], bool]:
        """Fetches new keys, or shares the result of a fetch that finished while waiting.

        Returns the keys and whether they come from a fetch made for (or shared by) this call.
        Falls back to the last good keys when the fetch fails, unless ``forced`` (a caller whose
        kid is unknown gains nothing from the old keys and gets ``JwksUnavailable``).
        """
        with self._fetch_lock:
            with self._state_lock:
                stale = self._keys
                if self._attempts != seen_attempts:
                    if self._last_attempt_ok and stale is not None:
                        return stale, True
                    return self._fallback(stale, forced, "the last fetch failed")
                if self._clock() - self._last_failure < self._cooldown:
                    return self._fallback(stale, forced, "a fetch failed recently")
            try:
                body, cache_control = self._fetch(self.url, self._timeout)
                keys = parse_jwks(body)
            except JwksFetchError as exc:
                with self._state_lock:
                    self._attempts += 1
                    self._last_attempt_ok = False
                    self._last_failure = self._clock()
                log.warning(
                    "portier_flask: fetching the JWKS from %s failed: %s%s",
                    self._log_url,
                    exc,
                    "; keeping the last good keys" if stale is not None else "",
                )
                return self._fallback(stale, forced, str(exc))
            ttl = self._ttl(cache_control)
            with self._state_lock:
                self._keys = keys
                self._expires_at = self._clock() + ttl
                self._attempts += 1
                self._last_attempt_ok = True
            log.info(
                "portier_flask: fetched %d key(s) from %s (kids %s), kept %.0f s",
                len(keys),
                self._log_url,
                ", ".join(sorted(keys)),
                ttl,
            )
            return keys, True

    @staticmethod
    def _fallback(
        stale: Optional[Dict[str, VerificationKey]], forced: bool, why: str
    ) -> Tuple[Dict[str, VerificationKey], bool]:
        if stale is not None and not forced:
            return stale, False
        raise JwksUnavailable(why)

    def _ttl(self, cache_control: Optional[str]) -> float:
        age = max_age(cache_control)
        if age is None:
            return self._max_ttl
        return min(max(age, MIN_MAX_AGE_SECONDS), self._max_ttl)
