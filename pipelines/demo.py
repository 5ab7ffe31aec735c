"""The embedded demo: a local S3 (SeaweedFS) with scikit-image's sample photos -> the batch job on a
local Ray -> Parquet + thumbnails in S3 -> an HTML contact sheet. Needs no network and no cluster."""

from __future__ import annotations

import os
from pathlib import Path

from tqdm import tqdm

from pipelines.batch import Summary, run
from pipelines.config import JobConfig, ModelSpec
from pipelines.contact_sheet import write_contact_sheet
from pipelines.object_store import start_local_s3
from pipelines.samples import sample_photos
from pipelines.storage import Location

BUCKET = "photos"
# One upload that no decoder accepts, so the demo shows how a broken photo is reported.
BROKEN = {"broken_upload.jpg": b"\xff\xd8\xff\xe0" + b"\x00" * 64}


def keep_outputs(cfg: JobConfig, endpoint_url: str, workdir: Path) -> None:
    """Copies the Parquet dataset and the thumbnails out of the demo's store (which goes away with it)
    into ``workdir``/crops and ``workdir``/thumbs, where a user can open them."""
    import shutil

    import pyarrow.fs as pafs

    for uri, name in ((cfg.output, "crops"), (cfg.thumbnails, "thumbs")):
        src, dst = Location(uri, endpoint_url), workdir / name
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        pafs.copy_files(src.root, str(dst), source_filesystem=src.filesystem(),
                        destination_filesystem=pafs.LocalFileSystem())


def run_demo(workdir: str | Path = "ugc-crop-demo", ratios: list[str] | None = None,
             cfg_overrides: dict | None = None) -> tuple[Summary, Path]:
    """Returns the job summary and the contact sheet's path (``workdir``/contact_sheet.html); the
    Parquet rows and thumbnails are kept beside it (``workdir``/crops, ``workdir``/thumbs)."""
    import ray

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    store = start_local_s3(buckets=[BUCKET])  # a temporary data dir, removed by stop()
    print(f"local S3 (SeaweedFS) at {store.endpoint_url}, data in {store.data_dir}")
    try:
        os.environ.update(store.env())  # for this driver; the workers get them from the job's runtime_env
        client = store.client()
        photos = {**sample_photos(), **BROKEN}
        for name, data in tqdm(sorted(photos.items()), desc="upload", unit="photo"):
            client.put_object(Bucket=BUCKET, Key=f"uploads/{name}", Body=data)
        if not ray.is_initialized():
            ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                     runtime_env={"env_vars": store.env()})
        cfg = JobConfig(input=f"s3://{BUCKET}/uploads/", output=f"s3://{BUCKET}/crops/",
                        thumbnails=f"s3://{BUCKET}/thumbs/", endpoint_url=store.endpoint_url,
                        model=ModelSpec(untrained_ok=True), overwrite=True,
                        max_error_rate=0.5,  # the demo uploads a broken photo on purpose
                        **(cfg_overrides or {}))
        if ratios:
            cfg.ratios = ratios
        summary = run(cfg)
        sheet = write_contact_sheet(Location(cfg.output, store.endpoint_url), Location(cfg.input, store.endpoint_url),
                                    workdir / "contact_sheet.html", thumbnails=Location(cfg.thumbnails, store.endpoint_url),
                                    title="ugc-crop demo")
        keep_outputs(cfg, store.endpoint_url, workdir)
        return summary, sheet
    finally:
        store.stop()
