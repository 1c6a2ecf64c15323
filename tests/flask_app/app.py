"""A small Flask backend standing in for the product's legacy API, used by the end-to-end test.

It reports what a WSGI app sees of identity: the `X-Portier-*` headers through Flask's own
`request.headers` and every environ key that a spoofed spelling could have produced (WSGI maps
`-`, `_` and `.` to the same `HTTP_*` key, which is what CVE-2026-88011 abused).
Run: python app.py  -> prints "PORT <n>" once listening on 127.0.0.1 (an OS-chosen port).
"""
import sys

from flask import Flask, jsonify, request
from werkzeug.serving import make_server

app = Flask(__name__)


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


def main():
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(f"PORT {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
