"""RUC's schedules as fractions of the run, and the effective values a job reports.

The authors' script is written for 200 epochs: lambda_u ramps over those 200 and tau2 steps
every 40. A job of another length keeps those proportions unless the spec gives absolute values,
so a 30-epoch job still reaches the full unlabeled weight and the last tau2 step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from core.errors import CoreInputError
from core.spec import RefineSpec
from core.spec.refine import (
    default_label_smoothing,
    effective_batch_size,
    smoothing_bound,
    smoothing_problem,
)

TAU2_STEPS = 5  # A.2: tau2 = 0.9 + 0.02 every 40 of 200 epochs, i.e. every fifth of the run
TAU2_CAP = 0.999  # above this no softmax would pass it in fp32 training
LAMBDA_U_FLOOR = 0.1  # the script's clip(epoch / 200, 0.1, 1): the unlabeled term never starts at 0


@dataclass(frozen=True)
class Schedule:
    """The values one RUC run uses, after defaults that follow the job were filled in.

    epochs: total epochs. lambda_u_rampup_epochs: R of clip(epoch / R, 0.1, 1).
    refurbish_every: epochs between tau2 steps (may be fractional: every fifth of the run).
    label_smoothing: epsilon of Eq. (8). *_source: "spec" when the client set it, else the rule.
    """

    epochs: int
    batch_size: int
    lambda_u: float
    lambda_u_rampup_epochs: float
    lambda_u_rampup_source: str
    refurbish_threshold: float
    refurbish_step: float
    refurbish_every: float
    refurbish_every_source: str
    label_smoothing: float
    label_smoothing_source: str

    def lambda_u_at(self, epoch: int) -> float:
        """lambda_u * clip(epoch / R, 0.1, 1) for 0-based ``epoch``."""
        ramp = min(max(epoch / self.lambda_u_rampup_epochs, LAMBDA_U_FLOOR), 1.0)
        return float(self.lambda_u * ramp)

    def tau2_at(self, epoch: int) -> float:
        """tau2 = start + step * floor(epoch / every), capped at TAU2_CAP (0-based ``epoch``)."""
        steps = math.floor(epoch / self.refurbish_every + 1e-9)
        return float(min(self.refurbish_threshold + self.refurbish_step * steps, TAU2_CAP))

    def report(self) -> dict[str, Any]:
        return asdict(self)


def resolve_schedule(spec: RefineSpec, *, num_clusters: int, num_samples: int = 0) -> Schedule:
    """Fill in the defaults that follow the job (see RefineSpec's descriptions).

    Raises CoreInputError naming refine.label_smoothing when an explicit epsilon would leave the
    pseudo-label no larger than the other entries for this K (K is known only now with auto-K).
    """
    eps = spec.label_smoothing
    if eps is not None and eps >= smoothing_bound(num_clusters):
        raise CoreInputError("refine.label_smoothing", smoothing_problem(eps, num_clusters))
    if spec.lambda_u_rampup_epochs is not None:
        ramp, ramp_src = float(spec.lambda_u_rampup_epochs), "spec"
    else:
        ramp, ramp_src = spec.lambda_u_rampup * spec.epochs, f"{spec.lambda_u_rampup:g} x epochs"
    if spec.refurbish_every is not None:
        every, every_src = float(spec.refurbish_every), "spec"
    else:
        every, every_src = spec.epochs / TAU2_STEPS, "epochs / 5"
    return Schedule(
        epochs=spec.epochs,
        batch_size=effective_batch_size(spec.batch_size, num_samples=num_samples),
        lambda_u=spec.lambda_u,
        lambda_u_rampup_epochs=max(ramp, 1e-9),
        lambda_u_rampup_source=ramp_src,
        refurbish_threshold=spec.refurbish_threshold,
        refurbish_step=spec.refurbish_step,
        refurbish_every=max(every, 1e-9),
        refurbish_every_source=every_src,
        label_smoothing=default_label_smoothing(num_clusters) if eps is None else eps,
        label_smoothing_source="min(0.2, (K-1)/(K+8))" if eps is None else "spec",
    )
