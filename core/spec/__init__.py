"""The job spec: what a client asks for, with the paper's defaults.

Pure pydantic, no torch: the API validates specs with this package and never imports torch.
Defaults come from the RUC paper, appendix A.2, unless noted. One module per block.
"""

from core.spec.base import BaseSpec
from core.spec.common import BackboneName
from core.spec.features import FeatureViewsSpec, ResolvedInputs, resolve_from_facts, resolve_inputs
from core.spec.job import AttackSpec, EvaluateSpec, JobSpec
from core.spec.methods import (
    AndSpec,
    AutoKEstimator,
    AutoKSpec,
    BrbSpec,
    DeepClusteringSpec,
    GccSpec,
    PretextSpec,
    ScanSpec,
)
from core.spec.refine import RefineSpec

__all__ = [
    "AndSpec",
    "AttackSpec",
    "AutoKEstimator",
    "AutoKSpec",
    "BackboneName",
    "BaseSpec",
    "BrbSpec",
    "DeepClusteringSpec",
    "EvaluateSpec",
    "FeatureViewsSpec",
    "GccSpec",
    "JobSpec",
    "PretextSpec",
    "RefineSpec",
    "ResolvedInputs",
    "ScanSpec",
    "resolve_from_facts",
    "resolve_inputs",
]
