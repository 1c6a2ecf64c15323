"""A small Flask backend standing in for the product's legacy API, used by the end-to-end test.

It reports what a WSGI app sees of identity: the `X-Portier-*` headers through Flask's own
`request.headers` and every environ key that a spoofed spelling could have produced (WSGI maps
`-`, `_` and `.` to the same `HTTP_*` key, which is what CVE-2026-88011 abused).
It also writes to the bucket the way the real backend does, with boto3, through Portier's
egress listener: its environment holds only the local key pair Portier gave it
(AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, MEDIA_BUCKET), never AWS keys.
Run: python app.py  -> prints "PORT <n>" once listening on 127.0.0.1 (an OS-chosen port).
"""
import hashlib
import os
import sys
import uuid

from flask import Flask, jsonify, request
from werkzeug.serving import make_server

app = Flask(__name__)
_s3 = None


def s3():
    """One boto3 client, configured only by the environment (as a deployed backend is)."""
    global _s3
    if _s3 is None:
        import boto3
        from botocore.config import Config

        _s3 = boto3.client("s3", config=Config(signature_version="s3v4", retries={"max_attempts": 1}))
    return _s3


def identity():
    environ = {k: v for k, v in request.environ.items() if k.startswith("HTTP_X_PORTIER")}
    return {
        "user_id": request.headers.get("X-Portier-User-Id"),
        "session_id": request.headers.get("X-Portier-Session-Id"),
        "plans": request.headers.get("X-Portier-Plans"),
        "environ": environ,
        "authorization": request.headers.get("Authorization"),
        "cookie": request.headers.get("Cookie"),
        "middleware_subrequest": request.headers.get("X-Middleware-Subrequest"),
    }


@app.route("/api/health")
def health():
    return jsonify(ok=True)


@app.route("/api/books/<book_id>", methods=["GET", "POST"])
def book(book_id):
    return jsonify(book=book_id, path=request.full_path, seen=identity())


@app.route("/api/jobs/<user_id>/<job_id>")
def job(user_id, job_id):
    return jsonify(owner=user_id, job=job_id, seen=identity())


@app.route("/api/images/generate", methods=["POST"])
def generate_image():
    """Stands in for image generation: writes a PNG under the caller's prefix via egress."""
    from botocore.exceptions import ClientError

    user = request.headers.get("X-Portier-User-Id")
    prompt = request.get_data()
    body = b"\x89PNG\r\n\x1a\n" + hashlib.sha256(prompt).digest() * 64
    key = request.args.get("key") or f"{user}/images/gen-{uuid.uuid4().hex}.png"
    try:
        s3().put_object(Bucket=os.environ["MEDIA_BUCKET"], Key=key, Body=body, ContentType="image/png")
        head = s3().head_object(Bucket=os.environ["MEDIA_BUCKET"], Key=key)
    except ClientError as e:
        err = e.response["Error"]
        return jsonify(error=err.get("Code"), status=e.response["ResponseMetadata"]["HTTPStatusCode"]), 502
    return jsonify(key=key, size=head["ContentLength"], sha256=hashlib.sha256(body).hexdigest())


if os.environ.get("PORTIER_JWKS_URL"):
    # The legacy backend after its move behind Portier: its `require_auth` comes from
    # portier_flask, which trusts only Portier's signed assertion (never the plain headers).
    from portier_flask import PortierAuth, current_user, require_auth, require_plan

    PortierAuth(app, jwks_url=os.environ["PORTIER_JWKS_URL"], audience=os.environ["PORTIER_AUDIENCE"])

    def _me():
        user = current_user()
        return {
            "id": user.id,
            "session_id": user.session_id,
            "org_id": user.org_id,
            "org_role": user.org_role,
            "plans": list(user.plans),
            "pro": user.has_plan("pro"),
        }

    @app.route("/api/me")
    @require_auth
    def me():
        # The raw assertion is echoed so the test can replay it elsewhere.
        return jsonify(user=_me(), assertion=request.headers.get("X-Portier-Assertion"))

    @app.route("/api/pro")
    @require_plan("pro")
    def pro():
        return jsonify(user=_me())


def main():
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(f"PORT {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
