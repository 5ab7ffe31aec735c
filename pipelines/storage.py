"""Where photos, crops and thumbnails live: s3:// URIs or local folders, both through pyarrow filesystems.

pyarrow's S3FileSystem is what Ray Data itself reads and writes with, and ``endpoint_override``
serves any S3-compatible store (SeaweedFS, MinIO, R2, ...). Credentials follow the usual AWS chain
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, instance roles), so none are passed around in task specs.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq


@dataclass(frozen=True)
class Location:
    """A parsed --input / --output / --thumbnails value: a filesystem plus the root path inside it."""

    uri: str
    endpoint_url: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def root(self) -> str:
        """'bucket/prefix' for S3 (pyarrow's spelling), an absolute path for a local folder."""
        if self.is_s3:
            return self.uri[len("s3://"):].strip("/")
        return str(Path(self.uri).expanduser().resolve())

    def filesystem(self) -> pafs.FileSystem:
        if not self.is_s3:
            return pafs.LocalFileSystem()
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            return pafs.S3FileSystem(endpoint_override=endpoint, region=region)
        return pafs.FileSystem.from_uri(self.uri)[0]  # resolves the bucket's region on real AWS

    def uri_of(self, key: str, ratio: str) -> str:
        """The thumbnail URI of ``key`` at ``ratio`` under this root, as a user would open it."""
        from pipelines.photos import thumbnail_path

        path = thumbnail_path(self.root, key, ratio)
        return f"s3://{path}" if self.is_s3 else path

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts)])

    def path_of(self, key: str) -> str:
        """The filesystem path of an input key (the inverse of ``list_inputs``' naming)."""
        if self.is_s3:
            return f"{self.root.split('/', 1)[0]}/{key}"
        root = Path(self.root)
        return str(root) if root.is_file() else str(root / key)


@dataclass(frozen=True)
class InputFile:
    key: str  # S3: the object key inside the bucket; local: the path relative to the input folder
    path: str  # path inside the filesystem, for reading
    size: int
    mtime_ns: int = 0  # last modified (S3: LastModified); with size, what tells a replaced photo
    etag: str | None = None  # S3's ETag (None on a local disk): changes with the content, whatever size and mtime do


def s3_client(loc: Location):
    """A boto3 client for ``loc``'s store (the same endpoint and credentials chain as its filesystem)."""
    import boto3

    endpoint = loc.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return boto3.client("s3", endpoint_url=endpoint, region_name=region or ("us-east-1" if endpoint else None))


def _list_s3(loc: Location) -> list[InputFile]:
    """ListObjectsV2 under the root: size, LastModified and the ETag pyarrow's listing does not give."""
    bucket, _, prefix = loc.root.partition("/")
    client = s3_client(loc)
    try:
        head = client.head_object(Bucket=bucket, Key=prefix) if prefix else None
    except client.exceptions.ClientError:
        head = None
    if head is not None:  # the input is one object
        items = [{"Key": prefix, "Size": head["ContentLength"], "LastModified": head["LastModified"], "ETag": head.get("ETag")}]
    else:
        items = []
        folder = prefix.rstrip("/") + "/" if prefix else ""
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder):
            items += [o for o in page.get("Contents", []) if not o["Key"].endswith("/")]  # folder markers skipped
        if not items:
            client.head_bucket(Bucket=bucket)  # a missing bucket raises here
            if prefix:
                raise FileNotFoundError(f"input {loc.uri} does not exist")
    return [InputFile(key=o["Key"], path=f"{bucket}/{o['Key']}", size=int(o["Size"]),
                      mtime_ns=int(o["LastModified"].timestamp() * 1e9), etag=(o.get("ETag") or "").strip('"') or None)
            for o in items]


def list_inputs(loc: Location, fs: pafs.FileSystem | None = None) -> list[InputFile]:
    """Every file under the input root, sorted by key; directories (and S3 folder markers) are skipped.
    On S3 the listing is S3's own (ListObjectsV2), which carries each object's ETag."""
    if loc.is_s3 and fs is None:
        return sorted(_list_s3(loc), key=lambda f: f.key)
    fs = fs or loc.filesystem()
    root = loc.root
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {loc.uri} does not exist")
    if info.type == pafs.FileType.File:
        entries = [info]
    else:
        entries = [e for e in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if e.type == pafs.FileType.File]
    out = []
    for e in entries:
        if loc.is_s3:
            key = e.path.split("/", 1)[1]
        else:
            key = Path(e.path).relative_to(root).as_posix() if e.path != root else Path(root).name
        out.append(InputFile(key=key, path=e.path, size=int(e.size or 0), mtime_ns=int(e.mtime_ns or 0)))
    return sorted(out, key=lambda f: f.key)


