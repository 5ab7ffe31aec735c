"""The thumbnail route's only window on storage: one bucket, one key prefix, nothing else.

Keys are checked as plain strings before any request reaches S3, so traversal (``..``), absolute
paths, URLs naming another bucket or control characters never leave the process.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve.errors import ServiceError

MAX_KEY_BYTES = 1024  # S3's own key limit


def check_key(key: str, prefix: str) -> str:
    """The key itself if it lies under ``prefix``; ServiceError(400) with the reason otherwise."""
    if not key:
        raise ServiceError(400, "key is empty")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ServiceError(400, f"key is longer than {MAX_KEY_BYTES} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in key) or "\\" in key:
        raise ServiceError(400, "key contains control characters or backslashes")
    if key.startswith(("/", "~")) or "://" in key or (len(key) > 1 and key[1] == ":"):
        raise ServiceError(400, "key must be relative to the configured bucket, not an absolute path or URL")
    if ".." in key:
        raise ServiceError(400, "key must not contain '..'")
    parts = key.split("/")
    if "." in parts:
        raise ServiceError(400, "key must not contain '.' path segments")
    if "" in parts:
        raise ServiceError(400, "key must not contain empty path segments ('//' or a trailing '/')")
    root = prefix.strip("/")
    if root and not key.startswith(root + "/"):
        raise ServiceError(400, f"key is outside the configured prefix {root + '/'!r}")
    return key


@dataclass
class StoredObject:
    data: bytes
    etag: str  # the store's ETag, quotes stripped


class ObjectReader:
    """Reads whole objects from one bucket; S3 errors become ServiceError with a status."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str = "us-east-1",
                 access_key: str | None = None, secret_key: str | None = None, max_bytes: int = 20 << 20) -> None:
        self.bucket, self.prefix, self.max_bytes = bucket, prefix, max_bytes
        self._client_args = dict(endpoint_url=endpoint_url, region_name=region,
                                 aws_access_key_id=access_key, aws_secret_access_key=secret_key)
        self._client = None

    @property
    def client(self):
        if self._client is None:  # lazily: boto3 import and endpoint resolution only when used
            import boto3
            from botocore.config import Config

            # Short timeouts and one retry: a store that accepts connections but never answers must
            # cost a request seconds, not minutes (routes add an overall deadline on top).
            self._client = boto3.client("s3", config=Config(retries={"max_attempts": 2, "mode": "standard"},
                                                            connect_timeout=2, read_timeout=4,
                                                            max_pool_connections=32),
                                        **self._client_args)
        return self._client

    def check(self) -> None:
        """Raises ValueError with the reason when the configured store cannot serve thumbnails: a
        malformed endpoint, a bucket that does not exist, credentials it refuses, no answer."""
        from urllib.parse import urlparse

        from botocore.exceptions import BotoCoreError, ClientError

        endpoint = self._client_args["endpoint_url"]
        if endpoint is not None:
            url = urlparse(endpoint)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(f"endpoint_url must be an http(s) URL, got {endpoint!r}")
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            what = "does not exist" if code in {"404", "NoSuchBucket", "NotFound"} else f"refused access ({code})"
            raise ValueError(f"thumbnail bucket {self.bucket!r} {what}") from None
        except BotoCoreError as e:
            raise ValueError(f"object store at {endpoint or 'AWS'} unreachable ({type(e).__name__})") from None

    def head(self, key: str) -> str:
        """The object's ETag; 404 when it does not exist."""
        check_key(key, self.prefix)
        resp = self._call("head_object", key)
        if resp["ContentLength"] > self.max_bytes:
            raise ServiceError(413, f"object is {resp['ContentLength']} bytes, over the {self.max_bytes} byte limit")
        return resp["ETag"].strip('"')

    def get(self, key: str) -> StoredObject:
        check_key(key, self.prefix)
        resp = self._call("get_object", key)
        if resp["ContentLength"] > self.max_bytes:
            resp["Body"].close()
            raise ServiceError(413, f"object is {resp['ContentLength']} bytes, over the {self.max_bytes} byte limit")
        return StoredObject(resp["Body"].read(), resp["ETag"].strip('"'))

    def _call(self, op: str, key: str) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError

        if not self.bucket:
            raise ServiceError(503, "no bucket configured for thumbnails (set UGC_SERVE_BUCKET)")
        try:
            return getattr(self.client, op)(Bucket=self.bucket, Key=key)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in {"404", "NoSuchKey", "NotFound"}:
                raise ServiceError(404, f"no object {key!r}") from None
            if code in {"403", "AccessDenied"}:
                raise ServiceError(502, "the object store denied access") from None
            raise ServiceError(502, f"object store error {code}") from None
        except BotoCoreError as e:
            raise ServiceError(502, f"object store unreachable: {type(e).__name__}") from None
