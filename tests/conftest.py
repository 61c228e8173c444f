"""Shared fixtures: a real small image dataset (scikit-learn's digits) as an ``ImageDataset``.

Also pins torch to one intra-op thread for the test session (override with RUC_TEST_THREADS).
Why: the test machine has 2 cores shared by several processes; torch's OpenMP workers spin-wait
for each other when cores are oversubscribed, which made a tiny end-to-end job take 52 s of wall
time instead of 2.5 s (measured: same job, OMP_NUM_THREADS unset vs 1). Library code never does
this; it is a property of the shared test machine.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

try:  # the API-only environment has no torch
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

if torch is not None:
    torch.set_num_threads(int(os.environ.get("RUC_TEST_THREADS", "1")))

# Marks by need, derived from the fixtures a test uses, so `-m "not postgres"` and the like select
# exactly what a machine can run. A fixture that cannot reach its service fails the test, never skips.
NEEDS_BY_FIXTURE: dict[str, tuple[str, ...]] = {
    "pg_url": ("postgres",),
    "private_pg_url": ("postgres",),
    "postgres_url": ("postgres",),
    "redis_url": ("redis",),
    "services": ("stack",),
    "s3_services": ("stack",),
    # tests/reliability: instances of the suite's own (the server binaries), and the stack on them
    "own_postgres": ("postgres",),
    "own_redis": ("redis",),
    "fault_stack": ("stack",),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        needs = {
            mark for name in getattr(item, "fixturenames", ()) for mark in NEEDS_BY_FIXTURE.get(name, ())
        }
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("database_url") == "postgres":
            needs.add("postgres")
        for mark in sorted(needs):
            item.add_marker(mark)


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory):  # -> s3_support.MotoS3
    """One S3 HTTP endpoint (moto's server, a subprocess) for the session; tests make their own buckets."""
    from s3_support import moto_s3

    with moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits as uint8 (N, 8, 8, 1) = round(x * 255 / 16), and labels (N,) int64.

    The data ships with scikit-learn (no download)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * 255.0 / 16.0).astype(np.uint8)[..., None]
    return images, d.target.astype(np.int64)


@pytest.fixture(scope="session")
def digits_dataset():  # -> core.datasets.ImageDataset (not imported at collection: api tests have no torch)
    """Session-scoped digits ``ImageDataset`` with labels. Treat as read-only: it is shared."""
    from core.datasets import ImageDataset

    images, labels = digits_arrays()
    return ImageDataset(images=torch.from_numpy(images), labels=torch.from_numpy(labels))
