"""Run one prediction: start its attempt, read the images with core's dataset readers under limits
derived from the job (a feature job: only its feature array, ``core.predict.inputs.read_features``),
assign them with the job's ``core.predict.Predictor``, record the outcome.

Every delivery of ``predictions.run`` starts an attempt (``service.db.crud.predictions``); the
outcome is ``succeeded`` (assignments and probabilities), ``invalid`` (the images break a rule:
``invalid_input: <field>: <problem>``, core's own words) or ``failed`` (a stable code: out of
memory, the time limit, an internal error; the exception goes to the log). The uploaded file is
removed once the outcome is written; a prediction of a dataset id reads the caller's dataset, which
is never removed here, and ends ``failed`` (``dataset_deleted``) when it was deleted meanwhile.
Loaded ensembles stay cached per worker process (a few, by file and sha256), so a client sending
many small requests pays the load once.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery.exceptions import SoftTimeLimitExceeded

from core.datasets.limits import ArchiveLimits
from core.errors import CoreInputError
from core.predict.inputs import JobInputs, input_limits, job_inputs, read_features
from service.client_errors import DATASET_DELETED, TIME_LIMIT_EXCEEDED, format_error, stored_error
from service.db.crud import predictions as crud
from service.db.crud.predictions import PredictionStart
from service.db.session import session_scope
from service.settings import Settings, get_settings
from service.storage import ObjectNotFound, get_storage
from worker.db_retry import OUTCOME_RETRY_DELAYS, with_db_retry, write_telemetry

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Loaded ensembles kept per process: a ResNet-18 pair is ~90 MB, so a handful, not every job's.
CACHED_ENSEMBLES = 2
# Probabilities are stored and returned with 6 decimals: ample for float32 softmax outputs.
PROBABILITY_DECIMALS = 6
Outcome = tuple[str, str | None, dict[str, Any] | None]

_cache: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
_cache_lock = threading.Lock()


def _predictor(path: Path, sha256: str, device: str, image_shape: tuple[int, int, int]) -> Any:
    from core.predict.predictor import Predictor

    key = (sha256, device)  # the content, not the path: a remote store's copy moves every time
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    predictor = Predictor.load(path, device=device, image_shape=image_shape)
    with _cache_lock:
        _cache[key] = predictor
        while len(_cache) > CACHED_ENSEMBLES:
            _cache.popitem(last=False)
    return predictor


def _scratch(settings: Settings, prediction_id: str) -> Path:
    return settings.scratch_dir / "predictions" / prediction_id


class DatasetDeleted(Exception):
    """The dataset a prediction reads was deleted (or stopped being ready) before it was read."""


def _discard(settings: Settings, prediction_id: str, start: PredictionStart) -> None:
    """Remove the uploaded images from the store and this prediction's local copies; a dataset id's
    file is the caller's upload, not the prediction's: only its local copies go."""
    if start.dataset_id is None:
        try:
            get_storage(settings).delete_prefix(str(Path(start.path).parent))
        except Exception:  # the store is down: retention (worker.gc) removes the folder later
            log.warning("prediction %s: its upload could not be removed now", prediction_id, exc_info=True)
    shutil.rmtree(_scratch(settings, prediction_id), ignore_errors=True)


def _input_copy(start: PredictionStart, settings: Settings, cache: Path) -> Path:
    """The images' file on this machine; DatasetDeleted when a dataset id's file is gone."""
    if start.dataset_id is not None and not start.path:
        raise DatasetDeleted
    try:
        return get_storage(settings).local_copy(start.path, cache)
    except ObjectNotFound:
        if start.dataset_id is not None:  # deleted between the start of the attempt and this read
            raise DatasetDeleted from None
        raise


def _device(device: str | None) -> str:
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _read_inputs(upload: Path, wanted: JobInputs, limits: ArchiveLimits) -> torch.Tensor:
    """The images of the upload, or a feature job's finite float32 (N, D) rows, as a tensor."""
    import torch

    if wanted.feature_key is not None:
        return torch.from_numpy(read_features(upload, wanted, limits))
    from core.datasets import load_dataset

    images = load_dataset(upload, limits=limits).images
    if images is None:  # an .npz of features only
        raise CoreInputError(wanted.field, "missing: the file holds no images (only feature arrays)")
    return images


