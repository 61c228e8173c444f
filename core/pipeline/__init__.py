"""One whole job: base clustering -> clean-set sampling -> RUC -> evaluation -> artifacts.

Stages (``hooks.on_stage``), one function each: loading, base_clustering, sampling
(``stages.py``), refining (``refining.py``), evaluating and saving (``job.py``, over
``evaluating.py``, ``result.py``, ``artifacts.py``).

Resuming: ``work_dir/base.pt`` caches the base output (``base_cache.py``), so a resumed job never
redoes or changes its base; each RUC run checkpoints after every epoch (``layout.run_checkpoint``)
and continues from there. Everything else is a deterministic function of those files and the
spec, so a stopped-and-resumed job gives the result of an uninterrupted one.

Several runs (``repeats`` / ``seeds`` in the job spec) share the base and the clean set; each
refines with its own seed, the result reports every run and the mean and std of every figure,
and the artifacts come from the best run by a label-free criterion (``runs.py``).

Artifacts (``artifacts.py``, each written atomically): ``refined_ensemble.safetensors``,
``assignments.csv``, ``result.json``; ``model.onnx`` (``core.predict.onnx_export``); then the figures
and ``report.html`` (``core.report``, drawn from the result). Neither the ONNX export nor a figure
ever fails the job.
"""

from core.pipeline.artifacts import load_ensemble
from core.pipeline.job import JobOutcome, run_job
from core.pipeline.layout import (
    ARTIFACT_NAMES,
    BASE_CACHE,
    ONNX_NAME,
    PREFLIGHT_RECORD,
    REPORT_ARTIFACT_NAMES,
    RUC_CHECKPOINT,
    STAGES,
    resume_files,
)

__all__ = [
    "ARTIFACT_NAMES",
    "BASE_CACHE",
    "ONNX_NAME",
    "PREFLIGHT_RECORD",
    "REPORT_ARTIFACT_NAMES",
    "RUC_CHECKPOINT",
    "STAGES",
    "JobOutcome",
    "load_ensemble",
    "resume_files",
    "run_job",
]
