"""The memory preflight (core/ruc/preflight.py) on the CPU: a limit set below the dry run's peak
shrinks refine.batch_size and the job still succeeds; below what even the floor needs, the job fails
at once naming refine.batch_size. Limits come from a first measuring run in the same process (the
process's peak RSS is the measure on the CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.datasets import ImageDataset
from core.errors import InsufficientMemory
from core.hooks import RunHooks
from core.memory import shrink_candidates, shrink_floor
from core.pipeline import PREFLIGHT_RECORD, run_job
from core.result_schema import JobResult
from core.spec import BaseSpec, EvaluateSpec, JobSpec, RefineSpec

MiB = 1024**2
# Each job here runs whole (base clustering, RUC, evaluation, report): 40-120 s on the shared 2-core box.
slow = pytest.mark.slow


def _dataset(n: int = 192, side: int = 16) -> ImageDataset:
    """Three brightness classes of side x side RGB images."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    images = (y[:, None, None, None] * 80 + rng.integers(0, 60, (n, side, side, 3))).astype(np.uint8)
    return ImageDataset(images=torch.from_numpy(images), labels=torch.from_numpy(y.astype(np.int64)))


def _spec(batch_size: int) -> JobSpec:
    return JobSpec(
        dataset_id="syn",
        num_clusters=3,
        seed=1,
        base=BaseSpec(backbone="small_cnn", fit_epochs=1, kmeans_restarts=1, pca_dim=8),
        refine=RefineSpec(strategy="confidence", confidence_threshold=0.5, epochs=1, batch_size=batch_size),
        evaluate=EvaluateSpec(attacks=[], attack_max_samples=8),
    )


def _run(
    tmp: Path, spec: JobSpec, limit: int, events: list | None = None, side: int = 16, n: int = 192
) -> dict:
    hooks = RunHooks(on_event=lambda level, msg: (events if events is not None else []).append((level, msg)))
    data = _dataset(n, side)
    return run_job(spec, data, device="cpu", work_dir=tmp, memory_limit_bytes=limit, hooks=hooks).result


@pytest.fixture()
def warm(tmp_path: Path) -> None:
    """One tiny job first: the lazy imports of a job's later stages (report, ONNX export) raise the
    process's resident set once, which would otherwise land between a measuring run and the next."""
    torch.set_num_threads(1)
    _run(tmp_path / "warm", _spec(16), 0, side=8, n=48)


def test_shrink_rule() -> None:
    assert shrink_floor(200) == 25 and shrink_floor(64) == 16 and shrink_floor(12) == 12
    assert shrink_candidates(200) == [200, 100, 50, 25] and shrink_candidates(128) == [128, 64, 32, 16]
    assert shrink_candidates(100) == [100, 50, 25, 16] and shrink_candidates(16) == [16]


@slow
def test_a_low_limit_shrinks_the_batch_and_the_job_succeeds(tmp_path: Path, warm: None) -> None:
    first = _run(tmp_path / "a", _spec(128), 0)["preflight"]  # 0 on the CPU: measure only
    assert first["limit_bytes"] is None and not first["shrunk"] and first["batch_size"] == 128
    peak = first["measured_peak_bytes"]
    assert peak > first["tried"][0]["resident_bytes"] > 100 * MiB
    # 128 -> 64 images of 16 x 16 x 3 through small_cnn saves ~25 MB of the peak (measured).
    limit = peak - 8 * MiB
    events: list[tuple[str, str]] = []
    result = _run(tmp_path / "b", _spec(128), limit, events)
    JobResult.model_validate(result)
    pf = result["preflight"]
    print({k: pf[k] for k in ("limit_bytes", "measured_peak_bytes", "batch_size")}, pf["tried"])
    assert pf["shrunk"] and pf["requested_batch_size"] == 128 and pf["batch_size"] in (64, 32, 16)
    assert 0 < pf["measured_peak_bytes"] <= limit == pf["limit_bytes"]
    assert pf["tried"][0]["measured_peak_bytes"] > limit and pf["estimated_peak_bytes"] > 0
    assert result["effective"]["batch_size"] == pf["batch_size"]  # the runs trained at the chosen batch
    warning = [m for level, m in events if level == "warning" and m.startswith("memory preflight")]
    assert warning and f"refine.batch_size 128 -> {pf['batch_size']}" in warning[0]
    assert any(n.startswith("memory preflight: refine.batch_size 128 ->") for n in result["notes"])
    # A resumed attempt reads the record and keeps the batch (its RUC checkpoint then matches).
    assert (tmp_path / "b" / PREFLIGHT_RECORD).is_file()
    again = _run(tmp_path / "b", _spec(128), limit)
    assert again["preflight"] == pf and again["per_epoch"][0]["loss_x"] == result["per_epoch"][0]["loss_x"]


@slow
def test_a_limit_below_what_the_floor_needs_fails_naming_the_batch_size(tmp_path: Path, warm: None) -> None:
    # 32 x 32 images: the dry run at B = 16 adds ~35 MB to what the process holds (measured).
    first = _run(tmp_path / "a", _spec(16), 0, side=32)["preflight"]
    run = first["tried"][0]
    limit = (run["resident_bytes"] + run["measured_peak_bytes"]) // 2
    print(run, limit)
    with pytest.raises(InsufficientMemory, match="lower refine.batch_size below 16") as err:
        _run(tmp_path / "b", _spec(16), limit, side=32)
    assert err.value.field == "refine.batch_size"
    # Below what the process holds before RUC starts, no RUC setting helps: the data's field.
    with pytest.raises(InsufficientMemory, match="alone exceeds the limit") as err:
        _run(tmp_path / "c", _spec(16), 64 * MiB)
    assert err.value.field in ("dataset_id", "refine.backbone")
