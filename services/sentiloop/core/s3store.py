"""The object store on S3 or any S3-compatible server (SeaweedFS, MinIO, ...), through
boto3, behind the same interface as the local directory store (``core.objectstore``).

Configured by the ``SENTILOOP_S3_*`` settings (``core.config``), checked when the store is
opened, i.e. at service start; credentials come from boto3's usual chain.

Throttling and 5xx answers and connection errors are retried by botocore with backoff;
what still fails is raised as :class:`~sentiloop.core.errors.Unavailable`, a missing key
as :class:`~sentiloop.core.errors.NotFound`. No grpc here."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
from boto3.exceptions import (  # type: ignore[import-untyped]
    RetriesExceededError,
    S3TransferFailedError,
    S3UploadFailedError,
)
from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
)

from sentiloop.core.config import Settings
from sentiloop.core.errors import InvalidArgument, NotFound, Unavailable
from sentiloop.core.objectstore import check_key

MiB = 1024 * 1024
DEFAULT_REGION = "us-east-1"
DEFAULT_PAGE_SIZE = 1000
_CONFLICT_RETRIES = 5

# Errors that mean "the store cannot answer now": the request may succeed later.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ServiceUnavailable",
        "InternalError",
    }
)
_DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}
)
_CONNECTION_ERRORS = (ConnectionError, HTTPClientError, IncompleteReadError)


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = DEFAULT_REGION
    addressing_style: str = "auto"
    retry_mode: str = "standard"
    max_attempts: int = 5
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    multipart_threshold: int = 64 * MiB
    multipart_chunksize: int = 16 * MiB

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Settings:
        if not settings.s3_bucket:
            raise _config_error(
                "SENTILOOP_S3_BUCKET is not set (SENTILOOP_OBJECT_STORE=s3 needs a bucket)"
            )
        endpoint_url = settings.s3_endpoint_url
        return cls(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=endpoint_url,
            region=settings.aws_region or DEFAULT_REGION,
            # Virtual-host addressing needs DNS names per bucket, which S3-compatible
            # servers on an endpoint URL rarely have.
            addressing_style=settings.s3_addressing_style or ("path" if endpoint_url else "auto"),
            retry_mode=settings.s3_retry_mode,
            max_attempts=settings.s3_max_attempts,
            connect_timeout=settings.s3_connect_timeout,
            read_timeout=settings.s3_read_timeout,
            multipart_threshold=settings.s3_multipart_threshold,
            multipart_chunksize=settings.s3_multipart_chunksize,
        )


def _config_error(message: str) -> SystemExit:
    return SystemExit(f"configuration error: {message}")


def normalize_prefix(prefix: str) -> str:
    """``"a/b"``, ``"/a/b/"`` -> ``"a/b/"``; ``""`` stays ``""``."""
    stripped = prefix.strip().strip("/")
    if not stripped:
        return ""
    check_key(stripped)
    return stripped + "/"


def make_client(settings: S3Settings) -> Any:
    """A boto3 S3 client (thread-safe) with retries/backoff and timeouts."""
    config = Config(
        region_name=settings.region,
        retries={"mode": settings.retry_mode, "max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        s3={"addressing_style": settings.addressing_style},
        max_pool_connections=20,
    )
    session = boto3.session.Session(region_name=settings.region)
    if session.get_credentials() is None:
        raise _config_error(
            "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,"
            " or AWS_PROFILE, or run with an IAM role)"
        )
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config)


class S3ObjectStore:
    """Objects under ``s3://bucket/prefix/``; ``uri(key)`` is ``s3://bucket/prefix/key``."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        multipart_threshold: int = 64 * MiB,
        multipart_chunksize: int = 16 * MiB,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.page_size = page_size
        self.transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize
        )

    @property
    def endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    # -- errors ---------------------------------------------------------------

    def _unavailable(self, what: str, why: object) -> Unavailable:
        return Unavailable(
            f"object store unavailable: cannot {what} in bucket {self.bucket!r}"
            f" at {self.endpoint}: {why}"
        )

    @contextlib.contextmanager
    def _errors(self, what: str, key: str | None = None) -> Iterator[None]:
        """Maps botocore failures (after its retries) to domain errors."""
        try:
            yield
        except ClientError as error:
            code, status = _code_and_status(error)
            if code == "NoSuchBucket":
                raise self._unavailable(what, f"bucket {self.bucket!r} does not exist") from error
            if key is not None and (status == 404 or code in ("NoSuchKey", "NotFound")):
                raise NotFound(f"no object {key!r} in the object store") from error
            if code in _DENIED_CODES or status == 403:
                raise self._unavailable(
                    what, f"access denied ({code}); check the credentials and bucket policy"
                ) from error
            if status >= 500 or code in _TRANSIENT_CODES:
                raise self._unavailable(what, f"{code} (HTTP {status}) after retries") from error
            raise
        except (S3UploadFailedError, S3TransferFailedError, RetriesExceededError) as error:
            raise self._unavailable(what, error) from error
        except NoCredentialsError as error:
            raise self._unavailable(what, "no AWS credentials found") from error
        except _CONNECTION_ERRORS as error:
            raise self._unavailable(what, error) from error

    # -- keys -----------------------------------------------------------------

    def _full(self, key: str) -> str:
        return self.prefix + check_key(key)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def key_of(self, uri: str) -> str:
        base = self.location
        if not uri.startswith(base) or len(uri) == len(base):
            raise InvalidArgument({"uri": f"{uri!r} is not in this object store ({base})"})
        return check_key(uri[len(base) :])

    # -- reads and writes -----------------------------------------------------

    def put_file(self, key: str, source: Path) -> str:
        """Uploads a file; from ``multipart_threshold`` bytes on in parts (in parallel)."""
        full = self._full(key)
        with self._errors(f"upload {key!r}"):
            self.client.upload_file(str(source), self.bucket, full, Config=self.transfer_config)
        return self.uri(key)

    def put_bytes(self, key: str, data: bytes) -> str:
        full = self._full(key)
        with self._errors(f"write {key!r}"):
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data)
        return self.uri(key)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Writes the object only if no object has that key (``If-None-Match: *``,
        atomic on the server): True when this call created it, False when one
        already existed (its content is left as it was).

        False can also mean that an earlier attempt of this very call succeeded and
        botocore's retry then found the object: callers that care compare contents."""
        full = self._full(key)
        with self._errors(f"write {key!r}"):
            for attempt in range(_CONFLICT_RETRIES + 1):
                try:
                    self.client.put_object(Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*")
                    return True
                except ClientError as error:
                    code, status = _code_and_status(error)
                    if code == "PreconditionFailed" or status == 412:
                        return False
                    # 409 ConditionalRequestConflict: another conditional write of this
                    # key is in flight; ask again (412 once that one has finished).
                    conflict = code == "ConditionalRequestConflict" or status == 409
                    if not conflict or attempt == _CONFLICT_RETRIES:
                        raise
                time.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def get_bytes(self, key: str) -> bytes:
        full = self._full(key)
        with self._errors(f"read {key!r}", key):
            response = self.client.get_object(Bucket=self.bucket, Key=full)
            body: bytes = response["Body"].read()
        return body

    def read_uri(self, uri: str, max_bytes: int) -> bytes | None:
        """Any object these credentials can read (``s3://bucket/key``, not only this store's
        bucket), or None when it is larger than ``max_bytes`` (checked before reading)."""
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise InvalidArgument({"uri": f"{uri!r} is not s3://BUCKET/KEY"})
        with self._errors(f"read {uri!r}", uri):
            size = int(self.client.head_object(Bucket=bucket, Key=key)["ContentLength"])
            if size > max_bytes:
                return None
            body: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def download(self, key: str, destination: Path) -> Path:
        """Downloads (in parts for big objects) to a temporary name, then renames."""
        full = self._full(key)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with self._errors(f"download {key!r}", key):
            self.client.download_file(
                self.bucket, full, str(destination), Config=self.transfer_config
            )
        return destination

    def delete(self, key: str) -> None:
        """Removes the object; one that is not there is no error (S3 answers 204 alike)."""
        with self._errors(f"delete {key!r}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def exists(self, key: str) -> bool:
        full = self._full(key)
        try:
            with self._errors(f"look up {key!r}", key):
                self.client.head_object(Bucket=self.bucket, Key=full)
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix`` (relative to the store's prefix), sorted;
        pages through ListObjectsV2 ``page_size`` keys at a time."""
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise InvalidArgument({"prefix": f"{prefix!r} is not a valid key prefix"})
        keys: list[str] = []
        with self._errors(f"list {prefix!r}"):
            paginator = self.client.get_paginator("list_objects_v2")
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=self.prefix + prefix,
                PaginationConfig={"PageSize": self.page_size},
            )
            for page in pages:
                keys.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", []))
        return sorted(keys)

    # -- start-up check ---------------------------------------------------------

    def verify(self) -> None:
        """Checks that the bucket exists and these credentials reach it; raises
        SystemExit with a message that names the problem."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            code, status = _code_and_status(error)
            if status == 404 or code in ("NoSuchBucket", "NotFound"):
                raise _config_error(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint}"
                    " (create it, or set SENTILOOP_S3_BUCKET / SENTILOOP_S3_ENDPOINT_URL)"
                ) from error
            if status == 403 or code in _DENIED_CODES:
                raise _config_error(
                    f"access to bucket {self.bucket!r} at {self.endpoint} was denied"
                    f" ({code}): check the AWS credentials"
                ) from error
            raise SystemExit(
                f"object store error: bucket {self.bucket!r} is not reachable at"
                f" {self.endpoint}: {code} (HTTP {status})"
            ) from error
        except NoCredentialsError as error:
            raise _config_error("no AWS credentials found") from error
        except _CONNECTION_ERRORS as error:
            raise SystemExit(
                f"object store error: bucket {self.bucket!r} is not reachable at"
                f" {self.endpoint}: {error}"
            ) from error


def _code_and_status(error: Any) -> tuple[str, int]:
    response = getattr(error, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def open_s3_object_store(configuration: Settings) -> S3ObjectStore:
    """The store the settings configure, checked: raises SystemExit naming what is
    missing or wrong (no bucket variable, no credentials, no such bucket, unreachable)."""
    settings = S3Settings.from_settings(configuration)
    store = S3ObjectStore(
        make_client(settings),
        settings.bucket,
        settings.prefix,
        multipart_threshold=settings.multipart_threshold,
        multipart_chunksize=settings.multipart_chunksize,
    )
    store.verify()
    return store
