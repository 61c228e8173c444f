"""The one error type core/ raises for bad input.

Every defect in a dataset, checkpoint or spec surfaces as a ``CoreInputError``
that names the offending field (or file member) and the problem, so the service
can turn it into an ``invalid`` status or a 4xx without guessing.
"""

from __future__ import annotations


class CoreInputError(ValueError):
    """Bad input: ``field`` names what is wrong (``images``, ``labels``, ``archive:cat/1.png``)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class StopRequested(RuntimeError):
    """Raised inside a long run when the caller's ``should_stop`` check says so (cancel)."""


class TrainingDiverged(RuntimeError):
    """A training loss became NaN or infinite: a setting (usually the learning rate) is too aggressive.

    Not an input defect and not worth a retry: the same job diverges again. ``field`` names the
    setting to change.
    """

    def __init__(self, *, epoch: int, step: int, loss: float, field: str = "refine.lr") -> None:
        self.epoch, self.step, self.loss, self.field = epoch, step, loss, field
        super().__init__(f"training diverged at epoch {epoch}, step {step} (loss {loss}); lower {field}")


class InsufficientMemory(RuntimeError):
    """The memory preflight found that the job does not fit its device even at the smallest batch
    it may shrink to (``core.ruc.preflight``). Not worth a retry on the same device: ``field`` names
    what to change (``refine.batch_size``, or ``dataset_id`` / ``refine.backbone`` when the part that
    does not scale with the batch alone exceeds the limit).
    """

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        super().__init__(message)


class RankLost(RuntimeError):
    """A rank of a multi-device job exited during it (killed, out of memory, its device failed).

    Infrastructure, not the job: the worker treats it like a lost worker and the job resumes.
    """
