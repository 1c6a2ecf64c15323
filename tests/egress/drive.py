"""Drives Portier's egress listener with real boto3, the way the backend and its workers do:
ordinary client code, only endpoint_url and a local key pair changed.

    python drive.py happy   ENDPOINT BUCKET KEY_ID SECRET
    python drive.py limited ENDPOINT BUCKET KEY_ID SECRET   (the image worker's rules)
    python drive.py refused ENDPOINT BUCKET KEY_ID SECRET   (wrong secret, unknown key id)

Prints one "ok <step>" line per step and exits 1 on the first failure (with the reason).
"""
import hashlib
import io
import os
import sys
import tempfile
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


def client(endpoint, key_id, secret, **config):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(signature_version="s3v4", retries={"max_attempts": 1}, **config),
    )


def step(name):
    print(f"ok {name}", flush=True)


def expect_error(fn, code):
    try:
        fn()
    except ClientError as e:
        got = e.response["Error"]["Code"]
        if got != code:
            raise AssertionError(f"expected {code}, got {got}: {e}")
        return
    raise AssertionError(f"expected {code}, the call succeeded")


def happy(endpoint, bucket, key_id, secret):
    s3 = client(endpoint, key_id, secret)
    body = os.urandom(200_000)
    s3.put_object(Bucket=bucket, Key="user_a1/images/cat.png", Body=body, ContentType="image/png")
    step("put_object")
    got = s3.get_object(Bucket=bucket, Key="user_a1/images/cat.png")
    assert got["Body"].read() == body, "get_object bytes"
    assert got["ContentType"] == "image/png", got["ContentType"]
    step("get_object")
    part = s3.get_object(Bucket=bucket, Key="user_a1/images/cat.png", Range="bytes=10-19")
    assert part["Body"].read() == body[10:20]
    step("get_object_range")
    head = s3.head_object(Bucket=bucket, Key="user_a1/images/cat.png")
    assert head["ContentLength"] == len(body)
    step("head_object")
    # Keys that need encoding.
    odd = "user_a1/images/a b+c!(x)~*'é.png"
    s3.put_object(Bucket=bucket, Key=odd, Body=b"odd")
    assert s3.get_object(Bucket=bucket, Key=odd)["Body"].read() == b"odd"
    step("encoded_key")
    # upload_file above 8 MB goes multipart (CreateMultipartUpload, UploadPart, Complete).
    big = os.urandom(20 * 1024 * 1024)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "big.bin")
        with open(src, "wb") as f:
            f.write(big)
        s3.upload_file(src, bucket, "user_a1/videos/big.bin")
        step("upload_file_multipart")
        dst = os.path.join(d, "back.bin")
        s3.download_file(bucket, "user_a1/videos/big.bin", dst)
        with open(dst, "rb") as f:
            assert hashlib.sha256(f.read()).digest() == hashlib.sha256(big).digest(), "download_file bytes"
        step("download_file")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="user_a1/")
    keys = sorted(o["Key"] for o in listed.get("Contents", []))
    assert "user_a1/images/cat.png" in keys and "user_a1/videos/big.bin" in keys, keys
    step("list_objects_v2")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="user_a1/", PaginationConfig={"PageSize": 1})
    assert sum(len(p.get("Contents", [])) for p in pages) == len(keys)
    step("list_paginated")
    s3.copy_object(Bucket=bucket, Key="user_a1/images/copy.png", CopySource={"Bucket": bucket, "Key": "user_a1/images/cat.png"})
    assert s3.get_object(Bucket=bucket, Key="user_a1/images/copy.png")["Body"].read() == body
    step("copy_object")
    # Presigned URLs made by boto3 with the local key, used by a plain HTTP client.
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "user_a1/images/cat.png"}, ExpiresIn=300)
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.read() == body
    step("presigned_get")
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "user_a1/images/pre.png"}, ExpiresIn=300)
    req = urllib.request.Request(put_url, data=b"presigned put", method="PUT")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    assert s3.get_object(Bucket=bucket, Key="user_a1/images/pre.png")["Body"].read() == b"presigned put"
    step("presigned_put")
    # The SDK's default checksums (CRC32 on uploads) and when_required both work.
    quiet = client(endpoint, key_id, secret, request_checksum_calculation="when_required", response_checksum_validation="when_required")
    quiet.put_object(Bucket=bucket, Key="user_a1/blogs/post.md", Body=b"# hello")
    assert quiet.get_object(Bucket=bucket, Key="user_a1/blogs/post.md")["Body"].read() == b"# hello"
    s3.put_object(Bucket=bucket, Key="user_a1/blogs/crc.md", Body=b"crc", ChecksumAlgorithm="SHA256")
    step("checksum_modes")
    # A prefix with a plus and a space: boto3 sends %2B and %20, Portier forwards what it checked.
    s3.put_object(Bucket=bucket, Key="user_a1/blogs/a+b c.md", Body=b"plus")
    # (The embedded store does not encode keys for encoding-type=url, so boto3's decoding of
    # the listed key turns its + into a space: the count and size are what is checked.)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="user_a1/blogs/a+b ")
    assert [o["Size"] for o in listed.get("Contents", [])] == [4], listed
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="user_a1/blogs/a b")
    assert listed["KeyCount"] == 0, "a + became a space on the way"
    step("list_special_prefix")
    out = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "user_a1/blogs/a+b c.md"}], "Quiet": True})
    # (The embedded store lists deleted keys even when quiet; the Rust test checks Portier
    # sent <Quiet>true</Quiet>.)
    assert not out.get("Errors"), out
    expect_error(lambda: s3.head_object(Bucket=bucket, Key="user_a1/blogs/a+b c.md"), "404")
    step("delete_objects_quiet")
    out = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "user_a1/images/copy.png"}, {"Key": "user_a1/images/pre.png"}]})
    assert len(out.get("Errors", [])) == 0, out
    expect_error(lambda: s3.head_object(Bucket=bucket, Key="user_a1/images/copy.png"), "404")
    step("delete_objects")
    s3.delete_object(Bucket=bucket, Key="user_a1/blogs/post.md")
    expect_error(lambda: s3.head_object(Bucket=bucket, Key="user_a1/blogs/post.md"), "404")
    step("delete_object")
    # A batch with one key outside the rules deletes nothing.
    expect_error(
        lambda: s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "user_a1/images/cat.png"}, {"Key": "admin/secrets.txt"}]}),
        "AccessDenied",
    )
    assert s3.head_object(Bucket=bucket, Key="user_a1/images/cat.png")["ContentLength"] == len(body)
    step("delete_objects_refused_whole")


