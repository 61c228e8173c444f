from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from api.deps import OwnerDep, SessionDep, SettingsDep, StorageDep
from api.files import download_response
from api.problems import ProblemError, not_found
from api.schemas.common import problem_responses
from api.schemas.jobs import (
    JOB_CREATE_EXAMPLES,
    ArtifactPublic,
    ArtifactsPublic,
    EpochMetricsPublic,
    EventPublic,
    EventsPublic,
    JobCreate,
    JobPublic,
    JobsPublic,
    JobStatus,
    MetricsPublic,
    ResultPublic,
)
from api.schemas.predictions import PredictionPublic, prediction_request_body
from api.services import event_stream
from api.services import jobs as service
from api.services import predictions as predicting
from service.db.crud import jobs as crud
from service.db.crud import predictions as predictions_crud
from service.db.models import FINISHED_PREDICTION_STATUSES, ID_PATTERN, Job
from service.storage import ARTIFACT_NAME, DATASET_SUFFIXES

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=problem_responses(401))

# Read routes are `async def` and query on the event loop: a primary-key or keyset read takes well under
# a millisecond and never waits on a writer (WAL on SQLite, MVCC on Postgres), while the thread-pool hop a
# sync route needs costs more than the query. Writes stay sync (thread pool): they may wait on locks.


