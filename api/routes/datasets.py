from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from api.deps import OwnerDep, SessionDep, SettingsDep, StorageDep
from api.files import remove_after_commit
from api.problems import ProblemError, not_found
from api.schemas.common import problem_responses, upload_request_body
from api.schemas.datasets import DatasetPublic, DatasetsPublic
from api.services.uploads import accept_upload
from service.db.crud import datasets as crud
from service.db.models import ID_PATTERN
from service.storage import DATASET_SUFFIXES, upload_dir

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=problem_responses(401))


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    responses=problem_responses(413, 415, 422, 429, 503),
    openapi_extra=upload_request_body(DATASET_SUFFIXES),
    summary="Upload a dataset (multipart field `file`), validated asynchronously",
)
async def upload_dataset(
    request: Request, owner: OwnerDep, session: SessionDep, settings: SettingsDep, storage: StorageDep
) -> DatasetPublic:
    row = await accept_upload(request, session, settings, storage, owner, "dataset")
    return DatasetPublic.model_validate(row)


@router.get(
    "",
    response_model=DatasetsPublic,
    responses=problem_responses(422),
    summary="List your datasets, newest first",
    description="Keyset pagination: pass the last id seen as `after` while `has_more` is true.",
)
async def list_datasets(
    owner: OwnerDep,
    session: SessionDep,
    status: Literal["validating", "ready", "invalid"] | None = None,
    after: Annotated[str | None, Query(pattern=ID_PATTERN, description="id of the last item seen")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> DatasetsPublic:
    rows, has_more = crud.list_datasets(session, owner, status=status, after=after, limit=limit)
    return DatasetsPublic(
        data=[DatasetPublic.model_validate(r) for r in rows],
        has_more=has_more,
        next_after=rows[-1].id if has_more and rows else None,
    )


@router.get(
    "/{dataset_id}",
    response_model=DatasetPublic,
    responses=problem_responses(404),
    summary="Get a dataset: status (`validating`, `ready`, `invalid`), facts and reason",
)
async def get_dataset(dataset_id: str, owner: OwnerDep, session: SessionDep) -> DatasetPublic:
    row = crud.get_dataset(session, owner, dataset_id)
    if row is None:
        raise not_found("dataset", dataset_id)
    return DatasetPublic.model_validate(row)


@router.delete(
    "/{dataset_id}",
    status_code=204,
    responses=problem_responses(404, 409),
    summary="Delete a dataset and its file (409 while jobs reference it)",
)
def delete_dataset(dataset_id: str, owner: OwnerDep, session: SessionDep, storage: StorageDep) -> Response:
    row = crud.get_dataset(session, owner, dataset_id)
    if row is None:
        raise not_found("dataset", dataset_id)
    if crud.dataset_in_use(session, dataset_id):
        raise ProblemError(409, "jobs reference this dataset; delete them first", slug="in-use")
    crud.delete_dataset(session, dataset_id)
    session.commit()
    remove_after_commit(storage, upload_dir("datasets", dataset_id))
    return Response(status_code=204)
