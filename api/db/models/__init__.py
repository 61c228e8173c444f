"""ORM models, one module per table. Importing this package registers every table on ``Base.metadata``."""

from api.db.models.api_key import ApiKey
from api.db.models.artifact import Artifact
from api.db.models.base import ID_PATTERN, Base, UTCDateTime, is_valid_id, new_id, utcnow
from api.db.models.checkpoint import Checkpoint, CheckpointKind
from api.db.models.dataset import UPLOAD_STATUSES, Dataset, UploadStatus
from api.db.models.job import FINISHED_STATUSES, JOB_STAGES, JOB_STATUSES, Job, JobStage, JobStatus
from api.db.models.job_event import EventLevel, JobEvent
from api.db.models.job_metric import JobMetric

__all__ = [
    "FINISHED_STATUSES",
    "ID_PATTERN",
    "JOB_STAGES",
    "JOB_STATUSES",
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
    "UTCDateTime",
    "UploadStatus",
    "is_valid_id",
    "new_id",
    "utcnow",
]
