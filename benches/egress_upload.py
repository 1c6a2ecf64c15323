"""boto3 upload_file / download_file of one file, timed: what a worker does with a big video.

    python egress_upload.py ENDPOINT BUCKET KEY_ID SECRET FILE KEY

Prints "upload <seconds>" and "download <seconds>" and checks the downloaded size. Used by
examples/s3_stream.rs to compare Portier's egress with the store directly.
"""
import os
import sys
import tempfile
import time

import boto3
from botocore.config import Config


def main():
    endpoint, bucket, key_id, secret, path, key = sys.argv[1:7]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(signature_version="s3v4", retries={"max_attempts": 1}),
    )
    t = time.monotonic()
    s3.upload_file(path, bucket, key)
    print(f"upload {time.monotonic() - t:.3f}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "back")
        t = time.monotonic()
        s3.download_file(bucket, key, out)
        print(f"download {time.monotonic() - t:.3f}", flush=True)
        if os.path.getsize(out) != os.path.getsize(path):
            raise SystemExit("downloaded size differs")
    s3.delete_object(Bucket=bucket, Key=key)


if __name__ == "__main__":
    main()
