"""Upload validation under hostile files, on an embedded SQLite database with the real child runner:
each memory bomb ends ``invalid`` with its reason while neither this (worker) process nor the
validation child grows by more than a few tens of MB; the child's memory and CPU limits turn a limit
hit into ``invalid`` with the limit named; reasons with undecodable bytes are stored readable."""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from digits_features import digits_pca_features
from PIL import Image
from upload_bombs import (
    UNDECODABLE_REASON,
    deflated_pt,
    many_entries_zip,
    pax_tar_gz,
    undecodable_tar,
    zero_itemsize_npz,
)

from service.db.crud import job_runs
from service.db.models import ApiKey, Checkpoint, Dataset, new_id
from service.db.session import dispose_engines, session_scope
from service.settings import Settings, get_settings

MiB = 1024**2
# Growth allowed over a clean upload's check: allocator noise, never the bomb's hundreds of MB.
GROWTH_BOUND = 40 * MiB
Builder = Callable[[Path], object]


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    for key in ("RUC_DATABASE_URL", "RUC_BROKER_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RUC_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    dispose_engines()
    s = get_settings()
    s.ensure_dirs()
    from service.db.migrate import upgrade_head

    upgrade_head(s.database_url)
    yield s
    dispose_engines()
    get_settings.cache_clear()


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _row(settings: Settings, model: type[Dataset] | type[Checkpoint], name: str, build: Builder) -> str:
    upload_id = new_id("ds" if model is Dataset else "ck")
    rel = f"{model.__tablename__}/{upload_id}/{name}"
    (settings.storage_dir / rel).parent.mkdir(parents=True)
    build(settings.storage_dir / rel)
    with session_scope() as s:
        key = ApiKey(id=new_id("key"), name="t", key_hash=new_id("h")[-40:], prefix="ruc_x")
        s.add(key)
        s.flush()
        s.add(model(id=upload_id, owner_id=key.id, filename=name, size=1, sha256="0" * 64, path=rel))
    return upload_id


def _check(
    settings: Settings, model: type[Dataset] | type[Checkpoint], upload_id: str
) -> Dataset | Checkpoint:
    from worker.validation import validate_checkpoint, validate_dataset

    check = validate_dataset if model is Dataset else validate_checkpoint
    check(upload_id, settings=settings)
    with session_scope() as s:
        row = (job_runs.get_dataset if model is Dataset else job_runs.get_checkpoint)(s, upload_id)
        assert row is not None
        s.expunge(row)
        return row


def _child_peak(caplog: pytest.LogCaptureFixture, upload_id: str) -> float:
    text = "\n".join(r.getMessage() for r in caplog.records if upload_id in r.getMessage())
    match = re.search(r"child peak RSS (\d+) MiB", text)
    assert match, text
    return float(match.group(1)) * MiB


def _good_npz(path: Path) -> None:
    np.savez(path, images=np.zeros((12, 8, 8, 1), np.uint8), labels=np.arange(12) % 3)


BOMBS = [
    pytest.param(
        Dataset,
        "d.npz",
        lambda p: zero_itemsize_npz(p, count=30_000_000),
        r"class_names: has a zero-size dtype '\|S0'; refused",
        id="npz-zero-itemsize-3e7",
    ),
    pytest.param(
        Dataset,
        "d.tar.gz",
        lambda p: pax_tar_gz(p, header_bytes=400 * MiB),
        r"archive: has an extended \(pax or long-name\) header of 419430400 bytes, more than the limit",
        id="tar-gz-pax-header-400MB",
    ),
    pytest.param(
        Dataset,
        "d.zip",
        lambda p: many_entries_zip(p, entries=600_000),
        r"archive: has more than 500000 members \(limit\)",
        id="zip-600k-entries",
    ),
    pytest.param(
        Dataset,
        "d.npz",
        lambda p: many_entries_zip(p, entries=600_000, claimed=1),
        r"npz: has more than 500000 members \(limit\)",
        id="npz-600k-entries-end-record-says-1",
    ),
    pytest.param(
        Checkpoint,
        "m.pt",
        lambda p: deflated_pt(p, inflated_bytes=400 * MiB),
        r"checkpoint:archive/data.pkl: record is compressed \(method 8\)",
        id="pt-deflated-400MB",
    ),
]


@pytest.mark.parametrize(("model", "name", "build", "reason"), BOMBS)
def test_memory_bombs_are_invalid_without_growing_worker_or_child(
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    model: type[Dataset] | type[Checkpoint],
    name: str,
    build: Builder,
    reason: str,
) -> None:
    caplog.set_level("INFO", logger="worker.validation")
    good = _row(settings, Dataset, "good.npz", _good_npz)
    assert _check(settings, Dataset, good).status == "ready"
    baseline = _child_peak(caplog, good)

    bomb = _row(settings, model, name, build)
    before = _rss()
    row = _check(settings, model, bomb)
    grown = _rss() - before
    peak = _child_peak(caplog, bomb)
    print(
        f"{name}: worker RSS +{grown / MiB:.1f} MiB, "
        f"child peak {peak / MiB:.0f} MiB (clean {baseline / MiB:.0f})"
    )
    assert row.status == "invalid" and row.reason is not None and re.search(reason, row.reason), row.reason
    assert grown < GROWTH_BOUND
    assert peak - baseline < GROWTH_BOUND


def _compressed_npz(path: Path) -> None:
    """300 MB of images in a 300 KB file: legitimate, but over a 64 MiB memory limit."""
    np.savez_compressed(path, images=np.zeros((300, 1000, 1000), np.uint8))


def _big_png_zip(path: Path) -> None:
    """24 grey 4096x4096 PNGs (16 Mpx each, the pixel limit): seconds of decoding from 400 KB."""
    img = Image.fromarray(np.zeros((4096, 4096), np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    with tarfile.open(path, "w") as tf:
        for i in range(24):
            info = tarfile.TarInfo(f"img{i:02d}.png")
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))


def test_a_validation_over_its_memory_or_cpu_limit_is_invalid_and_names_the_limit(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.validation_memory_bytes = 64 * MiB
    settings.validation_memory_upload_factor = 0
    big = _row(settings, Dataset, "big.npz", _compressed_npz)
    row = _check(settings, Dataset, big)
    assert (row.status, row.reason) == ("invalid", "validation exceeded its memory limit of 64 MiB")

    settings.validation_memory_bytes = 2048 * MiB
    settings.validation_cpu_seconds = 1
    settings.validation_cpu_seconds_per_gib = 0
    slow = _row(settings, Dataset, "slow.tar", _big_png_zip)
    row = _check(settings, Dataset, slow)
    assert (row.status, row.reason) == ("invalid", "validation exceeded its CPU time limit of 1 s")


def test_a_reason_with_undecodable_member_names_is_stored_readable(settings: Settings) -> None:
    upload_id = _row(settings, Dataset, "names.tar", undecodable_tar)
    row = _check(settings, Dataset, upload_id)
    assert row.status == "invalid" and row.reason is not None
    assert row.reason.startswith(UNDECODABLE_REASON), row.reason


def _features_npz(path: Path) -> None:
    feats, labels = digits_pca_features(16, n=200)
    np.savez(path, features_pca=feats, features=feats[:, :4] * 2, labels=labels)


def _nan_features_npz(path: Path) -> None:
    x = np.ones((10, 4), np.float32)
    x[2, 1] = x[5, 0] = x[7, 3] = np.nan
    np.savez(path, images=np.zeros((10, 2, 2), np.uint8), features_clip=x)


def test_feature_datasets_are_checked_in_the_child_and_facts_list_their_spaces(settings: Settings) -> None:
    ready = _check(settings, Dataset, _row(settings, Dataset, "f.npz", _features_npz))
    assert ready.status == "ready" and ready.facts is not None, ready.reason
    assert ready.facts["feature_spaces"] == {"default": 4, "pca": 16}
    assert (ready.facts["count"], ready.facts["has_images"], ready.facts["height"]) == (200, False, None)
    # the reader's reason reaches the row as it is (tests/core/test_feature_datasets.py has the rest)
    row = _check(settings, Dataset, _row(settings, Dataset, "bad.npz", _nan_features_npz))
    reason = "features_clip: 3 non-finite values (NaN, inf or beyond float32; first in row 2)"
    assert (row.status, row.reason) == ("invalid", reason)
