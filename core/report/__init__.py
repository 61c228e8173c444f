"""Pictures of a job's result: PNG figures and one self-contained report.html.

Written by ``core.pipeline.run_job`` after result.json's content is known, from that content
only. The figures need matplotlib (the ``ml`` extra); it is imported when a figure is drawn,
never when ``core`` is imported, so the API (which never runs jobs) does not load it. Nothing
here may fail a job: a figure that cannot be drawn is left out, with a note in the report and a
warning through ``warn``; without matplotlib the report still has the tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.atomic import atomic_write_bytes
from core.report.figures import FIGURES, png_bytes
from core.report.html import render

REPORT_HTML = "report.html"
REPORT_ARTIFACT_NAMES = (*FIGURES, REPORT_HTML)
LABELS_NEEDED = (
    "The dataset has no labels, so the figures that compare with them (reliability diagrams, "
    "confusion matrices) are left out and robustness shows stability (the share of predictions an "
    "attack leaves unchanged) instead of accuracy."
)

__all__ = ["FIGURES", "LABELS_NEEDED", "REPORT_ARTIFACT_NAMES", "REPORT_HTML", "draw_figures", "write_report"]


def _has_labels(result: dict[str, Any]) -> bool:
    return bool((result.get("dataset") or {}).get("has_labels")) and result["base"].get("acc") is not None


def draw_figures(
    result: dict[str, Any], warn: Callable[[str], None]
) -> tuple[list[tuple[str, str, bytes]], list[str]]:
    """([(artifact name, caption, PNG bytes)], notes for the report) for a JSON-safe ``result``."""
    notes: list[str] = []
    labelled = _has_labels(result)
    if not labelled:
        notes.append(LABELS_NEEDED)
    try:
        import matplotlib  # noqa: F401 - only to learn whether figures can be drawn
    except ImportError:
        message = "report: no figures drawn: matplotlib is not installed (the ml extra)"
        warn(message)
        return [], [*notes, message]
    out = []
    for name, (draw, needs_labels, caption) in FIGURES.items():
        if needs_labels and not labelled:
            continue
        try:
            fig = draw(result)
            if fig is None:
                continue
            out.append((name, caption, png_bytes(fig)))
        except Exception as exc:  # a figure is a convenience: its failure must not fail the job
            message = f"report: figure {name} skipped: {type(exc).__name__}: {exc}"
            warn(message)
            notes.append(message)
    return out, notes


def write_report(
    result: dict[str, Any], work_dir: Path, *, warn: Callable[[str], None]
) -> tuple[dict[str, Path], float]:
    """Write the figures and report.html of ``result`` (JSON-safe) into ``work_dir``.

    Returns ({artifact name: path} of what was written, seconds taken). Never raises for a
    figure; warn(message) is called for each one left out.
    """
    t0 = time.perf_counter()
    paths: dict[str, Path] = {}
    try:
        figures, notes = draw_figures(result, warn)
        for name, _, png in figures:
            atomic_write_bytes(work_dir / name, png)
            paths[name] = work_dir / name
        page = render(result, figures, notes)
    except Exception as exc:  # a result shape this module does not know: no report, the job goes on
        message = f"report: not written: {type(exc).__name__}: {exc}"
        warn(message)
        return paths, time.perf_counter() - t0
    atomic_write_bytes(work_dir / REPORT_HTML, page.encode("utf-8"))
    paths[REPORT_HTML] = work_dir / REPORT_HTML
    return paths, time.perf_counter() - t0