def _assign(prediction_id: str, start: PredictionStart, settings: Settings, device: str | None) -> Outcome:
    """Read, check and assign; (status, stored error, result). Raises only what the caller maps."""
    if start.job_result is None or start.ensemble_path is None or start.ensemble_sha256 is None:
        raise RuntimeError(f"prediction {prediction_id}: its job has no result or no refined ensemble")
    wanted = job_inputs(
        start.job_result, max_images=settings.predict_max_images, max_values=settings.predict_max_values
    )
    # A remote store's files are read from copies in this prediction's scratch folder (removed when
    # it ends); with the local backend these are the stored files themselves.
    cache = _scratch(settings, prediction_id)
    upload = _input_copy(start, settings, cache)
    ensemble = get_storage(settings).local_copy(start.ensemble_path, cache)
    # A dataset id was validated under the default limits (as a job reads it): arrays beside its images
    # (labels, features) may exceed what a prediction upload of that many images is allowed.
    limits = ArchiveLimits() if start.dataset_id else input_limits(wanted)
    inputs = _read_inputs(upload, wanted, limits)
    predictor = _predictor(ensemble, start.ensemble_sha256, _device(device), wanted.image_shape)
    count = predictor.check(inputs, max_images=wanted.max_images, field=wanted.field)

    def record() -> None:
        with session_scope(settings.database_url) as s:
            crud.record_count(s, prediction_id, count)

    write_telemetry(record, what=f"prediction {prediction_id} count")
    probs = predictor.predict(inputs).numpy()
    result = {
        "assignments": probs.argmax(axis=1).tolist(),
        "probabilities": probs.astype("float64").round(PROBABILITY_DECIMALS).tolist(),
    }
    return "succeeded", None, result


def _outcome(prediction_id: str, start: PredictionStart, settings: Settings, device: str | None) -> Outcome:
    """``_assign`` with every failure mapped to an outcome; never raises."""
    try:
        return _assign(prediction_id, start, settings, device)
    except CoreInputError as exc:
        return "invalid", stored_error(exc), None
    except DatasetDeleted:
        why = f"dataset {start.dataset_id} was deleted before the prediction read it"
        return "failed", format_error(DATASET_DELETED, why), None
    except SoftTimeLimitExceeded:  # Celery's soft limit of the task: predict_time_limit_seconds
        limit = settings.predict_time_limit_seconds
        return "failed", format_error(TIME_LIMIT_EXCEEDED, f"time limit of {limit} s exceeded"), None
    except Exception as exc:  # the log has the exception; the row a stable code and message
        log.exception("prediction %s failed", prediction_id)
        return "failed", stored_error(exc), None


def run_prediction_delivery(
    prediction_id: str, *, settings: Settings | None = None, device: str | None = None
) -> str:
    """Handle one delivery of ``predictions.run``; returns the status written (or why nothing was)."""
    settings = settings or get_settings()
    with session_scope(settings.database_url) as s:
        start = crud.start_prediction(s, prediction_id, max_attempts=settings.max_attempts)
    if start.outcome != "started":
        log.info("prediction %s: delivery dropped (%s)", prediction_id, start.outcome)
        if start.outcome == "exhausted":
            _discard(settings, prediction_id, start)
        return start.outcome
    status, error, result = _outcome(prediction_id, start, settings, device)

    def finish() -> bool:
        with session_scope(settings.database_url) as s:
            return crud.finish_prediction(s, prediction_id, status=status, error=error, result=result)  # type: ignore[arg-type]

    written = with_db_retry(finish, delays=OUTCOME_RETRY_DELAYS, what=f"prediction {prediction_id} outcome")
    # The images are needed no more, whoever wrote the outcome.
    _discard(settings, prediction_id, start)
    log.info("prediction %s: %s (attempt %d)", prediction_id, status, start.attempt)
    return status if written else "decided"