def parquet_files(loc: Location, fs: pafs.FileSystem) -> list[str]:
    info = fs.get_file_info(loc.root)
    if info.type != pafs.FileType.Directory:
        return []
    return sorted(e.path for e in fs.get_file_info(pafs.FileSelector(loc.root, recursive=True))
                  if e.type == pafs.FileType.File and e.path.endswith(".parquet"))


def read_output(loc: Location, columns: list[str], fs: pafs.FileSystem | None = None,
                drop_unreadable: bool = False, missing_ok: bool = False) -> pa.Table:
    """The existing output's ``columns``; an empty table when there is none.

    A Parquet file that cannot be read (a crash mid-upload on a local disk) is reported; with
    ``drop_unreadable`` it is deleted so that its photos are processed again by --resume. With
    ``missing_ok`` columns an older output lacks are left out instead of failing.
    """
    fs = fs or loc.filesystem()
    files = parquet_files(loc, fs)
    if not files:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    if missing_ok:
        try:
            present = set(pads.dataset(files, filesystem=fs, format="parquet").schema.names)
            columns = [c for c in columns if c in present]
        except (pa.ArrowInvalid, OSError):
            pass
    try:
        return pads.dataset(files, filesystem=fs, format="parquet").to_table(columns=columns)
    except (pa.ArrowInvalid, OSError):
        pass
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, filesystem=fs, columns=columns))
        except (pa.ArrowInvalid, OSError) as e:
            warnings.warn(f"unreadable output file {f}: {e}" + ("; deleting it" if drop_unreadable else ""), stacklevel=2)
            if drop_unreadable:
                fs.delete_file(f)
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table(
        {c: pa.array([], pa.string()) for c in columns})


def drop_keys(loc: Location, keys: set[str], fs: pafs.FileSystem | None = None) -> int:
    """Removes every row of ``keys`` from the Parquet output, rewriting only the files that hold one.
    Each file is deleted before its other rows are written back under a new name: a crash in between
    loses those rows (the next --resume makes them again) and never duplicates them. Returns rows dropped."""
    fs = fs or loc.filesystem()
    dropped = 0
    wanted = pa.array(sorted(keys), pa.string())
    for i, f in enumerate(parquet_files(loc, fs)):
        table = pq.read_table(f, filesystem=fs)
        hit = pa.compute.is_in(table.column("key"), value_set=wanted)
        n = pa.compute.sum(hit).as_py() or 0
        if not n:
            continue
        kept = table.filter(pa.compute.invert(hit))
        fs.delete_file(f)
        if kept.num_rows:
            pq.write_table(kept, f"{f.rsplit('.', 1)[0]}-kept{i}.parquet", filesystem=fs)
        dropped += n
    return dropped


def delete_thumbnails(thumbs: Location, uris: list[str | None], fs: pafs.FileSystem | None = None) -> int:
    """Deletes the thumbnails named by output rows (their ``thumbnail`` URIs), only those inside
    ``thumbs``' root; returns how many were there."""
    fs = fs or thumbs.filesystem()
    root = thumbs.root.rstrip("/") + "/"
    gone = 0
    for uri in {u for u in uris if u}:
        path = uri[len("s3://"):] if uri.startswith("s3://") else uri
        if not path.startswith(root) or "/../" in path:
            continue
        try:
            if fs.get_file_info(path).type == pafs.FileType.File:
                fs.delete_file(path)
                gone += 1
        except OSError:
            pass
    return gone


def delete_job_output(out: Location, thumbs: Location | None) -> tuple[int, int]:
    """What --overwrite removes: the Parquet files under ``out`` and the thumbnails their rows name.
    Anything else under either location (a backup, another tool's files) stays. -> (files, thumbnails)."""
    fs = out.filesystem()
    thumbnails = 0
    if thumbs is not None:
        table = read_output(out, ["thumbnail"], fs, missing_ok=True)
        if "thumbnail" in table.column_names:
            thumbnails = delete_thumbnails(thumbs, table.column("thumbnail").to_pylist())
    files = parquet_files(out, fs)
    for f in files:
        fs.delete_file(f)
    return len(files), thumbnails


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes, content_type: str | None = None) -> None:
    """One object / file; S3 gets a Content-Type so a CDN serves it as an image."""
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    meta = {"Content-Type": content_type} if content_type and isinstance(fs, pafs.S3FileSystem) else None
    with fs.open_output_stream(path, metadata=meta) as f:
        f.write(data)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()
