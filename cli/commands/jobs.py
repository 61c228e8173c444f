"""``ruc-service jobs submit SPEC.json [--wait] | watch ID | result ID | artifacts ID [--get NAME] |
predict ID (--images FILE | --dataset ID) [--wait] [--out FILE]``."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from cli.commands.client_support import print_json, with_client
from ruc_client import Client, Job, Prediction, PredictionFailed, RucClientError

OUT_SUFFIXES = (".json", ".csv")


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
    pr = jsub.add_parser(
        "predict",
        help="assign new images with a succeeded job's model; prints the prediction as JSON, or writes --out",
    )
    pr.add_argument("job_id")
    given = pr.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--images",
        type=Path,
        metavar="FILE",
        help=".npz with images uint8 (N, H, W, C), or an image-folder archive, as the job's dataset",
    )
    given.add_argument(
        "--dataset",
        metavar="ID",
        help="every image of one of your ready datasets (uploaded with `datasets upload`), read in place",
    )
    pr.add_argument(
        "--wait",
        action="store_true",
        help="poll a request the server queued (202: more than RUC_PREDICT_SYNC_MAX_IMAGES images, or "
        "slow) until it ends; without it such a request prints its id and status and exits 0",
    )
    pr.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits (default 600)")
    pr.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the answer here: .csv (index, cluster, one probability column per cluster) or .json",
    )
    pr.set_defaults(func=with_client(run_predict))


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


def _write_prediction(prediction: Prediction, path: Path) -> None:
    if path.suffix == ".json":
        path.write_text(prediction.model_dump_json(indent=2) + "\n")
        return
    assignments, probabilities = prediction.assignments or [], prediction.probabilities or []
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        k = len(probabilities[0]) if probabilities else 0
        out.writerow(["index", "cluster", *(f"p{j}" for j in range(k))])
        for i, (cluster, row) in enumerate(zip(assignments, probabilities, strict=True)):
            out.writerow([i, cluster, *(f"{p:.6g}" for p in row)])


def run_predict(client: Client, args: argparse.Namespace) -> int:
    if args.out is not None and args.out.suffix not in OUT_SUFFIXES:
        raise RucClientError(f"--out must end in {' or '.join(OUT_SUFFIXES)}: {args.out}")
    prediction = client.submit_prediction(args.job_id, args.images, dataset_id=args.dataset)
    if not prediction.finished:
        if not args.wait:
            print(f"prediction {prediction.id} {prediction.status} (poll it, or send again with --wait)")
            return 0
        prediction = client.wait_prediction(args.job_id, prediction, timeout_s=args.timeout)
    elif prediction.status != "succeeded":
        raise PredictionFailed(prediction)
    line = f"prediction {prediction.id} succeeded: {prediction.count} images"
    if args.out is None:
        print(line, file=sys.stderr)
        print(prediction.model_dump_json(indent=2))
    else:
        _write_prediction(prediction, args.out)
        print(f"{line}, written to {args.out}")
    return 0
