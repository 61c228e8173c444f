"""Property-based fuzz of every operation in the OpenAPI document with schemathesis (its CLI, every
check it has) against the API as a real uvicorn process (embedded mode: SQLite + file broker, no
worker), authenticated with a real key: no 5xx, and every answer conforms to the document (status
codes, content types, headers, bodies). Ready uploads and queued jobs are seeded so that the fuzzer's
ids reach real rows, not only 404s."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from load_support import Services, api_only, job_body, ready_checkpoint, ready_dataset, service_env

from service.db.migrate import upgrade_head

MAX_EXAMPLES = 10  # per operation in the fuzzing phase (the coverage phase is deterministic)
SEED = 20240601  # fixed: a failure reproduces with the same command
RUN_TIMEOUT_S = 240

# Checks off or narrowed per operation, each because the document cannot state the rule it would
# need, not because the answer is wrong. Everything else runs everywhere.
BY_DESIGN = """
[[operations]]
# Uploads are accepted by file-name suffix (the description lists them); a multipart schema cannot
# constrain a part's file name, so a schema-valid "file.png" is rightly a 415.
include-operation-id = ["datasets_upload", "checkpoints_upload"]
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 404, 409, 415, 429]

[[operations]]
# A schema-valid spec is still a 409/422 when it names a dataset or checkpoint this key does not have
# (or that is not ready), breaks a cross-field rule of core.spec (method "checkpoint" needs
# clustering_checkpoint_id, ...) or exceeds the worker memory estimate: facts outside the schema.
include-operation-id = "jobs_create"
checks.positive_data_acceptance.enabled = false
"""

# Where the time goes, cut to fit the suite's budget (measured on 2 shared cores).
BUDGET = """
[phases.stateful]
# Its links start at a 202 from POST /v1/jobs, which generated specs almost never get (the cross-field
# rules above): 0 of 45 inferred links were followed, ~8 s spent on calls the other phases make.
enabled = false

