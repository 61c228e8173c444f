"""Training and repeats blocks: the per-epoch series, the effective schedule, runs, summary, best run."""

from __future__ import annotations

from pydantic import Field

from core.result_schema.common import Block, Fraction
from core.result_schema.quality import Collapse, RobustnessReport


class EpochMetrics(Block):
    """One RUC epoch (what ``hooks.on_epoch`` sent); losses are means over the epoch's steps."""

    epoch: int = Field(description="1-based epoch, numbered across runs when the job has repeats")
    loss_xs: float | None = Field(
        description="strong-augmentation cross-entropy on the clean set; null when off"
    )
    loss_x: float | None = Field(description="MixMatch labelled loss; null when MixMatch is off")
    loss_u: float | None = Field(description="MixMatch unlabelled (MSE) loss; null when off")
    lambda_u_eff: float = Field(description="weight of loss_u this epoch after the ramp-up (0 when off)")
    tau2: float | None = Field(description="refurbishing confidence threshold this epoch; null when off")
    clean_size: int = Field(description="clean-set size after the epoch's refurbishing (images)")
    refurbished: int = Field(description="images added to the clean set this epoch (may be negative)")
    lr: float = Field(description="learning rate of the epoch (cosine schedule)")
    seconds: float = Field(description="wall time of the epoch, seconds")
    mean_confidence: Fraction = Field(description="mean max probability of the ensemble's table, in [0, 1]")
    clean_precision: Fraction = Field(default=None, description="labels only: precision of the clean set")
    clean_recall: Fraction = Field(default=None, description="labels only: recall of the clean set")
    clean_f1: Fraction = Field(default=None, description="labels only: F1 of the clean set")
    refurbished_precision: Fraction = Field(
        default=None, description="labels only: share of refurbished images with a correct label (cumulative)"
    )
    refurbished_recall: Fraction = Field(
        default=None, description="labels only: share of initially unclean images refurbished correctly"
    )
    refurbished_f1: Fraction = Field(default=None, description="labels only: F1 of the refurbished set")
    run: int | None = Field(default=None, description="repeats only: 0-based run index")
    seed: int | None = Field(default=None, description="repeats only: the run's seed")
    run_epoch: int | None = Field(default=None, description="repeats only: 1-based epoch within the run")


class Effective(Block):
    """The schedule values the best run used, after defaults that follow the job were filled in."""

    epochs: int = Field(description="RUC epochs per run")
    batch_size: int = Field(description="batch size used (clipped to the data)")
    lambda_u: float = Field(description="full weight of the unlabelled loss")
    lambda_u_rampup_epochs: float = Field(description="R of lambda_u * clip(epoch / R, 0.1, 1), epochs")
    lambda_u_rampup_source: str = Field(description="'spec' when set by the client, else the rule used")
    refurbish_threshold: float = Field(description="tau2 at epoch 0")
    refurbish_step: float = Field(description="tau2 increase per step")
    refurbish_every: float = Field(description="epochs between tau2 steps (may be fractional)")
    refurbish_every_source: str = Field(description="'spec' when set by the client, else the rule used")
    label_smoothing: float = Field(description="epsilon of Eq. (8)")
    label_smoothing_source: str = Field(description="'spec' when set by the client, else the rule used")
    knn_k: int = Field(description="neighbours of the clean-set kNN test actually used")


class RunReport(Block):
    """The headline figures of one run's refined ensemble (see ClusteringReport for meanings)."""

    acc: Fraction = Field(description="Hungarian accuracy, in [0, 1]; null without labels")
    nmi: Fraction = Field(description="normalised mutual information, in [0, 1]; null without labels")
    ari: Fraction = Field(description="adjusted Rand index, in [-1, 1]; null without labels")
    ece: Fraction = Field(description="expected calibration error, in [0, 1]; null without labels")
    many_to_one_acc: Fraction = Field(description="majority-class accuracy, in [0, 1]; null without labels")
    mean_confidence: Fraction = Field(description="mean max probability, in [0, 1]")
    cluster_sizes: list[int] = Field(description="images per cluster, K values")


class FinalCleanSet(Block):
    """A run's final clean set."""

    size: int = Field(description="images in the clean set")
    precision: Fraction = Field(description="labels only: precision, in [0, 1]")
    recall: Fraction = Field(description="labels only: recall, in [0, 1]")
    f1: Fraction = Field(description="labels only: F1, in [0, 1]")


class RunEntry(Block):
    """One refinement run of the job (one per seed)."""

    index: int = Field(description="0-based run index")
    seed: int = Field(description="the run's refinement seed")
    refined: RunReport = Field(description="the run's refined figures")
    robustness: RobustnessReport = Field(description="the run's ensemble under attack")
    agreement: float = Field(description="aligned agreement with the base, in [0, 1]")
    collapse: Collapse = Field(description="the run's collapse signs")
    final_clean_set: FinalCleanSet = Field(description="the run's final clean set")


class SummaryFigure(Block):
    """One figure over the runs."""

    mean: float | None = Field(description="mean over runs; null when any run lacks it")
    std: float | None = Field(description="sample standard deviation (ddof 1); null for one run")
    values: list[float | None] = Field(description="each run's value, in run order")


class BestRun(Block):
    """The run whose ensemble, assignments and top-level figures the job returns."""

    index: int = Field(description="0-based index of the chosen run")
    seed: int = Field(description="its seed")
    criterion: str = Field(description="how it was chosen (label-free)")
    consensus: list[float | None] = Field(
        description="each run's mean ARI to the other runs; null for one run"
    )
    quiet: list[bool] = Field(description="per run: no collapse sign fired")


class PreflightTry(Block):
    """One batch size the memory preflight's dry run tried."""

    batch_size: int = Field(description="refine.batch_size of the dry run")
    measured_peak_bytes: int | None = Field(description="its measured peak, bytes; null: out of memory")
    resident_bytes: int = Field(description="what the process held on the device as it started, bytes")
    estimated_peak_bytes: int | None = Field(description="the estimate at that batch, bytes")


class Preflight(Block):
    """The memory preflight before RUC (core/ruc/preflight.py): the peak a dry run measured, the limit,
    and the batch size the job trained with (also ``effective.batch_size``)."""

    device: str = Field(description="torch device of the dry run, e.g. cpu or cuda:0")
    limit_bytes: int | None = Field(
        description="memory the job may use there, bytes (CUDA: free memory, capped by "
        "RUC_DEVICE_MEMORY_BYTES; CPU: RUC_DEVICE_MEMORY_BYTES or RUC_WORKER_MEMORY_BYTES); null: none"
    )
    estimated_peak_bytes: int | None = Field(
        description="core.memory's estimate at the chosen batch (the submit check's), bytes; null when "
        "the dataset's facts do not allow one"
    )
    measured_peak_bytes: int = Field(
        description="peak of the dry run at the chosen batch, bytes: CUDA memory allocated, or the "
        "process's peak resident set on the CPU"
    )
    requested_batch_size: int = Field(description="the spec's refine.batch_size (or its data default)")
    batch_size: int = Field(description="the batch size the RUC stage trained with")
    shrunk: bool = Field(description="whether the preflight lowered the batch size")
    reason: str = Field(description="what was measured and decided, in a sentence")
    tried: list[PreflightTry] = Field(description="every dry run, largest batch first")
