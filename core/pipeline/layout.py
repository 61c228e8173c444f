"""Names shared by the pipeline's modules: stages, artifacts and the files of a job's work folder."""

from __future__ import annotations

from pathlib import Path

from core.predict.onnx_export import ONNX_NAME as ONNX_NAME  # re-exported
from core.report import REPORT_ARTIFACT_NAMES as REPORT_ARTIFACT_NAMES  # re-exported

STAGES = ("loading", "base_clustering", "sampling", "refining", "evaluating", "saving")
ARTIFACT_NAMES = ("refined_ensemble.safetensors", "assignments.csv", "result.json")
# Written after these and published with them: ONNX_NAME (the ensemble as one ONNX graph) and
# REPORT_ARTIFACT_NAMES (core.report), the figures (PNG) and report.html; an export that fails, a
# figure that cannot be drawn or one that needs labels the dataset lacks is absent.
BASE_CACHE = "base.pt"
RUC_CHECKPOINT = "ruc_checkpoint.pt"
# The memory preflight's choice (core/pipeline/preflight.py): a resumed attempt trains at the same batch.
PREFLIGHT_RECORD = "preflight.json"
# Inference and attack batches: no activations kept for training, so larger than training batches.
EVAL_BATCH_SIZE = 512


def run_checkpoint(work_dir: Path, index: int, seed: int, runs: int) -> Path:
    """Where run ``index`` (of ``runs``) with refinement seed ``seed`` checkpoints RUC.

    A single run keeps ``work_dir/ruc_checkpoint.pt`` (the worker reports resumes from there);
    several runs each get ``work_dir/run_<index>_seed_<seed>/``, so a resumed job finds every
    finished run complete and continues the one it was in.
    """
    if runs == 1:
        return work_dir / RUC_CHECKPOINT
    return work_dir / f"run_{index}_seed_{seed}" / RUC_CHECKPOINT


def resume_files(work_dir: Path) -> list[Path]:
    """The files of ``work_dir`` a resumed job reads, relative to it: the base cache, the memory
    preflight's record and every run's RUC checkpoint (a new attempt's folder starts from links to
    these)."""
    found = [Path(name) for name in (BASE_CACHE, PREFLIGHT_RECORD) if (work_dir / name).is_file()]
    found += [p.relative_to(work_dir) for p in sorted(work_dir.glob(f"**/{RUC_CHECKPOINT}")) if p.is_file()]
    return found
