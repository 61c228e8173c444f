"""ORM models, one module per table. Importing this package registers every table on ``Base.metadata``."""

from service.db.models.api_key import ApiKey
from service.db.models.artifact import Artifact
from service.db.models.base import ID_PATTERN, Base, UTCDateTime, is_valid_id, new_id, utcnow
from service.db.models.checkpoint import Checkpoint, CheckpointKind
from service.db.models.dataset import UPLOAD_STATUSES, Dataset, UploadStatus
from service.db.models.job import FINISHED_STATUSES, JOB_STAGES, JOB_STATUSES, Job, JobStage, JobStatus
from service.db.models.job_event import EventLevel, JobEvent
from service.db.models.job_metric import JobMetric
from service.db.models.prediction import (
    FINISHED_PREDICTION_STATUSES,
    PREDICTION_STATUSES,
    Prediction,
    PredictionStatus,
)

__all__ = [
    "FINISHED_PREDICTION_STATUSES",
    "FINISHED_STATUSES",
    "ID_PATTERN",
    "JOB_STAGES",
    "JOB_STATUSES",
    "PREDICTION_STATUSES",
    "UPLOAD_STATUSES",
    "ApiKey",
    "Artifact",
    "Base",
    "Checkpoint",
    "CheckpointKind",
    "Dataset",
    "EventLevel",
    "Job",
    "JobEvent",
    "JobMetric",
    "JobStage",
    "JobStatus",
    "Prediction",
    "PredictionStatus",
    "UTCDateTime",
    "UploadStatus",
    "is_valid_id",
    "new_id",
    "utcnow",
]
