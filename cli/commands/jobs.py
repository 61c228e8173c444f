"""``ruc-service jobs submit SPEC.json [--wait] | watch ID | result ID | artifacts ID [--get NAME]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.commands.client_support import print_json, with_client
from ruc_client import Client, Job, RucClientError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="submit and follow jobs through the API (RUC_API_URL, RUC_API_KEY)")
    jsub = p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    s = jsub.add_parser("submit", help="submit the job spec in a JSON file; prints the job id last")
    s.add_argument("spec", type=Path)
    s.add_argument("--wait", action="store_true", help="then follow it as `watch` does")
    s.add_argument("--idempotency-key", default=None, help="default: a new one per submit")
    s.set_defaults(func=with_client(run_submit))
    w = jsub.add_parser("watch", help="follow a job with a progress bar; exit 0 only if it succeeds")
    w.add_argument("job_id")
    w.set_defaults(func=with_client(run_watch))
    r = jsub.add_parser("result", help="print a succeeded job's result as JSON")
    r.add_argument("job_id")
    r.set_defaults(func=with_client(run_result))
    a = jsub.add_parser("artifacts", help="list a job's artifacts, or download one (sha256 checked)")
    a.add_argument("job_id")
    a.add_argument("--get", metavar="NAME", default=None, help="download this artifact")
    a.add_argument("-o", "--output", type=Path, default=None, help="where to write it (default ./NAME)")
    a.set_defaults(func=with_client(run_artifacts))


def _read_spec(path: Path) -> dict[str, object]:
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RucClientError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(spec, dict):
        raise RucClientError(f"{path} must hold a JSON object (the job spec)")
    return spec


def _follow(client: Client, job_id: str) -> int:
    job = client.wait(job_id, progress=sys.stderr.isatty())
    print(_summary(job))
    return 0 if job.status == "succeeded" else 1


def _summary(job: Job) -> str:
    line = f"job {job.id} {job.status}"
    if job.epoch is not None:
        line += f" (epoch {job.epoch}/{job.total_epochs})"
    if job.error:
        line += f": {job.error_code}: {job.error}"
    return line


def run_submit(client: Client, args: argparse.Namespace) -> int:
    job = client.submit_job(_read_spec(args.spec), idempotency_key=args.idempotency_key)
    print(job.id, flush=True)
    return _follow(client, job.id) if args.wait else 0


def run_watch(client: Client, args: argparse.Namespace) -> int:
    return _follow(client, args.job_id)


def run_result(client: Client, args: argparse.Namespace) -> int:
    print_json(client.get_result(args.job_id))
    return 0


def run_artifacts(client: Client, args: argparse.Namespace) -> int:
    if args.get is not None:
        path = client.download_artifact(
            args.job_id, args.get, args.output or Path(args.get), progress=sys.stderr.isatty()
        )
        print(f"{path} ({path.stat().st_size} bytes, sha256 verified)")
        return 0
    for artifact in client.list_artifacts(args.job_id):
        print(f"{artifact.name}\t{artifact.size}\t{artifact.sha256}\t{artifact.media_type}")
    return 0
