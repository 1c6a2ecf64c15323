"""Fixtures: real keys, a real JWKS server on 127.0.0.1, a minting helper and a Flask app."""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Iterator, List, Optional

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask, g, jsonify
from flask.testing import FlaskClient

from portier_flask import (
    PortierAuth,
    current_user,
    require_auth,
    require_feature,
    require_org_permission,
    require_org_role,
    require_plan,
)

REMOVE = object()  # a claim override that deletes the claim


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# === keys ===


@dataclass
class Key:
    kid: str
    alg: str
    private: Any

    @property
    def jwk(self) -> Dict[str, str]:
        public = self.private.public_key()
        if self.alg == "ES256":
            numbers = public.public_numbers()
            return {
                "kty": "EC",
                "crv": "P-256",
                "x": b64url(numbers.x.to_bytes(32, "big")),
                "y": b64url(numbers.y.to_bytes(32, "big")),
                "kid": self.kid,
                "alg": "ES256",
                "use": "sig",
            }
        from cryptography.hazmat.primitives import serialization

        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url(raw),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }


def es256_key(kid: str) -> Key:
    return Key(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def ed25519_key(kid: str) -> Key:
    return Key(kid, "EdDSA", Ed25519PrivateKey.generate())


# === JWKS server ===


class JwksServer:
    """A real HTTP JWKS endpoint on 127.0.0.1:0 whose keys and answers tests change."""

    def __init__(self) -> None:
        self.keys: List[Dict[str, Any]] = []
        self.cache_control: Optional[str] = "public, max-age=300"
        self.status = 200
        self.body: Optional[bytes] = None  # overrides the JSON document
        self.location: Optional[str] = None
        self.delay = 0.0
        self._fetches = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server._fetches += 1
                if server.delay:
                    time.sleep(server.delay)
                body = server.body
                if body is None:
                    body = json.dumps({"keys": server.keys}).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if server.cache_control is not None:
                    self.send_header("Cache-Control", server.cache_control)
                if server.location is not None:
                    self.send_header("Location", server.location)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and left (the slow-JWKS test)

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/.well-known/portier/jwks.json"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        self._running = True

    @property
    def fetches(self) -> int:
        with self._lock:
            return self._fetches

    def publish(self, *keys: Key) -> None:
        self.keys = [k.jwk for k in keys]

    def stop(self) -> None:
        """Stops listening: fetches now fail with a refused connection."""
        if self._running:
            self._running = False
            self.httpd.shutdown()
            self.httpd.server_close()
            self._thread.join(timeout=5)


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def key() -> Key:
    return es256_key("portier-es256-1")


@pytest.fixture(scope="session")
def ed_key() -> Key:
    return ed25519_key("portier-ed25519-1")


# === minting ===


def claims(**overrides: Any) -> Dict[str, Any]:
    now = int(time.time())
    out: Dict[str, Any] = {
        "iss": "portier",
        "aud": "flask",
        "sub": "user_123",
        "sid": "sess_456",
        "iat": now,
        "exp": now + 120,
        "htm": "GET",
        "htu": "/api/books/b1",
        "org": {
            "id": "org_1",
            "slug": "acme",
            "role": "org:admin",
            "permissions": ["org:posts:edit", "org:posts:read"],
        },
        "plans": ["u:pro", "o:business"],
        "features": ["o:reservations", "u:dashboard", "uo:support-chat"],
    }
    for name, value in overrides.items():
        if value is REMOVE:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def mint(key: Key, *, headers: Optional[Dict[str, Any]] = None, **overrides: Any) -> str:
    """A real assertion signed by ``key``."""
    header = {"kid": key.kid, "typ": "JWT"}
    header.update(headers or {})
    return jwt.encode(claims(**overrides), key.private, algorithm=key.alg, headers=header)


def raw_token(header: Dict[str, Any], payload: Dict[str, Any], signature: bytes) -> str:
    """A token assembled by hand (for algorithms PyJWT will not produce)."""
    h = b64url(json.dumps(header, separators=(",", ":")).encode())
    p = b64url(json.dumps(payload, separators=(",", ":")).encode())
    return f"{h}.{p}.{b64url(signature)}"


# === assertions ===


def assert_refusal(resp: Any, status: int, code: str) -> None:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    body = json.loads(resp.get_data(as_text=True))
    assert set(body) == {"error", "message"}
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    if status == 401:
        expected = 'Bearer realm="portier"'
        if code != "assertion_missing":
            expected += f', error="invalid_token", error_description="{code}"'
        assert resp.headers["WWW-Authenticate"] == expected
    else:
        assert "WWW-Authenticate" not in resp.headers


# === the app ===


def build_app(jwks_url: str, **options: Any) -> Flask:
    app = Flask(__name__)
    app.config["TESTING"] = True
    PortierAuth(app, jwks_url=jwks_url, audience=options.pop("audience", "flask"), **options)

    def who() -> Dict[str, Any]:
        user = current_user()
        assert user is not None
        assert g.portier_user is user
        return asdict(user)

    @app.route("/api/books/<book_id>", methods=["GET", "POST"])
    @require_auth
    def book(book_id: str) -> Any:
        return jsonify(book=book_id, user=who())

    @app.get("/api/called")
    @require_auth()
    def called() -> Any:
        return jsonify(user=who())

    @app.get("/api/has")
    @require_auth
    def has() -> Any:
        user = current_user()
        assert user is not None
        names = ["pro", "org:pro", "user:pro", "u:pro", "business", "o:business", "user:business"]
        features = ["dashboard", "org:dashboard", "pro", "support-chat", "o:support-chat"]
        return jsonify(
            plans={n: user.has_plan(n) for n in names},
            features={n: user.has_feature(n) for n in features},
        )

    @app.get("/api/pro")
    @require_plan("pro", "enterprise")
    def pro() -> Any:
        return jsonify(ok=True)

    @app.get("/api/org-plan")
    @require_plan("org:pro")
    def org_plan() -> Any:
        return jsonify(ok=True)

    @app.get("/api/dashboard")
    @require_feature("dashboard")
    def dashboard() -> Any:
        return jsonify(ok=True)

    @app.get("/api/beta")
    @require_feature("beta")
    def beta() -> Any:
        return jsonify(ok=True)

    @app.get("/api/admin")
    @require_org_role("admin")
    def admin() -> Any:
        return jsonify(ok=True)

    @app.get("/api/billing")
    @require_org_role("org:billing_manager", "org:owner")
    def billing() -> Any:
        return jsonify(ok=True)

    @app.get("/api/posts/edit")
    @require_org_permission("org:posts:edit")
    def posts_edit() -> Any:
        return jsonify(ok=True)

    @app.get("/api/posts/delete")
    @require_org_permission("org:posts:delete")
    def posts_delete() -> Any:
        return jsonify(ok=True)

    @app.get("/api/stacked")
    @require_plan("pro")
    @require_feature("dashboard")
    @require_org_role("admin")
    def stacked() -> Any:
        return jsonify(ok=True)

    @app.get("/api/optional")
    def optional() -> Any:
        user = current_user()
        seen = g.portier_user
        return jsonify(user=None if user is None else user.id, g=None if seen is None else seen.id)

    return app


@dataclass
class Harness:
    jwks: JwksServer
    key: Key
    make: Callable[..., Flask]
    app: Flask = field(init=False)
    client: FlaskClient = field(init=False)

    def __post_init__(self) -> None:
        self.app = self.make()
        self.client = self.app.test_client()

    def get(self, path: str, token: Optional[str] = None, **kw: Any) -> Any:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["X-Portier-Assertion"] = token
        return self.client.get(path, headers=headers, **kw)


@pytest.fixture
def make_app(jwks: JwksServer) -> Callable[..., Flask]:
    def make(**options: Any) -> Flask:
        return build_app(jwks.url, **options)

    return make


@pytest.fixture
def h(jwks: JwksServer, key: Key, ed_key: Key, make_app: Callable[..., Flask]) -> Harness:
    jwks.publish(key, ed_key)
    return Harness(jwks, key, make_app)
