from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.problems import PROBLEM_MEDIA_TYPE


class PublicModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class FieldProblemPublic(BaseModel):
    field: str = Field(examples=["refine.lr"])
    problem: str = Field(examples=["Input should be less than or equal to 10"])


class Problem(BaseModel):
    """RFC 7807 problem details (media type application/problem+json)."""

    type: str = Field(examples=["/problems/validation-error"])
    title: str = Field(examples=["Invalid request"])
    status: int = Field(examples=[422])
    detail: str = Field(examples=["refine.lr: Input should be less than or equal to 10"])
    code: str = Field(examples=["validation-error"], description="stable error code (the type's last part)")
    retry_after_seconds: int | None = Field(
        default=None, description="429 only: when to retry (also in the Retry-After header)"
    )
    errors: list[FieldProblemPublic] | None = None


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the listed error statuses, all problem+json."""
    descriptions = {
        401: "Missing, unknown or revoked API key",
        404: "No such resource for this key",
        409: "The resource is in a state that forbids this",
        413: "Body or upload over its size limit",
        415: "Unsupported file type or content type",
        422: "Invalid input; `errors` names each field",
        429: "A quota of this API key is reached; Retry-After says when to retry",
        503: "Database or broker unavailable",
    }
    return {
        s: {
            "model": Problem,
            "description": descriptions.get(s, "Error"),
            "content": {PROBLEM_MEDIA_TYPE: {}},
        }
        for s in statuses
    }


PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
# FastAPI's own 422 shape; this API never sends it (api/problems.py answers every error as a Problem).
_FASTAPI_422_SCHEMAS = ("HTTPValidationError", "ValidationError")


def errors_as_problem_json(document: dict[str, Any]) -> dict[str, Any]:
    """Declare every 4xx/5xx answer as what the server sends: ``application/problem+json``, a Problem.

    FastAPI files a response ``model`` under ``application/json`` (so clients and schema checkers never
    matched the Problem schema to the real media type) and adds its own 422 (HTTPValidationError) to
    routes that list no 422. Rewritten in place; returns ``document``.
    """
    for item in document.get("paths", {}).values():
        for operation in item.values():
            for status, response in operation.get("responses", {}).items():
                if status[:1] not in ("4", "5"):
                    continue
                response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": dict(PROBLEM_REF)}}
                if response.get("description") == "Validation Error":  # FastAPI's default 422
                    response["description"] = "Invalid input; `errors` names each field"
    schemas = document.get("components", {}).get("schemas", {})
    for name in _FASTAPI_422_SCHEMAS:
        schemas.pop(name, None)
    return document


def upload_request_body(suffixes: tuple[str, ...]) -> dict[str, Any]:
    """OpenAPI requestBody of a streamed multipart upload (the route reads the stream itself)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": f"allowed suffixes: {', '.join(suffixes)}",
                            }
                        },
                    }
                }
            },
        }
    }
