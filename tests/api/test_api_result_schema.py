"""GET /v1/jobs/{id}/result is typed: the OpenAPI document describes every result field, and a
result stored before later optional fields existed still serialises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from api_support import Keys, ready_dataset, submit
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.db.models import Job, utcnow
from service.db.session import session_scope
from service.settings import Settings

EXAMPLE = Path(__file__).parent / "result_example.json"  # a real job's result.json (72 synthetic images)


def _ref(schema: dict[str, Any]) -> str | None:
    for option in [
        schema,
        *schema.get("anyOf", []),
        schema.get("items", {}),
        schema.get("additionalProperties") or {},
    ]:
        if isinstance(option, dict):
            if "$ref" in option:
                return option["$ref"].rsplit("/", 1)[-1]
            nested = option.get("items") or option.get("additionalProperties")
            if isinstance(nested, dict) and "$ref" in nested:
                return nested["$ref"].rsplit("/", 1)[-1]
    return None


def _undescribed(schemas: dict[str, Any], name: str, seen: set[str]) -> list[str]:
    """Properties without a description in schema ``name`` and every schema it refers to (bar the spec)."""
    if name in seen or name.endswith("Spec"):
        return []
    seen.add(name)
    missing = []
    for prop, sub in schemas[name].get("properties", {}).items():
        if not sub.get("description"):
            missing.append(f"{name}.{prop}")
        ref = _ref(sub)
        if ref is not None:
            missing += _undescribed(schemas, ref, seen)
    return missing


def test_openapi_describes_every_result_field(client: TestClient) -> None:
    doc = client.app.openapi()
    schemas = doc["components"]["schemas"]
    op = doc["paths"]["/v1/jobs/{job_id}/result"]["get"]
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    result_ref = _ref(schemas[ok]["properties"]["result"])
    assert result_ref == "JobResult"
    seen: set[str] = set()
    assert _undescribed(schemas, "JobResult", seen) == []
    # the walk reached the nested blocks, e.g. the refined report and the per-epoch series
    refined = schemas[_ref(schemas["JobResult"]["properties"]["refined"])]
    assert {"acc", "nmi", "ari", "ece", "reliability", "confusion", "mapping", "many_to_one_acc"} <= set(
        refined["properties"]
    )
    assert all(p.get("description") for p in refined["properties"].values())
    assert "[0, 1]" in refined["properties"]["acc"]["description"]
    assert {"ClusteringReport", "EpochMetrics", "RobustnessReport", "AutoKInfo", "BaseInfo"} <= seen
    assert schemas["ClusteringReport"]["additionalProperties"] is False  # drift is caught


def _store(settings: Settings, job_id: str, result: dict[str, Any]) -> None:
    with session_scope(settings.database_url) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="succeeded", progress=1.0, result=result, finished_at=utcnow())
        )


def test_older_stored_result_without_later_fields_serialises(
    client: TestClient, keys: Keys, settings: Settings
) -> None:
    stored = json.loads(EXAMPLE.read_text())
    for key in ("effective", "best_run", "runs", "summary"):
        del stored[key]
    job_id = submit(client, keys.a, ready_dataset(client, settings, keys.a)).json()["id"]
    _store(settings, job_id, stored)
    r = client.get(f"/v1/jobs/{job_id}/result", headers=keys.a)
    assert r.status_code == 200, r.text
    body = r.json()["result"]
    assert body["effective"] is None and body["runs"] is None and body["best_run"] is None
    assert body["refined"] == stored["refined"]
    # optional keys the stored epochs lack (the run keys of repeats) come back as null
    assert [
        {k: e[k] for k in old} for e, old in zip(body["per_epoch"], stored["per_epoch"], strict=True)
    ] == stored["per_epoch"]
    assert body["per_epoch"][0]["run"] is None
    assert body["base_info"]["kmeans"] == stored["base_info"]["kmeans"]
    assert body["base_info"]["auto_k"] is None
