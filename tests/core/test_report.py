"""core.report's figures and report.html on small hand-made result dicts (no job run, < 5 s)."""

from __future__ import annotations

import html
import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.metrics.report import clustering_report
from core.report import FIGURES, LABELS_NEEDED, REPORT_ARTIFACT_NAMES, REPORT_HTML, draw_figures, write_report
from core.report.figures import png_bytes
from core.report.html import render

LABEL_FREE = {"robustness.png", "training.png", "cluster_sizes.png", "confidence.png"}


def _attacks(acc: list[float | None], stab: list[float]) -> list[dict[str, Any]]:
    eps = [2 / 255, 4 / 255]
    return [
        {"kind": kind, "eps": e, "steps": steps, "accuracy": a, "stability": s}
        for kind, steps in (("fgsm", None), ("bim", 3))
        for e, a, s in zip(eps, acc, stab, strict=True)
    ]


def small_result(*, labels: bool, runs: int = 1) -> dict[str, Any]:
    """A result dict shaped like result.json: K = 3, 60 samples, 3 epochs per run."""
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3 if labels else None
    base_p = rng.dirichlet([1, 1, 1], size=60)
    refined_p = np.eye(3)[np.arange(60) % 3] * 0.7 + 0.1
    per_epoch = [
        {"epoch": r * 3 + e, "run": r, "run_epoch": e, "loss_x": 1.0 / e, "loss_xs": 1.2 / e,
         "loss_u": 0.01 * e, "lambda_u_eff": 25 * e / 3, "clean_size": 30 + e, "refurbished": 5 - e,
         "lr": 0.01 / e,
         **({"clean_precision": 0.9, "refurbished_precision": 0.8} if labels else {})}
        for r in range(runs)
        for e in (1, 2, 3)
    ]  # fmt: skip
    acc = [0.8, 0.7] if labels else [None, None]
    return {
        "base": clustering_report(base_p, y, num_clusters=3),
        "refined": clustering_report(refined_p, y, num_clusters=3),
        "clean_set": {"reason": "test", "initial": {"size": 30, "precision": 0.9}, "final": {"size": 33}},
        "robustness": {
            "num_samples": 24,
            "base": {"clean_accuracy": 0.9 if labels else None, "attacks": _attacks(acc, [0.9, 0.8])},
            "refined": {"clean_accuracy": 0.95 if labels else None, "attacks": _attacks(acc, [0.95, 0.9])},
        },
        "per_epoch": per_epoch,
        "collapse": {"suspected": False, "fired": []},
        "notes": ["a note from the job"],
        "timings": {"loading": 0.1, "refining": 2.5},
        "device": "cpu",
        "spec": {"dataset_id": "ds_x", "num_clusters": 3, "base": {"method": "kmeans"}},
        "dataset": {"count": 60, "height": 8, "width": 8, "channels": 1, "has_labels": labels},
    }


def _png_size(data: bytes) -> tuple[int, int]:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    return img.size


def test_labelled_result_draws_every_figure_as_png() -> None:
    warnings: list[str] = []
    figures, notes = draw_figures(small_result(labels=True, runs=2), warnings.append)
    assert [f[0] for f in figures] == list(FIGURES) and warnings == [] and notes == []
    for name, _, png in figures:
        w, h = _png_size(png)
        assert w >= 300 and h >= 200, name
        # Not a blank canvas: a drawn figure has a good share of non-white pixels.
        px = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
        assert (px < 230).mean() > 0.02, name


def test_unlabelled_result_draws_label_free_figures_and_says_why() -> None:
    result = small_result(labels=False)
    figures, notes = draw_figures(result, lambda m: None)
    assert {f[0] for f in figures} == LABEL_FREE
    assert notes == [LABELS_NEEDED]
    page = render(result, figures, notes)
    assert "has no labels" in page and "reliability.png" not in page and "confusion.png" not in page


def test_report_html_is_self_contained(tmp_path: Path) -> None:
    paths, seconds = write_report(small_result(labels=True), tmp_path, warn=lambda m: None)
    assert set(paths) == set(REPORT_ARTIFACT_NAMES) and seconds < 10
    page = (tmp_path / REPORT_HTML).read_text()
    srcs = re.findall(r'src="([^"]*)"', page)
    outside_images = re.sub(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', "", page)
    assert not re.search(r"https?:|//[a-z]|url\(|<script|<link|@import", outside_images, flags=re.I)
    assert len(srcs) == len(FIGURES) and all(s.startswith("data:image/png;base64,") for s in srcs)
    # The metrics table has base vs refined with both numbers, and the spec and timings are shown.
    assert "accuracy (Hungarian)" in page and "ds_x" in page and "2.50" in page
    assert "a note from the job" in page


def test_a_failing_figure_is_skipped_with_a_warning(tmp_path: Path) -> None:
    result = small_result(labels=True)
    result["robustness"]["refined"]["attacks"][0].pop("eps")  # a shape the drawing does not expect
    warnings: list[str] = []
    paths, _ = write_report(result, tmp_path, warn=warnings.append)
    assert len(warnings) == 1 and "robustness.png skipped: KeyError" in warnings[0]
    assert "robustness.png" not in paths and set(paths) == set(REPORT_ARTIFACT_NAMES) - {"robustness.png"}
    assert html.escape(warnings[0]) in (tmp_path / REPORT_HTML).read_text()


def test_several_runs_get_their_summary_table() -> None:
    result = small_result(labels=True, runs=2)
    assert "<h2>Runs</h2>" not in render(result, [], [])  # no runs block: a single-run result
    result["runs"] = [{"index": 0}, {"index": 1}]
    result["summary"] = {"acc": {"mean": 0.81, "std": 0.02, "values": [0.8, 0.82]}}
    result["best_run"] = {"index": 1, "seed": 7, "criterion": "consensus"}
    page = render(result, [], [])
    assert "<h2>Runs</h2>" in page and "0.8100" in page and "0.8000, 0.8200" in page and "seed 7" in page


def test_collapse_block_lists_the_fired_signs() -> None:
    result = small_result(labels=False)
    fired = [{"message": "2 cluster(s) merged"}]
    result["collapse"] = {"suspected": True, "fired": fired, "returned": "kept"}
    page = render(result, [], [])
    assert "Collapse signs" in page and "2 cluster(s) merged" in page
    assert "Collapse signs" not in render(small_result(labels=False), [], [])


def test_an_unexpected_result_does_not_raise(tmp_path: Path) -> None:
    warnings: list[str] = []
    paths, _ = write_report({"notes": []}, tmp_path, warn=warnings.append)
    # Figures with nothing to draw are absent, those that break are skipped with a warning each.
    assert set(paths) == {REPORT_HTML}
    assert [w.split()[2] for w in warnings] == ["cluster_sizes.png", "confidence.png"]
    warnings.clear()
    paths, _ = write_report({"notes": 5}, tmp_path / "bad", warn=warnings.append)
    assert paths == {} and warnings[-1].startswith("report: not written: TypeError")


def test_importing_core_and_the_api_does_not_load_matplotlib() -> None:
    code = "import core.pipeline, core.report, api.main, sys; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("k", [3, 30])
def test_cluster_sizes_and_confusion_scale_with_k(k: int) -> None:
    rng = np.random.default_rng(1)
    y = np.arange(300) % k
    rep = clustering_report(rng.dirichlet(np.ones(k), size=300), y, num_clusters=k)
    result = {"base": rep, "refined": rep}
    for name in ("cluster_sizes.png", "confusion.png"):
        fig = FIGURES[name][0](result)
        assert fig is not None
        w, _ = _png_size(png_bytes(fig))
        assert w >= 400
