from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from api.db.crud import checkpoints as crud
from api.db.models import ID_PATTERN
from api.deps import OwnerDep, SessionDep, SettingsDep
from api.problems import ProblemError, not_found
from api.schemas.checkpoints import CheckpointPublic, CheckpointsPublic
from api.schemas.common import problem_responses, upload_request_body
from api.services.uploads import accept_upload
from api.storage import CHECKPOINT_SUFFIXES, remove_dir

router = APIRouter(prefix="/checkpoints", tags=["checkpoints"], responses=problem_responses(401))


@router.post(
    "",
    status_code=201,
    response_model=CheckpointPublic,
    responses=problem_responses(413, 415, 422, 503),
    openapi_extra=upload_request_body(CHECKPOINT_SUFFIXES),
    summary="Upload a model checkpoint (multipart field `file`); its kind is detected asynchronously",
)
async def upload_checkpoint(
    request: Request, owner: OwnerDep, session: SessionDep, settings: SettingsDep
) -> CheckpointPublic:
    row = await accept_upload(request, session, settings, owner, "checkpoint")
    return CheckpointPublic.model_validate(row)


@router.get("", response_model=CheckpointsPublic, responses=problem_responses(422))
async def list_checkpoints(
    owner: OwnerDep,
    session: SessionDep,
    status: Literal["validating", "ready", "invalid"] | None = None,
    after: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> CheckpointsPublic:
    rows, has_more = crud.list_checkpoints(session, owner, status=status, after=after, limit=limit)
    return CheckpointsPublic(
        data=[CheckpointPublic.model_validate(r) for r in rows],
        has_more=has_more,
        next_after=rows[-1].id if has_more and rows else None,
    )


@router.get("/{checkpoint_id}", response_model=CheckpointPublic, responses=problem_responses(404))
async def get_checkpoint(checkpoint_id: str, owner: OwnerDep, session: SessionDep) -> CheckpointPublic:
    row = crud.get_checkpoint(session, owner, checkpoint_id)
    if row is None:
        raise not_found("checkpoint", checkpoint_id)
    return CheckpointPublic.model_validate(row)


@router.delete("/{checkpoint_id}", status_code=204, responses=problem_responses(404, 409))
def delete_checkpoint(
    checkpoint_id: str, owner: OwnerDep, session: SessionDep, settings: SettingsDep
) -> Response:
    row = crud.get_checkpoint(session, owner, checkpoint_id)
    if row is None:
        raise not_found("checkpoint", checkpoint_id)
    if crud.checkpoint_in_use(session, owner, checkpoint_id):
        raise ProblemError(409, "a queued or running job uses this checkpoint", slug="in-use")
    crud.delete_checkpoint(session, checkpoint_id)
    session.commit()
    remove_dir(settings.storage_dir, f"checkpoints/{checkpoint_id}")
    return Response(status_code=204)
