"""Callbacks through which a long run reports progress and learns that it should stop.

``RunHooks`` is a plain dataclass of callables, so a caller passes only the ones it needs
(``RunHooks(on_epoch=store_metrics, should_stop=lambda: cancelled)``); the defaults do nothing.
Core code never imports the service: the worker turns these calls into DB rows and cancel checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import StopRequested


def _ignore(*_args: Any, **_kwargs: Any) -> None:
    return None


def _never() -> bool:
    return False


@dataclass
class RunHooks:
    """What a run calls while it works.

    on_stage(stage): a new pipeline stage starts (``loading``, ``base_clustering``, ``sampling``,
        ``refining``, ``evaluating``, ``saving``).
    on_progress(fraction, epoch, total_epochs): fraction in [0, 1] of the current stage; epoch and
        total_epochs are None outside epoch-based stages.
    on_epoch(metrics): one JSON-serialisable dict per finished epoch.
    on_event(level, message): ``info`` | ``warning`` | ``error`` with a human-readable message.
    should_stop(): True asks the run to stop; it raises ``StopRequested`` at its next check.
    """

    on_stage: Callable[[str], None] = _ignore
    on_progress: Callable[[float, int | None, int | None], None] = _ignore
    on_epoch: Callable[[dict[str, Any]], None] = _ignore
    on_event: Callable[[str, str], None] = _ignore
    should_stop: Callable[[], bool] = _never

    def check_stop(self, where: str) -> None:
        """Raise ``StopRequested`` naming ``where`` when ``should_stop()`` says so."""
        if self.should_stop():
            raise StopRequested(f"stop requested ({where})")