[[operations]]
# The coverage phase sends ~1,400 boundary specs here, 60 % of them negative: each is a pydantic
# constraint the schema was generated from, rejected before any service code runs. Fuzzing still sends
# negative specs; coverage keeps the positive boundaries, which reach the reference and memory checks.
include-operation-id = "jobs_create"
phases.coverage.generation.mode = "positive"
"""


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def fuzz_config(ids: dict[str, list[str]]) -> str:
    """schemathesis.toml: bounded generation, no example database, SSE read for two messages only, and
    dictionaries that put the seeded ids where the schema has an id."""
    # Paths name a seeded row half of the time (the rest probe 404s); specs name seeded uploads nearly
    # always, so that valid specs get past the reference checks to the quota, memory estimate and insert.
    bindings = {
        "path.dataset_id": ("datasets", 0.5),
        "path.checkpoint_id": ("checkpoints", 0.5),
        "path.job_id": ("jobs", 0.5),
        "body.dataset_id": ("datasets", 0.9),
        "body.base.embedding_checkpoint_id": ("embedding_checkpoints", 0.9),
        "body.base.clustering_checkpoint_id": ("clustering_checkpoints", 0.9),
    }
    lines = [
        "workers = 2",
        "request-timeout = 20",
        "max-stream-events = 2",
        f"seed = {SEED}",
        "[generation]",
        f"max-examples = {MAX_EXAMPLES}",
        'database = "none"',
        "[parameters]",
        *(f'"{key}" = {{ dictionary = "{name}", probability = {p} }}' for key, (name, p) in bindings.items()),
        *(f"[dictionaries.{name}]\nvalues = {_toml_list(values)}" for name, values in ids.items()),
    ]
    return "\n".join(lines) + "\n" + BUDGET + BY_DESIGN


@pytest.fixture(scope="module")
def embedded_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    database_url = f"sqlite:///{data_dir / 'ruc.sqlite3'}"
    upgrade_head(database_url)
    # A stream of a job that never ends would run for RUC_STREAM_MAX_SECONDS; two messages are read.
    env = service_env(data_dir, database_url, "filesystem://", RUC_STREAM_MAX_SECONDS="2")
    with api_only(env, data_dir, database_url) as svc:
        yield svc


# Hypothesis describes its filters by parsing their source with ast.parse, sometimes from deep in
# its strategy resolution; near the default recursion limit CPython 3.11's AST conversion can fail
# with "SystemError: AST constructor recursion depth mismatch" (its error path miscounts), which
# schemathesis reports as a runtime error of the run (seen once in CI). A deeper limit avoids it.
RUN_CLI_WITH_DEEP_STACK = (
    "import runpy, sys; sys.setrecursionlimit(20_000); "
    "runpy.run_module('schemathesis.cli', run_name='__main__', alter_sys=True)"
)


def _seed(svc: Services) -> dict[str, list[str]]:
    # Facts of a CIFAR-sized labelled set, so most generated cluster counts and methods fit it.
    facts = {"count": 10_000, "height": 32, "width": 32, "channels": 3, "has_labels": True}
    datasets = [ready_dataset(svc, {**facts, "has_assignments": True}) for _ in range(2)]
    embedding = ready_checkpoint(svc, "embedding", {"backbone": "small_cnn"})
    clustering = ready_checkpoint(svc, "clustering", {"backbone": "small_cnn", "num_clusters": 2})
    with svc.client() as client:
        jobs = []
        for index in range(3):
            resp = client.post("/v1/jobs", json=job_body(datasets[0], index))
            assert resp.status_code == 202, resp.text
            jobs.append(resp.json()["id"])
    return {
        "datasets": datasets,
        "checkpoints": [embedding, clustering],
        "embedding_checkpoints": [embedding],
        "clustering_checkpoints": [clustering],
        "jobs": jobs,
    }


def test_every_operation_survives_the_fuzzer_and_matches_its_schema(
    embedded_api: Services, tmp_path: Path
) -> None:
    svc = embedded_api
    config = tmp_path / "schemathesis.toml"
    config.write_text(fuzz_config(_seed(svc)))
    report = tmp_path / "report.json"
    schema_url = f"{svc.base_url}/openapi.json"
    operations = len(
        [m for item in httpx.get(schema_url).json()["paths"].values() for m in item if m != "parameters"]
    )
    argv = [sys.executable, "-c", RUN_CLI_WITH_DEEP_STACK, "--config-file", str(config), "run", schema_url]
    # Every check schemathesis has is on by default (max_response_time only with a limit); `--checks`
    # on the command line would override the per-operation settings of BY_DESIGN, so none is named.
    argv += ["-H", f"Authorization: Bearer {svc.key}", "--no-color"]
    argv += ["--report", "json", "--report-json-path", str(report)]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=tmp_path)
    assert report.is_file(), run.stdout[-6000:] + run.stderr[-3000:]
    doc = json.loads(report.read_text())
    failures = {f"{f['code']} {f['title']}": f["count"] for f in doc["failures"]}
    where = {f"{f['code']} {f['title']}": f["operations"] for f in doc["failures"]}
    cases = doc["test_cases"]
    print(
        f"\noperations {doc['operations']['tested']}/{operations} tested, examples generated "
        f"{cases['generated']}, with failures {cases['with_failures']}, failures by check "
        f"{failures or 'none'}, errors {doc['errors'] or 'none'}, running time {doc['running_time']:.1f} s"
    )
    assert doc["complete"], run.stdout[-6000:]
    assert doc["operations"]["tested"] == operations == doc["operations"]["total"], doc["operations"]
    assert doc["errors"] == [], run.stdout[-6000:]
    assert failures == {}, f"{where}\n{run.stdout[-12000:]}"
    assert "Traceback" not in (svc.api.log() if svc.api else "")
