"""Submitting jobs on datasets of precomputed features: the spec is checked against the dataset's
feature spaces with a 422 naming the field, and the memory estimate counts features, not pixels."""

from __future__ import annotations

import pytest
from api_support import Keys, ready_dataset, submit
from fastapi.testclient import TestClient

from api.memory_estimate import estimate_job_memory
from core.spec import JobSpec
from service.settings import Settings

FEATURES_ONLY = {
    "count": 50_000,
    "has_labels": True,
    "height": None,
    "width": None,
    "channels": None,
    "has_images": False,
    "feature_spaces": {"clip": 768, "dino": 384},
}


def test_feature_job_memory_counts_n_times_d_floats() -> None:
    est = estimate_job_memory(JobSpec(dataset_id="ds_x", num_clusters=10), FEATURES_ONLY)
    assert est is not None and est.backbone == "mlp"
    print(f"50,000 x (768 + 384) features, defaults: {est.describe()}")
    # every feature array is loaded: 50,000 x 1,152 float32 = 230 MB
    assert est.terms["features"] == 4 * 50_000 * (768 + 384) and "images" not in est.terms
    # batch inputs of the clip space (the default, first by name): B = 200, M = 2
    assert est.terms["batch_inputs"] == 2 * 5 * 200 * 4 * 768
    assert est.terms["models"] == 4 * 3 * 2 * (768 * 512 + 3 * 512 + 512 * 10 + 10) + 4 * (
        768 * 512 + 3 * 512 + 512 * 10 + 10
    )
    dino = estimate_job_memory(
        JobSpec(dataset_id="ds_x", num_clusters=10, base={"features": "dino"}), FEATURES_ONLY
    )
    assert dino is not None and dino.terms["batch_inputs"] == 2 * 5 * 200 * 4 * 384
    many = estimate_job_memory(
        JobSpec(dataset_id="ds_x", num_clusters=10), {**FEATURES_ONLY, "count": 20_000_000}
    )
    assert many is not None and many.largest_field() == "refine.strategy"  # the kNN block
    huge = estimate_job_memory(
        JobSpec(dataset_id="ds_x", num_clusters=10, refine={"strategy": "confidence"}),
        {**FEATURES_ONLY, "count": 20_000_000},
    )
    assert huge is not None and huge.largest_field() == "base.features"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_submit_checks_the_spec_against_the_feature_spaces(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    feats = ready_dataset(client, settings, keys.a, **{**FEATURES_ONLY, "count": 60})
    images = ready_dataset(client, settings, keys.a, count=60, height=8, width=8, channels=1)
    cases = [
        (feats, {"base": {"method": "gcc"}}, "base.method", "'gcc' needs images"),
        (
            feats,
            {"base": {"features": "siglip"}},
            "base.features",
            "no feature space 'siglip' (it has: clip, dino)",
        ),
        (
            feats,
            {"refine": {"input": "images"}},
            "refine.input",
            "no images, only feature spaces (clip, dino)",
        ),
        (feats, {"base": {"backbone": "small_cnn"}}, "base.backbone", "applies to images only"),
        (images, {"refine": {"input": "features"}}, "refine.input", "the dataset has no feature arrays"),
        (images, {"base": {"features": "clip"}}, "base.features", "no feature space 'clip' (it has: none)"),
    ]
    for ds, extra, field, problem in cases:
        r = submit(client, keys.a, ds, **extra)
        assert r.status_code == 422, (extra, r.text[:300])
        err = r.json()["errors"][0]
        assert err["field"] == field and problem in err["problem"], (extra, err)
    assert submit(client, keys.a, feats).status_code == 202
    assert submit(client, keys.a, feats, base={"method": "dec", "features": "dino"}).status_code == 202
    # the spec alone says features: refused without looking at any dataset
    r = submit(client, keys.a, images, refine={"input": "features"}, base={"method": "and"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "base.method", r.text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_predictions_on_a_feature_job_whose_result_names_no_feature_space_are_a_422_naming_the_job(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    """A feature job's predictions read its feature array, named in ``base_info.feature_space``
    (test_api_predictions checks them); a result without it cannot say which array to read."""
    import io
    import json
    from pathlib import Path

    import numpy as np
    from sqlalchemy import update

    from service.db.models import Artifact, Job, utcnow
    from service.db.session import session_scope

    result = json.loads((Path(__file__).parent / "result_example.json").read_text())
    result["dataset"].update(
        height=None, width=None, channels=None, has_images=False, feature_spaces={"clip": 4}
    )
    result["base_info"]["input"] = "features"
    job_id = submit(client, keys.a, ready_dataset(client, settings, keys.a, **FEATURES_ONLY)).json()["id"]
    with session_scope(settings.database_url) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="succeeded", result=result, finished_at=utcnow())
        )
        s.add(
            Artifact(
                job_id=job_id,
                name="refined_ensemble.safetensors",
                path=f"jobs/{job_id}/x",
                size=1,
                sha256="0" * 64,
            )
        )
    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((2, 8, 8, 1), np.uint8))
    r = client.post(
        f"/v1/jobs/{job_id}/predictions", headers=keys.a, files={"file": ("x.npz", buf.getvalue())}
    )
    assert r.status_code == 422, r.text
    err = r.json()["errors"][0]
    assert err["field"] == "job_id" and "records no feature space" in err["problem"], err
