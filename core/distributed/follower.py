"""A follower rank (1..N-1): join the job's process group and run what rank 0 announces.

Started by ``core.distributed.launch`` as ``python -m core.distributed.follower``. It runs no
pipeline of its own: every input arrives from rank 0 with the command (``commands.follow``), it
writes no file, and it exits when rank 0 posts STOP, when rank 0's process disappears, or (non-zero)
when a command fails, e.g. because another rank died inside a collective.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import pickle
import signal
import sys
import time
from pathlib import Path

import torch

from core.distributed.commands import STOP, follow
from core.distributed.launch import close_rank, init_rank
from core.hooks import RunHooks

# The modules whose entry points a follower can be asked to run (they register on import).
import core.clustering.base_steps  # noqa: E402,F401  isort: skip
import core.ruc.trainer  # noqa: E402,F401  isort: skip

POLL_S = 0.05  # command latency of an idle follower; a store check costs microseconds


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the parent dies (rank 0 killed with SIGKILL leaves no one
    to clean up)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parent", type=int, required=True)
    args = p.parse_args(argv)
    _die_with_parent()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    session = init_rank(args.store, args.rank, args.world, dev, args.timeout)
    local = {"device": dev, "hooks": RunHooks(), "checkpoint_path": None}
    try:
        while True:
            key = session.key()
            while not session.store.check([key]):
                if os.getppid() != args.parent:
                    return 1  # rank 0 is gone without a STOP
                time.sleep(POLL_S)
            name = pickle.loads(session.store.get(key))
            session.seq += 1
            if name == STOP:
                return 0
            follow(name, session, local)
    finally:
        close_rank()


if __name__ == "__main__":
    sys.exit(main())
