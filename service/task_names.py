"""Task names and queues, one constant each: the API enqueues by name, the worker registers them."""

from __future__ import annotations

GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"
PREDICT_QUEUE = "predict"

TASK_RUN_JOB = "jobs.run"
TASK_VALIDATE_DATASET = "uploads.validate_dataset"
TASK_VALIDATE_CHECKPOINT = "uploads.validate_checkpoint"
TASK_DELIVER_WEBHOOK = "webhooks.deliver"
TASK_PREDICT = "predictions.run"

# Which queue each task goes to: jobs hold the GPU; everything short and CPU-bound goes to ``cpu``,
# so a slow callback receiver or a big upload never holds a GPU worker. Predictions have a queue of
# their own: a client may be waiting on one, so it must queue neither behind a training job nor
# behind upload checks; its workers may run on CPUs or on a GPU with room beside a job.
TASK_QUEUES = {
    TASK_RUN_JOB: GPU_QUEUE,
    TASK_VALIDATE_DATASET: CPU_QUEUE,
    TASK_VALIDATE_CHECKPOINT: CPU_QUEUE,
    TASK_DELIVER_WEBHOOK: CPU_QUEUE,
    TASK_PREDICT: PREDICT_QUEUE,
}
