"""Creates the artifact bucket on an S3-compatible store and waits until it really works
(used by docker-compose before the services start: SeaweedFS answers its port before
it serves objects, so readiness is probed with a real object, not just the port).

Reads SENTILOOP_S3_BUCKET, SENTILOOP_S3_ENDPOINT_URL and the usual AWS_* credentials;
exits 0 once a probe object can be written and read back, 1 after the deadline."""

from __future__ import annotations

import os
import sys
import time

DEADLINE_SECONDS = float(os.environ.get("INIT_BUCKET_TIMEOUT", "120"))
PROBE_KEY = "_sentiloop/ready-probe"


def main() -> int:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = os.environ["SENTILOOP_S3_BUCKET"]
    client = boto3.client(
        "s3",
        endpoint_url=os.environ.get("SENTILOOP_S3_ENDPOINT_URL") or None,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    deadline = time.monotonic() + DEADLINE_SECONDS
    last_error = ""
    while time.monotonic() < deadline:
        try:
            try:
                client.create_bucket(Bucket=bucket)
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code", "")
                if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
            body = str(time.time()).encode()
            client.put_object(Bucket=bucket, Key=PROBE_KEY, Body=body)
            if client.get_object(Bucket=bucket, Key=PROBE_KEY)["Body"].read() == body:
                print(f"bucket {bucket} is ready")
                return 0
            last_error = "the probe object read back differently"
        except (BotoCoreError, ClientError) as error:
            last_error = str(error)
        time.sleep(1)
    print(f"bucket {bucket} not ready after {DEADLINE_SECONDS:.0f}s: {last_error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
