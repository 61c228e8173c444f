"""A real job's report.html in a real browser: headless Chromium (Debian's ``chromium`` package).

Chromium loads the page from disk with networking of no use (everything is inline); a probe
script added to a copy of the page records each image's decoded width after the load event, and
a screenshot must not be blank. The browser is required: install it with
``apt-get install -y chromium`` (``.ci/run`` does).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.datasets import ImageDataset
from core.hooks import RunHooks
from core.pipeline import ARTIFACT_NAMES, ONNX_NAME, REPORT_ARTIFACT_NAMES, run_job
from core.report import FIGURES, LABELS_NEEDED, REPORT_HTML, write_report
from core.spec import AttackSpec, BaseSpec, EvaluateSpec, JobSpec, RefineSpec

pytestmark = pytest.mark.browser
LABELLED_ONLY = {name for name, (_, needs_labels, _) in FIGURES.items() if needs_labels}
PROBE = (
    "<script>addEventListener('load',function(){var w=[];"
    "document.querySelectorAll('img').forEach(function(i){w.push(i.complete?i.naturalWidth:-1)});"
    "document.body.setAttribute('data-widths',w.join(','))})</script>"
)


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "headless Chromium is needed: apt-get install -y chromium (.ci/run installs it)"
    return exe


def _browser(tmp: Path, *args: str) -> str:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp / 'profile'}"]
    out = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


def _job(tmp: Path, digits: ImageDataset, *, labels: bool) -> tuple[dict, dict[str, Path], list[str]]:
    n = 240
    ds = ImageDataset(images=digits.images[:n], labels=digits.labels[:n] if labels else None)
    spec = JobSpec(
        dataset_id="ds_digits",
        num_clusters=10,
        base=BaseSpec(method="kmeans", fit_epochs=3, kmeans_restarts=2, pca_dim=16, backbone="small_cnn"),
        refine=RefineSpec(epochs=2, batch_size=32),
        evaluate=EvaluateSpec(
            attacks=[
                AttackSpec(kind="fgsm", eps=[2 / 255, 8 / 255]),
                AttackSpec(kind="bim", eps=[4 / 255], steps=2),
            ],
            attack_max_samples=48,
        ),
    )
    warnings: list[str] = []
    hooks = RunHooks(on_event=lambda level, m: warnings.append(m) if level == "warning" else None)
    out = run_job(spec, ds, device="cpu", work_dir=tmp, hooks=hooks)
    return out.result, out.artifacts, warnings


def _check_in_browser(tmp: Path, report: Path, expected_figures: int) -> None:
    page = report.read_text()
    probe = tmp / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = _browser(tmp, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    found = re.search(r'data-widths="([^"]*)"', dom)
    assert found, "the probe did not run after the page loaded"
    widths = [int(w) for w in found.group(1).split(",") if w]
    # Every figure decoded (a broken image has naturalWidth 0) at its PNG width.
    assert len(widths) == expected_figures and min(widths) >= 300, widths
    shot = tmp / "shot.png"
    _browser(tmp, "--hide-scrollbars", "--window-size=1280,3000", f"--screenshot={shot}", report.as_uri())
    px = np.asarray(Image.open(shot).convert("L"))
    assert px.shape == (3000, 1280)
    # A blank page inks ~0% of this window; the unlabelled report's four figures ink about 5%.
    assert (px < 240).mean() > 0.02, "the screenshot is (nearly) blank"


@pytest.mark.parametrize("labels", [True, False], ids=["labelled", "unlabelled"])
def test_report_of_a_real_job_renders_in_chromium(tmp_path: Path, digits_dataset, labels: bool) -> None:
    result, artifacts, warnings = _job(tmp_path, digits_dataset, labels=labels)
    expected = set(FIGURES) if labels else set(FIGURES) - LABELLED_ONLY
    assert set(artifacts) == set(ARTIFACT_NAMES) | expected | {REPORT_HTML, ONNX_NAME}
    assert set(REPORT_ARTIFACT_NAMES) >= set(artifacts) - set(ARTIFACT_NAMES) - {ONNX_NAME}
    assert not [w for w in warnings if w.startswith("report:")]
    # The report is drawn from the result alone: drawn again, the same files.
    again, _ = write_report(result, tmp_path / "again", warn=warnings.append)
    assert set(again) == set(artifacts) - set(ARTIFACT_NAMES) - {ONNX_NAME}
    page = artifacts[REPORT_HTML].read_text()
    assert (LABELS_NEEDED in page) is (not labels)
    for name in LABELLED_ONLY:
        assert (f'id="{name}"' in page) is labels
    _check_in_browser(tmp_path, artifacts[REPORT_HTML], len(expected))


def test_a_figure_that_fails_leaves_the_job_succeeding(tmp_path: Path, digits_dataset, monkeypatch) -> None:
    def broken(result: dict) -> None:
        raise RuntimeError("cannot draw")

    monkeypatch.setitem(FIGURES, "training.png", (broken, False, "Training curves per epoch"))
    result, artifacts, warnings = _job(tmp_path, digits_dataset, labels=True)
    message = "report: figure training.png skipped: RuntimeError: cannot draw"
    assert "training.png" not in artifacts and REPORT_HTML in artifacts
    assert message in warnings and message in result["notes"]
    assert message in artifacts[REPORT_HTML].read_text()
    assert set(ARTIFACT_NAMES) <= set(artifacts)  # the job's own artifacts as always
