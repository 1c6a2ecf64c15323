"""The Flask extension, the view decorators and :func:`current_user`."""

from __future__ import annotations

import functools
import inspect
import logging
import re
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, Union, cast, overload
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, g, request

from ._errors import PortierAuthError, refusal_response
from ._jwks import JwksCache
from ._user import PortierUser
from ._verify import Verifier

log = logging.getLogger("portier_flask")

F = TypeVar("F", bound=Callable[..., Any])
#: A check run on a verified user: returns a refusal code, or None to allow.
Check = Callable[[PortierUser], Optional[str]]

DEFAULT_ISSUER = "portier"
DEFAULT_HEADER = "X-Portier-Assertion"
MAX_LEEWAY_SECONDS = 60

_ENVIRON_KEY = "portier_flask.outcome"
_TOKEN_CHARS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


class PortierConfigError(ValueError):
    """PortierAuth's settings are missing or invalid (raised by ``init_app``)."""


@dataclass(frozen=True)
class PortierSettings:
    """The resolved settings of one app (explicit arguments, then ``app.config``, then defaults)."""

    jwks_url: str
    audience: str
    issuer: str
    header: str
    leeway: float
    jwks_cache_seconds: float
    unknown_kid_cooldown_seconds: float
    timeout: float


@dataclass
class _AppState:
    settings: PortierSettings
    verifier: Verifier


@dataclass
class _Outcome:
    user: Optional[PortierUser]
    error: Optional[PortierAuthError]
    logged: bool = False


