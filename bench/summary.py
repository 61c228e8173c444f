"""One JSON file of figures that several benchmarks add their sections to (bench/gpu_check.sh reads it)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def add_summary_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary", type=Path, default=None, help="add this run's figures to a JSON file")


def write_summary(path: Path | None, section: str, figures: dict[str, Any]) -> None:
    """Merge ``figures`` under ``section`` into the JSON object at ``path`` (created when missing)."""
    if path is None:
        return
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    data[section] = figures
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)
