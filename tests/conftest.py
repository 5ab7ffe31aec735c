"""Shared fixtures: one Ray instance per test session, dataset locations, small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("UGC_SHARED_DATA", ROOT.parent / "shared" / "data"))
GAICD_DIR = SHARED_DATA / "gaicd"
DUTS_DIR = SHARED_DATA / "duts"

os.environ.setdefault("OMP_NUM_THREADS", "1")


def needs_gaicd() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not (GAICD_DIR / "split.json").exists(),
                              reason=f"GAICD not found at {GAICD_DIR} (../shared/data is absent)")


def needs_duts() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not (DUTS_DIR / "images").exists(),
                              reason=f"DUTS not found at {DUTS_DIR} (../shared/data is absent)")


@pytest.fixture(scope="session")
def ray_session():
    """The one local Ray instance every Ray test shares; started lazily, shut down at the end."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory):
    """One SeaweedFS S3 store on 127.0.0.1 for the session (pipelines.object_store.start_local_s3)."""
    from pipelines.object_store import start_local_s3

    store = start_local_s3(tmp_path_factory.mktemp("seaweedfs"))
    yield store
    store.stop()
