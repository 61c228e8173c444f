"""Non-finite numbers in a job spec are a 422 naming the field, on Postgres (whose JSON column would
refuse the row with a 500) and whether they arrive as JSON's non-standard tokens or as big numbers."""

from __future__ import annotations

import pytest
from api_support import Keys, ready_dataset
from fastapi.testclient import TestClient

from service.settings import Settings

# Fields whose bounds let +inf or NaN through unless non-finite numbers are refused as such.
CASES = [
    ('"refine": {"lambda_u": Infinity}', "refine.lambda_u"),
    ('"refine": {"mixup_alpha": Infinity}', "refine.mixup_alpha"),
    ('"refine": {"lambda_u": NaN}', "refine.lambda_u"),
    ('"refine": {"lambda_u": 1e999}', "refine.lambda_u"),
    ('"refine": {"lr": NaN}', "refine.lr"),
    # base overrides its model_config; the inherited setting must survive that.
    ('"base": {"method": "idec", "deep": {"gamma": Infinity}}', "base.deep.gamma"),
    ('"evaluate": {"attacks": [{"kind": "fgsm", "eps": [NaN]}]}', "evaluate.attacks.0.eps.0"),
]


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_non_finite_numbers_are_422_naming_the_field(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    ds = ready_dataset(client, settings, keys.a)
    headers = {**keys.a, "content-type": "application/json"}
    for fragment, field in CASES:
        body = f'{{"dataset_id": "{ds}", "num_clusters": 2, {fragment}}}'
        r = client.post("/v1/jobs", content=body.encode(), headers=headers)
        assert r.status_code == 422, (fragment, r.status_code, r.text[:300])
        assert r.headers["content-type"] == "application/problem+json"
        fields = [e["field"] for e in r.json()["errors"]]
        assert field in fields, (fragment, fields)
    # Nothing was stored, and the service still takes a finite spec.
    assert client.get("/v1/jobs", headers=keys.a).json()["data"] == []
    ok = f'{{"dataset_id": "{ds}", "num_clusters": 2, "refine": {{"lambda_u": 1e6}}}}'
    assert client.post("/v1/jobs", content=ok.encode(), headers=headers).status_code == 202