def limited(endpoint, bucket, key_id, secret):
    s3 = client(endpoint, key_id, secret)
    s3.put_object(Bucket=bucket, Key="user_w1/images/out.png", Body=b"\x89PNG worker output")
    assert s3.get_object(Bucket=bucket, Key="user_w1/images/out.png")["Body"].read().startswith(b"\x89PNG")
    step("worker_images")
    expect_error(lambda: s3.put_object(Bucket=bucket, Key="user_w1/videos/v.mp4", Body=b"x"), "AccessDenied")
    step("worker_no_videos")
    expect_error(lambda: s3.delete_object(Bucket=bucket, Key="user_w1/images/out.png"), "AccessDenied")
    step("worker_no_delete")
    expect_error(lambda: s3.list_objects_v2(Bucket=bucket, Prefix="user_w1/"), "AccessDenied")
    step("worker_no_list")
    expect_error(
        lambda: s3.copy_object(Bucket=bucket, Key="user_w1/images/c.png", CopySource={"Bucket": bucket, "Key": "user_a1/videos/big.bin"}),
        "AccessDenied",
    )
    step("worker_copy_source_checked")
    expect_error(lambda: s3.get_bucket_acl(Bucket=bucket), "NotImplemented")
    step("unknown_operation")


def refused(endpoint, bucket, key_id, secret):
    wrong = client(endpoint, key_id, secret + "x")
    expect_error(lambda: wrong.put_object(Bucket=bucket, Key="user_a1/images/w.png", Body=b"x"), "SignatureDoesNotMatch")
    step("wrong_secret")
    unknown = client(endpoint, "AKIDUNKNOWN00000000", secret)
    expect_error(lambda: unknown.get_object(Bucket=bucket, Key="user_a1/images/cat.png"), "InvalidAccessKeyId")
    step("unknown_key_id")
    v2 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key_id, aws_secret_access_key=secret)
    url = v2.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "user_a1/images/cat.png"}, ExpiresIn=60)
    try:
        urllib.request.urlopen(url, timeout=10)
        raise AssertionError("a SigV2 presigned URL was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 400, e.code
    step("sigv2_refused")


if __name__ == "__main__":
    mode, endpoint, bucket, key_id, secret = sys.argv[1:6]
    try:
        {"happy": happy, "limited": limited, "refused": refused}[mode](endpoint, bucket, key_id, secret)
    except Exception as e:  # noqa: BLE001 - the test reads the reason
        print(f"FAIL {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
