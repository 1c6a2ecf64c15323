"""Writes the seed corpus (fuzz/corpus/<target>/seed-*) from the shapes the tests use.

    python3 fuzz/seeds.py

Fields of one input are separated by the byte 0xFF (see fuzz_targets/common.rs).
"""
import base64
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SEP = b"\xff"


def b64(d):
    return base64.urlsafe_b64encode(d).rstrip(b"=")


def jwt(header, payload, sig=b"\x01" * 256):
    return b".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(sig)])


def read(p):
    with open(os.path.join(ROOT, p), "rb") as f:
        return f.read()


token = jwt(
    {"alg": "RS256", "kid": "ins_fuzz", "typ": "JWT"},
    {"iss": "https://clerk.fuzz.test", "sub": "user_2abc", "sid": "sess_2abc", "iat": 1800000000,
     "nbf": 1799999990, "exp": 1800000060, "v": 2, "pla": "u:pro", "o": {"id": "org_1", "rol": "admin"}},
)
auth = (b"AWS4-HMAC-SHA256 Credential=AKIAFUZZFUZZFUZZ0001/20270115/us-east-1/s3/aws4_request, "
        b"SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=" + b"ab" * 32)

def chunked(payload, chunk=7):
    import struct, zlib
    out = b""
    for i in range(0, len(payload), chunk):
        part = payload[i:i + chunk]
        out += b"%x\r\n" % len(part) + part + b"\r\n"
    crc = base64.b64encode(struct.pack(">I", zlib.crc32(payload) & 0xFFFFFFFF))
    return out + b"0\r\nx-amz-checksum-crc32:" + crc + b"\r\n\r\n"


chunked_body = chunked(b"x" * 41)

SEEDS = {
    "path": [
        b"/api/books/1", b"/a/%2e%2e/b", b"/a/..;/b", b"//x//y/", b"/%41%42/c%20d",
        b"/_next/data/b1/dashboard.json", b"/api/files/user_2abc/images/cat%20photo.png",
        b"/a/%252e/b", b"/a\\b", b"/%C0%AE%C0%AE/etc",
    ],
    "s3_key": [
        SEP.join([b"user_2abc/images/cat.png", b"user_2abc", b"prefix=images/&max-keys=10"]),
        SEP.join([b"user_2abc/../user_x/a", b"user_2abc", b"prefix=../&delimiter=/"]),
        SEP.join([b"user_2abc/a%2fb.", b"user_2abc", b"start-after=user_x/a&continuation-token=zz"]),
        SEP.join([b"user_2abcd/x", b"user_2abc", b"prefix=%2e%2e/"]),
    ],
    "credentials": [
        SEP.join([b"Bearer " + token, b"__session=abc; theme=dark", b"", b""]),
        SEP.join([b"", b"__session=" + token + b"; __client_uat=1", b"__session_m3jNlIl7=x", b"m3jNlIl7"]),
        SEP.join([b"", b"__session=a; __session=b", b"__clerk_db_jwt=x; __refresh_m3jNlIl7=y", b""]),
    ],
    "jwt": [
        token,
        jwt({"alg": "none", "typ": "JWT"}, {"sub": "user_x", "sid": "sess_x"}, b""),
        jwt({"alg": "HS256", "kid": "ins_fuzz"}, {"sub": "user_x"}),
        jwt({"alg": "RS256", "kid": "ins_fuzz", "typ": "JWT", "cat": "cl_B7d4PD111AAA"},
            {"sub": "user_x", "sid": "sess_x", "exp": 1e30, "act": {"sub": "user_y"}, "fea": "o:a,u:b"}),
        # Claims (JSON) the target signs with the instance key: the claim rules decide.
        json.dumps({"iss": "https://clerk.fuzz.test", "sub": "user_2abc", "sid": "sess_1",
                    "exp": 4000000000, "nbf": 1, "iat": 1, "v": 2, "pla": "u:pro,o:business",
                    "fea": "o:reservations,u:dashboard", "azp": "https://app.fuzz.test",
                    "o": {"id": "org_1", "slg": "acme", "rol": "admin", "per": "read,manage",
                          "fpm": "3"}}).encode(),
        json.dumps({"iss": "https://clerk.fuzz.test", "sub": "user_2abc", "sid": "sess_1",
                    "exp": 4000000000, "org_id": "org_2", "org_role": "org:member",
                    "org_permissions": ["org:posts:edit"], "sts": "active",
                    "metadata": {"subscription": "pro"}}).encode(),
        json.dumps({"iss": "https://clerk.fuzz.test", "sub": "user_2abc", "sid": "sess_1",
                    "exp": "4000000000"}).encode(),
    ],
    "webhook": [
        SEP.join([b"msg_1", b"1800000000", b"v1,YWJj v1,ZGVm", b"", b'{"type":"user.created"}']),
        SEP.join([b"", b"", b"", b"msg_2", b"{}"]),
    ],
    "policy_config": [
        SEP.join([read("policies/web.toml"), read("config.toml"), b"/dashboard/x"]),
        SEP.join([read("policies/api.toml"), b"[server]\nlisten = [\"bad\"]\n", b"/api/jobs/user_a/1"]),
        SEP.join([read("policies/files.toml"), b"", b"/api/files/user_a/images/x.png"]),
    ],
    "egress": [
        SEP.join([b"PUT", b"/media/user_a/images/x.png", b"", auth, b"20270115T080000Z", b"UNSIGNED-PAYLOAD"]),
        SEP.join([b"GET", b"/media", b"list-type=2&prefix=user_a/&X-Amz-Signature=" + b"cd" * 32
                  + b"&X-Amz-Credential=AKIAFUZZFUZZFUZZ0001%2F20270115%2Fus-east-1%2Fs3%2Faws4_request"
                  b"&X-Amz-Date=20270115T080000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host", b"", b"", b""]),
        SEP.join([b"POST", b"/media", b"delete", auth, b"20270115T080000Z", b"e3b0" * 16]),
        SEP.join([b"PUT", b"/media/user_a/b.png", b"partNumber=1&uploadId=u", auth, b"x",
                  b"STREAMING-UNSIGNED-PAYLOAD-TRAILER"]),
        # An aws-chunked body with its CRC32 trailer (fields 7 and 8: body, cut points).
        SEP.join([b"PUT", b"/media/user_a/c.png", b"prefix=a%2Bb+c&list-type=2", b"", b"", b"",
                  chunked_body, b"41:\x03\x07\x01\x20"]),
    ],
    "pages": [
        SEP.join([b"/_next/data/b1/dashboard.json", b"/dashboard?x=1&y=%2F", b"pro,business",
                  b"__session=x; __client_uat=17; __clerk_redirect_count=2"]),
        SEP.join([b"/_next/data/b1/index.json", b"/\r\nSet-Cookie: x", b"__clerk_handshake=x",
                  b"__session_m3jNlIl7=y; Max-Age=0"]),
    ],
}

for target, seeds in SEEDS.items():
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for i, s in enumerate(seeds):
        with open(os.path.join(d, f"seed-{i}"), "wb") as f:
            f.write(s)
print("seeds written:", sum(len(s) for s in SEEDS.values()))
