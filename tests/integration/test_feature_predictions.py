"""Predictions of a feature job against the live stack (API and workers on Postgres and Redis): its
MLP heads take rows of its feature array (``features_pca`` here), inline or as a ready dataset's id,
and the job's own rows get exactly the refined assignments of its assignments.csv. Rows of another
D, a file without the array and non-finite values (found by the worker) are 422s naming the array."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import numpy as np
import pytest
from digits_features import digits_pca_features
from integration_support import Services

from ruc_client import ApiError, Client, poll_job

N_ROWS, DIM, KEY = 200, 16, "features_pca"  # 200 <= RUC_PREDICT_SYNC_MAX_IMAGES: answered at once


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.fixture(scope="module")
def feature_job(services: Services, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-epoch feature job on 200 digits' 16 PCA features, and the refined clusters of its CSV."""
    feats, labels = digits_pca_features(DIM, n=N_ROWS)
    spec = {
        "num_clusters": 10,
        "seed": 0,
        "base": {"fit_epochs": 5, "kmeans_restarts": 1},
        "refine": {"epochs": 2, "feature_hidden_dim": 32, "batch_size": 64},
        "evaluate": {"attacks": [{"kind": "fgsm", "eps": [0.25]}], "attack_max_samples": 50},
    }
    t0 = time.monotonic()
    with Client(services.base_url, services.key) as client:
        content = _npz(**{KEY: feats, "labels": labels})
        ds = client.wait_dataset(client.upload_dataset(content, filename="pca.npz").id, timeout_s=60)
        assert ds.status == "ready", ds.reason
        done = client.wait(
            client.submit_job({"dataset_id": ds.id, **spec}).id,
            timeout_s=240,
            progress=False,
            updates=poll_job(interval_s=0.3),
        )
        assert done.status == "succeeded", (done.error_code, done.error)
        assert client.get_result(done.id)["base_info"]["feature_space"]["dim"] == DIM
        csv_path = client.download_artifact(
            done.id, "assignments.csv", tmp_path_factory.mktemp("f") / "a.csv"
        )
    print(f"feature job: dataset and job done in {time.monotonic() - t0:.1f} s")
    rows = list(csv.DictReader(csv_path.read_text().splitlines()))
    return {
        "id": done.id,
        "dataset_id": ds.id,
        "features": feats,
        "refined": [int(r["refined_cluster"]) for r in rows],
    }


def test_the_jobs_own_rows_get_its_assignments_inline_and_by_dataset_id(
    services: Services, feature_job: dict[str, Any]
) -> None:
    feats, refined = feature_job["features"], feature_job["refined"]
    with Client(services.base_url, services.key) as client:
        t0 = time.monotonic()
        inline = client.predict(feature_job["id"], _npz(**{KEY: feats}), filename="rows.npz")
        inline_s = time.monotonic() - t0
        t0 = time.monotonic()
        by_id = client.predict(feature_job["id"], dataset_id=feature_job["dataset_id"])
        by_id_s = time.monotonic() - t0
        # float64 rows beside other arrays: only the job's array is read, as float32
        wide = client.predict(
            feature_job["id"],
            _npz(**{KEY: feats[:20].astype(np.float64), "images": np.zeros((20, 8, 8, 1), np.uint8)}),
            filename="wide.npz",
        )
    print(f"{N_ROWS} rows: inline {inline_s:.2f} s, by dataset id {by_id_s:.2f} s")
    equal = np.mean(np.array(inline.assignments) == np.array(refined))
    print(f"predictions vs the feature job's assignments.csv: {equal:.3f} of {N_ROWS} equal")
    assert inline.status == "succeeded" and inline.count == N_ROWS
    assert inline.assignments == refined and by_id.assignments == refined
    assert by_id.dataset_id == feature_job["dataset_id"]
    probs = np.array(inline.probabilities)
    assert probs.shape == (N_ROWS, 10) and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert wide.assignments == refined[:20]


def test_rows_that_do_not_fit_are_422s_naming_the_array(
    services: Services, feature_job: dict[str, Any]
) -> None:
    feats = feature_job["features"]
    nan = feats[:5].copy()
    nan[3, 2] = np.nan
    cases = [  # (file, words): the API reads the header, the worker finds the NaN
        (_npz(**{KEY: feats[:5, :8]}), "has 8 dimensions but the job's feature space has 16"),
        (_npz(features_clip=feats[:5]), "missing: this job's networks read the feature array 'features_pca'"),
        (_npz(images=np.zeros((5, 8, 8, 1), np.uint8)), "(found keys: images)"),
        (_npz(**{KEY: feats[:5].astype(np.int64)}), "must be a float array"),
        (_npz(**{KEY: nan}), "1 non-finite value (NaN, inf or beyond float32; first in row 3)"),
    ]
    files = [(content, "x.npz", words) for content, words in cases]
    files.append((_npz(x=np.zeros(1)), "x.zip", "an image archive has none"))  # rows come in an .npz
    with Client(services.base_url, services.key) as client:
        other_d = client.upload_dataset(_npz(**{KEY: feats[:30, :8]}), filename="d8.npz").id
        for content, name, words in files:
            with pytest.raises(ApiError) as err:
                client.predict(feature_job["id"], content, filename=name)
            assert err.value.status == 422, words
            assert [(e.field, words in e.problem) for e in err.value.errors] == [(KEY, True)], (
                err.value.errors
            )
        assert client.wait_dataset(other_d, timeout_s=60).status == "ready"
        with pytest.raises(ApiError) as err:
            client.predict(feature_job["id"], dataset_id=other_d)
    assert err.value.status == 422 and [e.field for e in err.value.errors] == ["dataset_id"]
    assert err.value.errors[0].problem == f"{KEY}: has 8 dimensions but the job's feature space has 16"
