"""The README's "Use it from Python" script, run verbatim as a subprocess against the live API and
workers. Nothing in the text is substituted: the script reads its dataset path and epoch count from
RUC_DEMO_DATASET / RUC_DEMO_EPOCHS (defaults digits.npz / 30), which the test sets to a 300-image
digits file and 1 epoch, and the URL and key from RUC_API_URL / RUC_API_KEY."""

from __future__ import annotations

import csv
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from integration_support import REPO, Services, digits_npz

from ruc_client import Client

SECTION = "## Use it from Python"
N_IMAGES = 300
FIGURES = re.compile(r"^ *(base|refined): acc (\d\.\d{3})  ece (\d\.\d{3})$", re.MULTILINE)


def readme_python_block() -> str:
    """The first ```python block of the section titled SECTION (it must lie inside that section)."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index(SECTION)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    section = lines[start:end]
    opening = section.index("```python") + 1
    closing = section.index("```", opening)
    return "\n".join(section[opening:closing]) + "\n"


def test_readme_block_is_a_script_reading_its_inputs_from_the_environment() -> None:
    code = readme_python_block()
    compile(code, "README.md", "exec")
    assert 'os.environ.get("RUC_DEMO_DATASET", "digits.npz")' in code
    assert 'int(os.environ.get("RUC_DEMO_EPOCHS", "30"))' in code
    assert "Client()" in code and "assignments.csv" in code


def test_readme_python_script_runs_a_job_against_the_live_service(services: Services, tmp_path: Path) -> None:
    script = tmp_path / "refine.py"
    script.write_text(readme_python_block())
    dataset = tmp_path / "digits300.npz"
    dataset.write_bytes(digits_npz(n=N_IMAGES))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUC_")}
    env.update(
        RUC_API_URL=services.base_url,
        RUC_API_KEY=services.key,
        RUC_DEMO_DATASET=str(dataset),
        RUC_DEMO_EPOCHS="1",
        PYTHONPATH=str(REPO),
    )
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr

    job_id = re.search(r"^job (job_\w+) succeeded$", run.stdout, re.MULTILINE)
    assert job_id, run.stdout
    printed = {name: (float(acc), float(ece)) for name, acc, ece in FIGURES.findall(run.stdout)}
    assert set(printed) == {"base", "refined"}, run.stdout
    with Client(services.base_url, services.key) as client:
        job = client.get_job(job_id.group(1))
        result = client.get_result(job.id)
        listed = {a.name: a for a in client.list_artifacts(job.id)}
    assert job.status == "succeeded" and job.total_epochs == 1
    for name, (acc, ece) in printed.items():
        assert (acc, ece) == (round(result[name]["acc"], 3), round(result[name]["ece"], 3))
        assert 0.0 < ece < 1.0
    # chance on 10 balanced classes is 0.1; the default base clustering is far above it on digits
    assert printed["base"][0] > 0.3 and printed["refined"][0] > 0.1

    written = tmp_path / "assignments.csv"
    assert f"wrote {written.name}" in run.stdout or f"wrote {written}" in run.stdout
    body = written.read_bytes()
    assert hashlib.sha256(body).hexdigest() == listed["assignments.csv"].sha256
    rows = list(csv.DictReader(body.decode().splitlines()))
    assert len(rows) == N_IMAGES