def _number(name: str, value: Any, *, minimum: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PortierConfigError(f"PortierAuth: {name} must be a number, not {value!r}")
    if value < minimum or (strict and value == minimum):
        relation = "greater than" if strict else "at least"
        raise PortierConfigError(f"PortierAuth: {name} must be {relation} {minimum}")
    return float(value)


class PortierAuth:
    """Verifies Portier's signed identity assertion on the requests of a Flask app.

    Settings come from the arguments, else from ``app.config`` (``PORTIER_JWKS_URL``,
    ``PORTIER_AUDIENCE``, ``PORTIER_ISSUER``, ``PORTIER_ASSERTION_HEADER``), else from the
    defaults. ``jwks_url`` and ``audience`` are required: ``init_app`` raises
    :class:`PortierConfigError` without them.

    Args:
        app: the app to initialise now (or call :meth:`init_app` later, once per app).
        jwks_url: Portier's JWKS URL (``http://`` or ``https://``).
        audience: this upstream's name in Portier's config; the assertion's ``aud``.
        issuer: Portier's configured name; the assertion's ``iss`` (default ``"portier"``).
        header: the request header carrying the assertion (default ``X-Portier-Assertion``).
        leeway: clock skew allowed on ``exp`` and ``iat``, in seconds (0 to 60).
        jwks_cache_seconds: the longest time keys are kept (a shorter ``max-age`` wins).
        unknown_kid_cooldown_seconds: at most one refresh per this window for unknown kids (and
            after a failed fetch).
        timeout: the JWKS fetch timeout, in seconds.
    """

    def __init__(
        self,
        app: Optional[Flask] = None,
        *,
        jwks_url: Optional[str] = None,
        audience: Optional[str] = None,
        issuer: Optional[str] = None,
        header: Optional[str] = None,
        leeway: float = 5,
        jwks_cache_seconds: float = 300,
        unknown_kid_cooldown_seconds: float = 10,
        timeout: float = 2.0,
    ) -> None:
        """Stores the settings; initialises ``app`` when given."""
        self._jwks_url = jwks_url
        self._audience = audience
        self._issuer = issuer
        self._header = header
        self._leeway = leeway
        self._jwks_cache_seconds = jwks_cache_seconds
        self._cooldown = unknown_kid_cooldown_seconds
        self._timeout = timeout
        self._apps: weakref.WeakKeyDictionary[Flask, _AppState] = weakref.WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    # === setup ===

    def _resolve(self, app: Flask) -> PortierSettings:
        def pick(explicit: Optional[str], key: str, default: Optional[str]) -> Optional[str]:
            value = explicit if explicit is not None else app.config.get(key, default)
            if value is not None and not isinstance(value, str):
                raise PortierConfigError(f"PortierAuth: {key} must be a string, not {value!r}")
            return value

        jwks_url = pick(self._jwks_url, "PORTIER_JWKS_URL", None)
        if not jwks_url:
            raise PortierConfigError(
                "PortierAuth: no JWKS URL: pass jwks_url=... or set PORTIER_JWKS_URL"
            )
        parts = urlsplit(jwks_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PortierConfigError(
                f"PortierAuth: jwks_url must be an http:// or https:// URL, not {jwks_url!r}"
            )
        audience = pick(self._audience, "PORTIER_AUDIENCE", None)
        if not audience:
            raise PortierConfigError(
                "PortierAuth: no audience (this upstream's name in Portier's config, e.g. "
                "'flask'): pass audience=... or set PORTIER_AUDIENCE"
            )
        issuer = pick(self._issuer, "PORTIER_ISSUER", DEFAULT_ISSUER)
        if not issuer:
            raise PortierConfigError("PortierAuth: issuer must not be empty")
        header = pick(self._header, "PORTIER_ASSERTION_HEADER", DEFAULT_HEADER)
        if not header or not _TOKEN_CHARS.match(header):
            raise PortierConfigError(f"PortierAuth: {header!r} is not a valid header name")
        leeway = _number("leeway", self._leeway, minimum=0, strict=False)
        if leeway > MAX_LEEWAY_SECONDS:
            raise PortierConfigError(
                f"PortierAuth: leeway must be at most {MAX_LEEWAY_SECONDS} seconds"
            )
        return PortierSettings(
            jwks_url=jwks_url,
            audience=audience,
            issuer=issuer,
            header=header,
            leeway=leeway,
            jwks_cache_seconds=_number(
                "jwks_cache_seconds", self._jwks_cache_seconds, minimum=0, strict=True
            ),
            unknown_kid_cooldown_seconds=_number(
                "unknown_kid_cooldown_seconds", self._cooldown, minimum=0, strict=False
            ),
            timeout=_number("timeout", self._timeout, minimum=0, strict=True),
        )

    def init_app(self, app: Flask) -> None:
        """Resolves and checks the settings for ``app`` and registers the extension.

        Raises :class:`PortierConfigError` when ``jwks_url`` or ``audience`` is missing or a
        setting is invalid, and ``RuntimeError`` when ``app`` already has a PortierAuth.
        Nothing is fetched here: the keys are fetched on the first request that needs them.
        """
        if "portier" in app.extensions:
            raise RuntimeError("PortierAuth is already initialised on this app")
        settings = self._resolve(app)
        keys = JwksCache(
            settings.jwks_url,
            max_ttl=settings.jwks_cache_seconds,
            cooldown=settings.unknown_kid_cooldown_seconds,
            timeout=settings.timeout,
        )
        verifier = Verifier(
            keys=keys, issuer=settings.issuer, audience=settings.audience, leeway=settings.leeway
        )
        self._apps[app] = _AppState(settings, verifier)
        app.extensions["portier"] = self
        app.before_request(_reset_g)

    def _state(self) -> _AppState:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        state = self._apps.get(app)
        if state is None:
            raise RuntimeError("PortierAuth.init_app was not called for this app")
        return state

    def settings(self) -> PortierSettings:
        """The resolved settings of the current app."""
        return self._state().settings

    @property
    def keys(self) -> JwksCache:
        """The current app's key cache."""
        return self._state().verifier.keys

    # === per request ===

    def _outcome(self) -> _Outcome:
        cached = request.environ.get(_ENVIRON_KEY)
        if isinstance(cached, _Outcome):
            return cached
        state = self._state()
        try:
            outcome = _Outcome(user=self._verify(state), error=None)
        except PortierAuthError as exc:
            outcome = _Outcome(user=None, error=exc)
        request.environ[_ENVIRON_KEY] = outcome
        g.portier_user = outcome.user
        return outcome

    @staticmethod
    def _verify(state: _AppState) -> PortierUser:
        values = request.headers.getlist(state.settings.header)
        if not values or not values[0]:
            raise PortierAuthError("assertion_missing", f"no {state.settings.header} header")
        if len(values) > 1:
            raise PortierAuthError("assertion_invalid", "more than one assertion header")
        return state.verifier.verify(
            values[0], method=request.method, path=request.script_root + request.path
        )

    def authenticate(self) -> PortierUser:
        """Verifies the current request's assertion (once per request) and returns the user.

        Raises :class:`PortierAuthError` with the refusal code. Must run inside a request.
        """
        outcome = self._outcome()
        if outcome.error is not None:
            raise outcome.error
        assert outcome.user is not None  # noqa: S101 - one of the two is always set
        return outcome.user

    def current_user(self) -> Optional[PortierUser]:
        """The verified user of the current request, or ``None`` without a valid assertion."""
        outcome = self._outcome()
        if outcome.error is not None and not outcome.logged:
            outcome.logged = True
            level = logging.DEBUG if outcome.error.code == "assertion_missing" else logging.INFO
            _log_refusal(level, outcome.error, "ignored (current_user() is None)")
        return outcome.user

    def authorize(self, check: Optional[Check] = None) -> Optional[Response]:
        """Authenticates the request and runs ``check``; returns a refusal response or None."""
        try:
            user = self.authenticate()
            code = check(user) if check is not None else None
            if code is not None:
                raise PortierAuthError(code, f"user {user.id}")
        except PortierAuthError as exc:
            _log_refusal(logging.INFO, exc, "refused")
            return refusal_response(exc.code)
        return None


def _reset_g() -> None:
    # g lives as long as the app context, which a request may share with an outer one: never
    # let a previous request's user show through.
    outcome = request.environ.get(_ENVIRON_KEY)
    g.portier_user = outcome.user if isinstance(outcome, _Outcome) else None


def _log_refusal(level: int, exc: PortierAuthError, what: str) -> None:
    log.log(
        level,
        "portier_flask: %s %s %r: %s (%s)",
        what,
        request.method,
        request.script_root + request.path,
        exc.code,
        exc.detail,
    )


# === module-level API ===


def _extension() -> PortierAuth:
    ext = current_app.extensions.get("portier")
    if not isinstance(ext, PortierAuth):
        raise RuntimeError(
            "PortierAuth is not initialised on this Flask app: call PortierAuth(app, ...) "
            "or PortierAuth(...).init_app(app)"
        )
    return ext


def current_user() -> Optional[PortierUser]:
    """The verified user of the current request, or ``None`` without a valid assertion.

    Behind a decorator from this module this is never ``None``. In an undecorated view the
    assertion is verified on first use; an invalid one is logged and yields ``None``.
    The same value is on ``flask.g.portier_user``.
    """
    return _extension().current_user()


def _guard(check: Optional[Check]) -> Callable[[F], F]:
    def decorate(view: F) -> F:
        if not callable(view):
            raise TypeError(f"{view!r} is not a view function")
        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                refusal = _extension().authorize(check)
                if refusal is not None:
                    return refusal
                return await view(*args, **kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            refusal = _extension().authorize(check)
            if refusal is not None:
                return refusal
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


def _names(kind: str, names: tuple[Any, ...]) -> tuple[str, ...]:
    if not names:
        raise TypeError(f"require_{kind} needs at least one name: @require_{kind}('...')")
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"require_{kind} takes non-empty strings, not {name!r}: @require_{kind}('...')"
            )
    return cast("tuple[str, ...]", names)


@overload
def require_auth(view: F) -> F: ...


@overload
def require_auth(view: None = None) -> Callable[[F], F]: ...


def require_auth(view: Optional[F] = None) -> Union[F, Callable[[F], F]]:
    """Refuses requests without a valid assertion (401). ``@require_auth`` or ``@require_auth()``.

    Mirrors the front end's ``requireAuth``.
    """
    decorate: Callable[[F], F] = _guard(None)
    if view is None:
        return decorate
    return decorate(view)


def require_plan(*plans: str) -> Callable[[F], F]:
    """Requires any of ``plans`` (Clerk ``has({plan})`` semantics), else 403 ``plan_required``.

    Implies :func:`require_auth`. Mirrors the front end's ``hasSubscription``.
    """
    names = _names("plan", plans)

    def check(user: PortierUser) -> Optional[str]:
        return None if any(user.has_plan(p) for p in names) else "plan_required"

    return _guard(check)


def require_feature(*features: str) -> Callable[[F], F]:
    """Requires any of ``features``, else 403 ``feature_required``. Implies :func:`require_auth`.

    Mirrors the front end's ``hasFeatureAccess``.
    """
    names = _names("feature", features)

    def check(user: PortierUser) -> Optional[str]:
        return None if any(user.has_feature(f) for f in names) else "feature_required"

    return _guard(check)


def require_org_role(*roles: str) -> Callable[[F], F]:
    """Requires any of ``roles`` in the active organization (``"admin"`` or ``"org:admin"``),
    else 403 ``org_role_required``. Implies :func:`require_auth`."""
    names = _names("org_role", roles)

    def check(user: PortierUser) -> Optional[str]:
        return None if any(user.has_role(r) for r in names) else "org_role_required"

    return _guard(check)


def require_org_permission(*permissions: str) -> Callable[[F], F]:
    """Requires any of ``permissions`` (``"org:posts:edit"``) in the active organization, else
    403 ``org_permission_required``. Implies :func:`require_auth`."""
    names = _names("org_permission", permissions)

    def check(user: PortierUser) -> Optional[str]:
        return None if any(user.has_permission(p) for p in names) else "org_permission_required"

    return _guard(check)