def _owned_job(session: SessionDep, owner: str, job_id: str) -> Job:
    job = crud.get_job(session, owner, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    responses={
        **problem_responses(404, 409, 413, 422, 429, 503),
        202: {"description": "Queued (or the original job, for a replayed Idempotency-Key)"},
    },
    summary="Submit a refinement job",
)
def create_job(
    response: Response,
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
    spec: Annotated[JobCreate, Body(openapi_examples=JOB_CREATE_EXAMPLES)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Same key + same body returns the same job; same key + another body is a 422",
        ),
    ] = None,
) -> JobPublic:
    sub = service.submit_job(session, settings, owner, spec, idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{sub.job.id}"
    if sub.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return JobPublic.model_validate(sub.job)


@router.get(
    "",
    response_model=JobsPublic,
    responses=problem_responses(422),
    summary="List your jobs, newest first",
    description="Keyset pagination: pass the last id seen as `after` while `has_more` is true.",
)
async def list_jobs(
    owner: OwnerDep,
    session: SessionDep,
    status: JobStatus | None = None,
    after: Annotated[str | None, Query(pattern=ID_PATTERN, description="id of the last job seen")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobsPublic:
    rows, has_more = crud.list_jobs(session, owner, status=status, after=after, limit=limit)
    return JobsPublic(
        data=[JobPublic.model_validate(r) for r in rows],
        has_more=has_more,
        next_after=rows[-1].id if has_more and rows else None,
    )


@router.get(
    "/{job_id}",
    response_model=JobPublic,
    responses=problem_responses(404),
    summary="Get a job: status, stage, epoch and progress (poll this)",
)
async def get_job(job_id: str, owner: OwnerDep, session: SessionDep) -> JobPublic:
    return JobPublic.model_validate(_owned_job(session, owner, job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses=problem_responses(404, 409),
    summary="Cancel a queued or running job",
)
def cancel_job(job_id: str, owner: OwnerDep, session: SessionDep) -> JobPublic:
    """queued: cancelled at once; running: `cancel_requested`, the worker stops within an epoch."""
    return JobPublic.model_validate(service.cancel_job(session, owner, job_id))


@router.delete(
    "/{job_id}",
    status_code=204,
    responses=problem_responses(404, 409),
    summary="Delete a job with its events, metrics and artifacts (409 while it is running)",
)
def delete_job(job_id: str, owner: OwnerDep, session: SessionDep, storage: StorageDep) -> Response:
    service.delete_job(session, storage, owner, job_id)
    return Response(status_code=204)


@router.get(
    "/{job_id}/events",
    response_model=EventsPublic,
    responses=problem_responses(404, 422),
    summary="List a job's events (stage changes, epochs, final status) in order",
    description="Pass the last event id seen as `after` to read only newer events.",
)
async def list_events(
    job_id: str,
    owner: OwnerDep,
    session: SessionDep,
    after: Annotated[int | None, Query(ge=0, description="id of the last event seen")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> EventsPublic:
    _owned_job(session, owner, job_id)
    rows, has_more = crud.list_events(session, job_id, after=after, limit=limit)
    return EventsPublic(
        data=[EventPublic.model_validate(r) for r in rows],
        has_more=has_more,
        next_after=rows[-1].id if rows else after,
    )


@router.get(
    "/{job_id}/events/stream",
    response_class=StreamingResponse,
    responses={
        **problem_responses(404, 422),
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-Sent Events: `event` (an event), `metrics` (one epoch), `status` (the "
            "job); `id` is the resume cursor; `: ping` comments while idle; closes after the final status",
        },
    },
    summary="Follow a job live (Server-Sent Events)",
)
async def stream_events(
    job_id: str,
    owner: OwnerDep,
    settings: SettingsDep,
    # Plain strings, "" for none: a header has no null, and from `anyOf [string, null]` a generated
    # client may send the text "null".
    after: Annotated[
        str,
        Query(
            pattern=event_stream.CURSOR_PATTERN, description="id of the last message seen (as Last-Event-ID)"
        ),
    ] = "",
    last_event_id: Annotated[
        str,
        Header(
            alias="Last-Event-ID",
            pattern=event_stream.CURSOR_PATTERN,
            description="id of the last message seen",
        ),
    ] = "",
) -> StreamingResponse:
    """Polling `GET /v1/jobs/{id}` keeps working; this pushes the same snapshots as they change."""
    return await event_stream.open_stream(settings, owner, job_id, last_event_id or after)


@router.get(
    "/{job_id}/metrics",
    response_model=MetricsPublic,
    responses=problem_responses(404),
    summary="Get a job's per-epoch training metrics, as rows and as series by name",
)
async def get_metrics(job_id: str, owner: OwnerDep, session: SessionDep) -> MetricsPublic:
    _owned_job(session, owner, job_id)
    rows = crud.list_metrics(session, job_id)
    names = sorted(
        {
            k
            for r in rows
            for k, v in r.metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    )
    series: dict[str, list[float | None]] = {
        n: [float(r.metrics[n]) if isinstance(r.metrics.get(n), int | float) else None for r in rows]
        for n in names
    }
    return MetricsPublic(
        job_id=job_id,
        epochs=[r.epoch for r in rows],
        series=series,
        data=[EpochMetricsPublic.model_validate(r) for r in rows],
    )


@router.get(
    "/{job_id}/result",
    response_model=ResultPublic,
    responses=problem_responses(404, 409),
    summary="Get a succeeded job's result (409 until it has succeeded)",
)
async def get_result(job_id: str, owner: OwnerDep, session: SessionDep) -> ResultPublic:
    job = _owned_job(session, owner, job_id)
    if job.status != "succeeded" or job.result is None:
        raise ProblemError(
            409, f"job is {job.status}; the result exists once it has succeeded", slug="not-finished"
        )
    return ResultPublic(job_id=job_id, result=job.result)


@router.get(
    "/{job_id}/artifacts",
    response_model=ArtifactsPublic,
    responses=problem_responses(404),
    summary="List a job's artifacts with size, sha256 and download URL",
)
async def list_artifacts(job_id: str, owner: OwnerDep, session: SessionDep) -> ArtifactsPublic:
    _owned_job(session, owner, job_id)
    return ArtifactsPublic(
        data=[
            ArtifactPublic(
                name=a.name,
                size=a.size,
                sha256=a.sha256,
                media_type=a.media_type,
                url=f"/v1/jobs/{job_id}/artifacts/{a.name}",
                created_at=a.created_at,
            )
            for a in crud.list_artifacts(session, job_id)
        ]
    )


@router.get(
    "/{job_id}/artifacts/{name}",
    response_class=FileResponse,
    summary="Download one artifact (compare its sha256 with the listing)",
    responses={**problem_responses(404), 200: {"content": {"application/octet-stream": {}}}},
)
def download_artifact(
    job_id: str, name: str, owner: OwnerDep, session: SessionDep, storage: StorageDep
) -> Response:
    _owned_job(session, owner, job_id)
    row = crud.get_artifact(session, job_id, name) if ARTIFACT_NAME.fullmatch(name) else None
    answer = (
        None
        if row is None
        else download_response(storage, row.path, media_type=row.media_type, filename=row.name)
    )
    if answer is None:
        raise not_found("artifact", name)
    return answer


@router.post(
    "/{job_id}/predictions",
    response_model=PredictionPublic,
    responses={
        **problem_responses(404, 409, 413, 415, 422, 503),
        200: {"description": "Done within the wait: succeeded (assignments, probabilities) or failed"},
        202: {"model": PredictionPublic, "description": "Queued or running: poll the Location"},
    },
    openapi_extra=prediction_request_body(DATASET_SUFFIXES),
    summary="Assign new images with a succeeded job's refined model (a file, or a dataset id)",
    description="Either multipart field `file`: the images as a dataset upload holds them (`.npz` with "
    '`images` uint8 (N, H, W, C), or an image-folder archive), or a JSON body `{"dataset_id": ...}` '
    "naming one of your `ready` datasets (404 for another owner's, 409 while it validates; it is read, "
    "never removed). The images need the job's H, W and C. A request of at most "
    "RUC_PREDICT_SYNC_MAX_IMAGES images waits up to RUC_PREDICT_SYNC_SECONDS for its answer (200); a "
    "larger or slower one is answered 202 with the prediction's URL in `Location`. Images that do not "
    "fit the job are a 422 naming the field (`dataset_id` for a dataset).",
)
async def create_prediction(
    job_id: str,
    request: Request,
    response: Response,
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
) -> PredictionPublic:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
        body = await predicting.read_dataset_request(request)
        row = await predicting.accept_dataset_prediction(session, settings, owner, job_id, body)
    else:
        row = await predicting.accept_prediction(request, session, settings, owner, job_id)
    row = await predicting.await_outcome(settings, row)
    if row.status == "invalid":
        raise predicting.invalid_problem(row)
    response.headers["Location"] = f"/v1/jobs/{job_id}/predictions/{row.id}"
    if row.status not in FINISHED_PREDICTION_STATUSES:
        response.status_code = 202
    return PredictionPublic.from_row(row)


@router.get(
    "/{job_id}/predictions/{prediction_id}",
    response_model=PredictionPublic,
    responses=problem_responses(404),
    summary="Get a prediction: status, then assignments and probabilities (poll this)",
)
async def get_prediction(
    job_id: str, prediction_id: str, owner: OwnerDep, session: SessionDep
) -> PredictionPublic:
    row = predictions_crud.get_prediction(session, owner, job_id, prediction_id)
    if row is None:
        raise not_found("prediction", prediction_id)
    return PredictionPublic.from_row(row)
