from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from api.deps import OwnerDep, SessionDep, SettingsDep, StorageDep
from api.files import remove_after_commit
from api.problems import ProblemError, not_found
from api.schemas.checkpoints import CheckpointPublic, CheckpointsPublic
from api.schemas.common import problem_responses, upload_request_body
from api.services.uploads import accept_upload
from service.db.crud import checkpoints as crud
from service.db.models import ID_PATTERN
from service.storage import CHECKPOINT_SUFFIXES, upload_dir

# Query fields are a name or a few numbers; anything longer is not a statement.
_STATED_MAX_CHARS = 200

router = APIRouter(prefix="/checkpoints", tags=["checkpoints"], responses=problem_responses(401))


@router.post(
    "",
    status_code=201,
    response_model=CheckpointPublic,
    responses=problem_responses(413, 415, 422, 429, 503),
    openapi_extra=upload_request_body(CHECKPOINT_SUFFIXES),
    summary="Upload a model checkpoint (multipart field `file`); its kind is detected asynchronously",
    description="The query fields state what the weights cannot tell; validation checks them against the "
    "file, and a bad one makes the upload `invalid` with a reason naming it. A job's `base.backbone` and "
    "`base.normalisation` override them.",
)
async def upload_checkpoint(
    request: Request,
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    backbone: Annotated[
        str | None,
        Query(
            max_length=_STATED_MAX_CHARS,
            description="the backbone variant, e.g. resnet18_stl for SCAN's STL-10 models (SCAN's CIFAR and "
            "STL-10 ResNet-18s have identical weights; default: chosen by the job's image size)",
        ),
    ] = None,
    normalisation: Annotated[
        str | None,
        Query(
            max_length=_STATED_MAX_CHARS,
            description="the normalisation it was trained with: cifar10, cifar20, stl10, imagenet or dataset",
        ),
    ] = None,
    mean: Annotated[
        str | None,
        Query(
            max_length=_STATED_MAX_CHARS,
            description="instead of a preset: comma-separated mean, 1 or 3 values",
        ),
    ] = None,
    std: Annotated[
        str | None,
        Query(
            max_length=_STATED_MAX_CHARS, description="with mean: comma-separated std (> 0), 1 or 3 values"
        ),
    ] = None,
) -> CheckpointPublic:
    given = {"backbone": backbone, "normalisation": normalisation, "mean": mean, "std": std}
    stated = {key: value for key, value in given.items() if value is not None}
    row = await accept_upload(request, session, settings, storage, owner, "checkpoint", stated=stated or None)
    return CheckpointPublic.model_validate(row)


@router.get(
    "",
    response_model=CheckpointsPublic,
    responses=problem_responses(422),
    summary="List your checkpoints, newest first",
    description="Keyset pagination: pass the last id seen as `after` while `has_more` is true.",
)
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


@router.get(
    "/{checkpoint_id}",
    response_model=CheckpointPublic,
    responses=problem_responses(404),
    summary="Get a checkpoint: status, detected kind and reason",
)
async def get_checkpoint(checkpoint_id: str, owner: OwnerDep, session: SessionDep) -> CheckpointPublic:
    row = crud.get_checkpoint(session, owner, checkpoint_id)
    if row is None:
        raise not_found("checkpoint", checkpoint_id)
    return CheckpointPublic.model_validate(row)


@router.delete(
    "/{checkpoint_id}",
    status_code=204,
    responses=problem_responses(404, 409),
    summary="Delete a checkpoint and its file (409 while a queued or running job uses it)",
)
def delete_checkpoint(
    checkpoint_id: str, owner: OwnerDep, session: SessionDep, storage: StorageDep
) -> Response:
    row = crud.get_checkpoint(session, owner, checkpoint_id)
    if row is None:
        raise not_found("checkpoint", checkpoint_id)
    if crud.checkpoint_in_use(session, owner, checkpoint_id):
        raise ProblemError(409, "a queued or running job uses this checkpoint", slug="in-use")
    crud.delete_checkpoint(session, checkpoint_id)
    session.commit()
    remove_after_commit(storage, upload_dir("checkpoints", checkpoint_id))
    return Response(status_code=204)
