"""The published OpenAPI document: valid per openapi-spec-validator, and every operation has a clean,
unique, pinned operationId (generated clients name their functions after it), a tag and a summary."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from api.main import TAGS, create_app, operation_id
from service.settings import Settings

OPERATION_ID = re.compile(r"^[a-z]+_[a-z_]+$")
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}

# Renaming one of these breaks every generated client's call sites: change them only on purpose.
PINNED = {
    ("get", "/healthz"): "health_live",
    ("get", "/readyz"): "health_ready",
    ("get", "/metrics"): "health_metrics",
    ("post", "/v1/datasets"): "datasets_upload",
    ("get", "/v1/datasets"): "datasets_list",
    ("get", "/v1/datasets/{dataset_id}"): "datasets_get",
    ("delete", "/v1/datasets/{dataset_id}"): "datasets_delete",
    ("post", "/v1/checkpoints"): "checkpoints_upload",
    ("get", "/v1/checkpoints"): "checkpoints_list",
    ("get", "/v1/checkpoints/{checkpoint_id}"): "checkpoints_get",
    ("delete", "/v1/checkpoints/{checkpoint_id}"): "checkpoints_delete",
    ("post", "/v1/jobs"): "jobs_create",
    ("get", "/v1/jobs"): "jobs_list",
    ("get", "/v1/jobs/{job_id}"): "jobs_get",
    ("delete", "/v1/jobs/{job_id}"): "jobs_delete",
    ("post", "/v1/jobs/{job_id}/cancel"): "jobs_cancel",
    ("get", "/v1/jobs/{job_id}/events"): "jobs_list_events",
    ("get", "/v1/jobs/{job_id}/events/stream"): "jobs_stream_events",
    ("get", "/v1/jobs/{job_id}/metrics"): "jobs_get_metrics",
    ("get", "/v1/jobs/{job_id}/result"): "jobs_get_result",
    ("get", "/v1/jobs/{job_id}/artifacts"): "jobs_list_artifacts",
    ("get", "/v1/jobs/{job_id}/artifacts/{name}"): "jobs_download_artifact",
    ("post", "/v1/jobs/{job_id}/predictions"): "jobs_create_prediction",
    ("get", "/v1/jobs/{job_id}/predictions/{prediction_id}"): "jobs_get_prediction",
}


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data_dir: Path = tmp_path_factory.mktemp("openapi")
    settings = Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'db.sqlite3'}")
    return create_app(settings).openapi()


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): op
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }


def test_document_passes_openapi_spec_validator(document: dict[str, Any]) -> None:
    validate(document)
    # The validator is live: a reused operationId is rejected.
    broken = copy.deepcopy(document)
    broken["paths"]["/v1/jobs"]["post"]["operationId"] = "jobs_list"
    with pytest.raises(OpenAPIValidationError, match="jobs_list"):
        validate(broken)


def test_every_operation_has_a_clean_unique_id_a_described_tag_and_a_summary(
    document: dict[str, Any],
) -> None:
    ops = _operations(document)
    assert len(ops) >= len(PINNED)
    ids = [op["operationId"] for op in ops.values()]
    assert [i for i in ids if not OPERATION_ID.fullmatch(i)] == []
    assert len(set(ids)) == len(ids), sorted(i for i in ids if ids.count(i) > 1)
    described = {t["name"] for t in document["tags"] if t.get("description")}
    for key, op in ops.items():
        assert len(op.get("tags", [])) == 1 and op["tags"][0] in described, key
        assert op.get("summary", "").strip(), key
        assert op["operationId"].startswith(op["tags"][0] + "_"), key
    assert {t["name"] for t in TAGS} == {op["tags"][0] for op in ops.values()}


def test_operation_ids_are_pinned(document: dict[str, Any]) -> None:
    ops = _operations(document)
    assert {key: ops[key]["operationId"] for key in PINNED if key in ops} == PINNED


def test_naming_rule_drops_the_resource_noun_and_needs_a_tag() -> None:
    router = APIRouter(tags=["widgets"])

    def route(name: str, tags: list[str] | None = None) -> APIRoute:
        return APIRoute("/x", lambda: None, name=name, tags=tags if tags is not None else router.tags)

    assert operation_id(route("upload_widget")) == "widgets_upload"
    assert operation_id(route("list_widgets")) == "widgets_list"
    assert operation_id(route("get_widget_result")) == "widgets_get_result"
    assert operation_id(route("widgets")) == "widgets_widgets"
    with pytest.raises(ValueError, match="/x has no tag"):
        operation_id(route("get_widget", tags=[]))
