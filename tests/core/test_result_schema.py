"""Real jobs' results validate against the published result schema (core.result_schema.JobResult)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from test_pipeline import _spec, _synthetic

from core.pipeline import run_job
from core.result_schema import JobResult, validated_result
from core.spec import JobSpec


def _run(tmp_path: Path, spec: JobSpec, *, labels: bool = True) -> dict:
    out = run_job(spec, _synthetic(labels=labels), device="cpu", work_dir=tmp_path)
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk == out.result
    # What run_job wrote is exactly what the schema dumps: no key dropped, none added.
    assert validated_result(on_disk) == on_disk
    return on_disk


def test_labelled_result_validates_with_every_label_figure(tmp_path: Path) -> None:
    result = _run(tmp_path, _spec())
    model = JobResult.model_validate(result)
    assert model.refined.acc is not None and 0.0 <= model.refined.acc <= 1.0
    assert model.refined.reliability and sum(b.count for b in model.refined.reliability) == 72
    assert model.clean_set.initial.precision is not None
    assert [e.epoch for e in model.per_epoch] == [1, 2, 3]
    assert all(e.clean_precision is not None for e in model.per_epoch)
    assert [(a.kind, a.eps) for a in model.robustness.refined.attacks] == [
        ("fgsm", 4 / 255),
        ("bim", 4 / 255),
    ]
    assert model.base_info is not None and model.base_info.kmeans is not None
    assert model.effective is not None and model.effective.knn_k == 5
    assert model.spec == _spec()


def test_unlabelled_result_validates_with_null_label_figures(tmp_path: Path) -> None:
    model = JobResult.model_validate(_run(tmp_path, _spec(), labels=False))
    assert model.refined.acc is None and model.refined.unavailable_reason == "dataset has no labels"
    assert model.clean_set.final.f1 is None
    assert model.robustness.base.target == "clean_prediction"
    assert all(e.clean_precision is None for e in model.per_epoch)
    assert model.dataset is not None and model.dataset.has_labels is False


def test_repeats_result_validates_with_runs_and_run_keys(tmp_path: Path) -> None:
    spec = JobSpec.model_validate({**_spec().model_dump(), "repeats": 2})
    model = JobResult.model_validate(_run(tmp_path, spec))
    assert model.runs is not None and [r.index for r in model.runs] == [0, 1]
    assert [(e.run, e.run_epoch, e.epoch) for e in model.per_epoch] == [
        (0, 1, 1),
        (0, 2, 2),
        (0, 3, 3),
        (1, 1, 4),
        (1, 2, 5),
        (1, 3, 6),
    ]
    assert model.summary is not None and len(model.summary["acc"].values) == 2
    assert model.best_run is not None and len(model.best_run.consensus) == 2


def test_a_drifted_key_fails_naming_it() -> None:
    stored = json.loads((Path(__file__).parents[1] / "api" / "result_example.json").read_text())
    stored["refined"]["accuracy_typo"] = 0.5
    with pytest.raises(ValidationError, match="refined.accuracy_typo"):
        validated_result(stored)
    del stored["refined"]["accuracy_typo"]
    del stored["per_epoch"][0]["lr"]
    with pytest.raises(ValidationError, match=r"per_epoch\.0\.lr"):
        validated_result(stored)


def test_older_result_without_later_fields_validates() -> None:
    stored = json.loads((Path(__file__).parents[1] / "api" / "result_example.json").read_text())
    for key in ("effective", "best_run", "runs", "summary", "base_info", "dataset"):
        del stored[key]
    assert validated_result(stored) == stored
