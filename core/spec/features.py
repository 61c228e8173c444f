"""Jobs on precomputed features: what a job reads (images or a feature space) and the views RUC
makes of a feature vector.

``resolve_inputs`` decides, from the spec and what the dataset holds, whether the base network and
RUC's networks read images (CNN backbones) or one feature space (MLP heads on the frozen
features), and which space. It needs no torch, so the API checks a submit with it against the
dataset's facts and the worker with the same rules against the loaded data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from core.errors import CoreInputError
from core.spec.common import _Spec

if TYPE_CHECKING:
    from core.spec.job import JobSpec

InputKind = Literal["auto", "images", "features"]
# A feature space's name (npz key features_<name>; 'default' is the key 'features').
SPACE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_]{0,31}$"
DEFAULT_SPACE = "default"
# Base methods that run on fixed feature vectors; the others train or load an image backbone.
FEATURE_METHODS = ("kmeans", "labels", "scan", "dec", "idec", "dcn")


class FeatureViewsSpec(_Spec):
    """The weak and strong views of a feature vector x (refine.input = features).

    A view replaces each dimension with its dataset mean with probability ``*_dropout`` (feature
    dropout; the mean, not 0, so a dropped entry carries no information whatever the features'
    offset), then adds Gaussian noise of ``*_noise`` times that dimension's standard deviation over
    the dataset. The weak view stands where Algorithm 1 applies phi_a (label guessing, MixMatch),
    the strong view where it applies phi_A (the smoothed clean-set loss L_Xs).
    """

    weak_dropout: float = Field(default=0.1, ge=0, lt=1, description="weak view: share of dimensions dropped")
    weak_noise: float = Field(
        default=0.1, ge=0, le=10, description="weak view: noise std, in units of each dimension's std"
    )
    strong_dropout: float = Field(
        default=0.3, ge=0, lt=1, description="strong view: share of dimensions dropped"
    )
    strong_noise: float = Field(
        default=0.3, ge=0, le=10, description="strong view: noise std, in units of each dimension's std"
    )


@dataclass(frozen=True)
class ResolvedInputs:
    """kind: what the job's networks read. space: the feature space clustered and sampled in (None:
    PCA of the pixels or the embedding model, as for an image dataset); dim: its D."""

    kind: Literal["images", "features"]
    space: str | None
    dim: int | None


def ordered_spaces(spaces: Iterable[str]) -> list[str]:
    """The order a dataset's spaces are listed and defaulted in: 'default' first, then by name."""
    return sorted(spaces, key=lambda s: (s != DEFAULT_SPACE, s))


def feature_conflicts(spec: JobSpec) -> list[tuple[tuple[str, ...], str]]:
    """(field location, problem) for every part of ``spec`` that needs images, for a feature job."""
    b, r = spec.base, spec.refine
    out: list[tuple[tuple[str, ...], str]] = []
    if b.method not in FEATURE_METHODS:
        out.append(
            (
                ("base", "method"),
                f"'{b.method}' needs images; on precomputed features use one of {', '.join(FEATURE_METHODS)}",
            )
        )
    images_only = {
        "embedding_checkpoint_id": b.embedding_checkpoint_id,
        "pretext": b.pretext,
        "backbone": b.backbone,
        "normalisation": b.normalisation,
    }
    for name, value in images_only.items():
        if value is not None:
            out.append((("base", name), "applies to images only; a feature job reads the dataset's features"))
    if r.backbone is not None:
        out.append(
            (
                ("refine", "backbone"),
                "applies to images only; a feature job trains MLP heads (refine.feature_hidden_dim)",
            )
        )
    return out


def resolve_inputs(spec: JobSpec, *, has_images: bool, feature_spaces: Mapping[str, int]) -> ResolvedInputs:
    """What the job reads (module docstring); CoreInputError naming the spec field when the
    dataset cannot serve the spec.

    refine.input auto: features when the dataset has features and no images, else images.
    base.features: the space (default: none for an image job, the first of ``ordered_spaces``
    for a feature job).
    """
    spaces = ordered_spaces(feature_spaces)
    listed = ", ".join(spaces) or "none"
    want = spec.refine.input
    kind: Literal["images", "features"] = (
        ("features" if spaces and not has_images else "images") if want == "auto" else want
    )
    if kind == "images" and not has_images:
        raise CoreInputError(
            "refine.input", f"the dataset has no images, only feature spaces ({listed}); use 'features'"
        )
    if kind == "features" and not spaces:
        raise CoreInputError("refine.input", "the dataset has no feature arrays (features, features_<name>)")
    space = spec.base.features
    if space is not None and space not in feature_spaces:
        raise CoreInputError(
            "base.features", f"the dataset has no feature space {space!r} (it has: {listed})"
        )
    if kind == "features":
        problems = feature_conflicts(spec)
        if problems:
            loc, problem = problems[0]
            raise CoreInputError(".".join(loc), problem)
        space = space or spaces[0]
    return ResolvedInputs(kind=kind, space=space, dim=int(feature_spaces[space]) if space else None)


def resolve_from_facts(spec: JobSpec, facts: Mapping[str, Any]) -> ResolvedInputs:
    """``resolve_inputs`` against a dataset's validation facts (``has_images``, ``feature_spaces``).

    Facts stored before feature spaces existed lack both keys; they describe image datasets.
    """
    spaces = facts.get("feature_spaces") or {}
    return resolve_inputs(spec, has_images=facts.get("has_images", True) is not False, feature_spaces=spaces)
