"""The report's figures, drawn from a job's result dict (the content of result.json).

Each function takes the result and returns a matplotlib ``Figure``, or None when the result has
nothing to draw for it (a figure that needs labels on an unlabelled job). matplotlib is imported
here only, through its object-oriented API with the Agg canvas (no pyplot, no global backend), so
importing ``core`` never loads it and drawing is safe in a worker's threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Result = dict[str, Any]
BASE_COLOUR = "#8c8c8c"
REFINED_COLOUR = "#1f77b4"
GAP_COLOUR = "#d62728"
DPI = 90
# Counts are written in the confusion cells up to this many classes; beyond, only colours.
MAX_ANNOTATED_CLASSES = 20


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def reliability(result: Result) -> Figure | None:
    """Base and refined reliability diagrams side by side: accuracy per confidence bin, the gap to
    the bin's mean confidence in red, the diagonal of perfect calibration; ECE in each title."""
    blocks = [(name, result[name]) for name in ("base", "refined")]
    if any(not block.get("reliability") for _, block in blocks):
        return None
    fig, axes = _figure(10, 4.4, ncols=2)
    for ax, (name, block) in zip(axes, blocks, strict=True):
        bins = [b for b in block["reliability"] if b["count"] and b["upper"] > b["lower"]]
        lower = [b["lower"] for b in bins]
        width = [b["upper"] - b["lower"] for b in bins]
        acc = [b["accuracy"] for b in bins]
        gap = [b["confidence"] - b["accuracy"] for b in bins]
        bar = {"width": width, "align": "edge"}
        ax.bar(lower, acc, color=REFINED_COLOUR, edgecolor="black", label="accuracy", **bar)
        ax.bar(lower, gap, bottom=acc, color=GAP_COLOUR, alpha=0.35, edgecolor=GAP_COLOUR, hatch="//",
               label="gap to confidence", **bar)  # fmt: skip
        ax.plot([0, 1], [0, 1], "--", color="black", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", ylabel="accuracy")
        ax.set_title(f"{name}: ECE {_fmt(block.get('ece'))} ({len(block['reliability'])} bins)")
        ax.legend(loc="upper left", fontsize=8)
    return fig


def confusion(result: Result) -> Figure | None:
    """Base and refined confusion matrices: rows true classes, columns the class each cluster was
    Hungarian-matched to (last column: clusters without a class), coloured by row share."""
    import numpy as np

    blocks = [(name, result[name]) for name in ("base", "refined")]
    if any(not block.get("confusion") for _, block in blocks):
        return None
    n = len(blocks[0][1]["confusion"])
    side = min(5.5, 2.5 + 0.3 * n)
    fig, axes = _figure(2 * side + 1, side, ncols=2)
    for ax, (name, block) in zip(axes, blocks, strict=True):
        table = np.asarray(block["confusion"], dtype=float)  # (C, C + 1)
        share = table / np.maximum(table.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        if n <= MAX_ANNOTATED_CLASSES:
            for (i, j), v in np.ndenumerate(table):
                if v:
                    colour = "white" if share[i, j] > 0.6 else "black"
                    ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=7, color=colour)
        ticks = list(range(table.shape[1]))
        ax.set_xticks(ticks, [*map(str, ticks[:-1]), "none"], fontsize=7)
        ax.set_yticks(range(n), [str(i) for i in range(n)], fontsize=7)
        ax.set(xlabel="matched class of the cluster", ylabel="true class")
        ax.set_title(f"{name}: accuracy {_fmt(block.get('acc'))}")
    return fig


def _attack_label(a: dict[str, Any]) -> str:
    return a["kind"] + (f" ({a['steps']} steps)" if a.get("steps") else "")


def robustness(result: Result) -> Figure | None:
    """Accuracy (with labels; else stability, the share of unchanged predictions) against eps, one
    panel per attack, base vs refined; eps = 0 is the clean accuracy (stability 1)."""
    rob = result.get("robustness") or {}
    base, refined = rob.get("base") or {}, rob.get("refined") or {}
    if not base.get("attacks") or not refined.get("attacks"):
        return None
    labelled = base.get("clean_accuracy") is not None
    key = "accuracy" if labelled else "stability"
    kinds = list(dict.fromkeys(_attack_label(a) for a in base["attacks"]))
    # pixel radii read best in 1/255 steps; feature radii are multiples of the features' std
    unit, xlabel = (
        (1.0, "eps (x mean feature std)") if base.get("space") == "features" else (255.0, "eps (x 1/255)")
    )
    fig, axes = _figure(4.6 * len(kinds), 3.8, ncols=len(kinds))
    for ax, kind in zip(axes, kinds, strict=True):
        for name, block, colour in (("base", base, BASE_COLOUR), ("refined", refined, REFINED_COLOUR)):
            points = sorted((a["eps"], a[key]) for a in block["attacks"] if _attack_label(a) == kind)
            start = block.get("clean_accuracy") if labelled else 1.0
            eps = [0.0] + [p[0] * unit for p in points]
            ys = [start] + [p[1] for p in points]
            ax.plot(eps, ys, "o-", color=colour, label=name)
        ax.set(xlabel=xlabel, ylabel=key, ylim=(0, 1.02))
        ax.set_title(f"{kind}, {rob.get('num_samples')} images")
        ax.legend(fontsize=8)
    return fig


def _series(rows: list[dict[str, Any]], key: str) -> list[tuple[int, list[float], list[float]]]:
    """(run, epochs, values) per run of the rows that have ``key``."""
    out: dict[int, tuple[list[float], list[float]]] = {}
    for r in rows:
        if r.get(key) is None:
            continue
        xs, ys = out.setdefault(int(r.get("run", 0)), ([], []))
        xs.append(r.get("run_epoch", r["epoch"]))
        ys.append(r[key])
    return [(run, xs, ys) for run, (xs, ys) in sorted(out.items())]


_TRAINING_PANELS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "losses",
        (
            ("loss_xs", "L_Xs (clean, strong aug.)"),
            ("loss_x", "L_X (clean, MixMatch)"),
            ("loss_u", "L_U (rest, MixMatch)"),
        ),
    ),
    ("clean-set size and refurbished count", (("clean_size", "clean set"), ("refurbished", "refurbished"))),
    ("lambda_u (effective)", (("lambda_u_eff", "lambda_u"),)),
    ("learning rate", (("lr", "lr"),)),
    ("precision (labels)", (("clean_precision", "clean set"), ("refurbished_precision", "refurbished"))),
)


def training(result: Result) -> Figure | None:
    """Per-epoch curves of the refinement: losses, clean-set size and refurbished count, lambda_u,
    learning rate, and the clean / refurbished precision when the job has labels; one line per run."""
    from matplotlib.ticker import MaxNLocator

    rows = result.get("per_epoch") or []
    if not rows:
        return None
    panels = [
        (title, lines)
        for title, keys in _TRAINING_PANELS
        if (lines := [(k, label, s) for k, label in keys if (s := _series(rows, k))])
    ]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = _figure(4.3 * ncols, 3.2 * nrows, ncols=ncols, nrows=nrows)
    for ax, (title, lines) in zip(axes, panels, strict=False):
        for key, label, series in lines:
            for run, xs, ys in series:
                ax.plot(xs, ys, "o-", markersize=3, label=label + (f" run {run}" if len(series) > 1 else ""))
            if key.startswith("loss"):
                ax.set_yscale("symlog", linthresh=1e-3)
        ax.set(title=title, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    return fig


def cluster_sizes(result: Result) -> Figure | None:
    """Members per cluster, base vs refined bars (refined cluster i was trained on base cluster i)."""
    import numpy as np

    base, refined = result["base"].get("cluster_sizes"), result["refined"].get("cluster_sizes")
    if not base or not refined:
        return None
    k = max(len(base), len(refined))
    x = np.arange(k)
    fig, axes = _figure(max(5.0, min(14.0, 2 + 0.45 * k)), 3.6)
    ax = axes[0]
    ax.bar(x - 0.2, np.pad(base, (0, k - len(base))), width=0.4, color=BASE_COLOUR, label="base")
    ax.bar(x + 0.2, np.pad(refined, (0, k - len(refined))), width=0.4, color=REFINED_COLOUR, label="refined")
    ax.set_xticks(x, [str(i) for i in x], fontsize=7 if k > 20 else 9)
    ax.set(xlabel="cluster", ylabel="members", title=f"cluster sizes ({k} clusters)")
    ax.legend(fontsize=8)
    return fig


def confidence(result: Result) -> Figure | None:
    """Histogram of the top-1 probability, base vs refined (label-free calibration view)."""
    blocks = [(n, result[n].get("confidence_histogram"), c) for n, c in
              (("base", BASE_COLOUR), ("refined", REFINED_COLOUR))]  # fmt: skip
    if any(not h for _, h, _ in blocks):
        return None
    fig, axes = _figure(6, 3.6)
    ax = axes[0]
    for name, hist, colour in blocks:
        edges, counts = hist["edges"], hist["counts"]
        mean = _fmt(result[name].get("mean_confidence"))
        ax.stairs(counts, edges, color=colour, linewidth=2, label=f"{name} (mean {mean})")
    ax.set(xlim=(0, 1), xlabel="confidence (max probability)", ylabel="images", title="confidence")
    ax.legend(fontsize=8)
    return fig


# name -> (draw, needs labels, caption); the order is the report's.
FIGURES: dict[str, tuple[Callable[[Result], Figure | None], bool, str]] = {
    "reliability.png": (reliability, True, "Reliability diagrams (ECE bins), base and refined"),
    "confusion.png": (confusion, True, "Confusion matrices after Hungarian matching"),
    "robustness.png": (robustness, False, "Robustness against eps per attack"),
    "training.png": (training, False, "Training curves per epoch"),
    "cluster_sizes.png": (cluster_sizes, False, "Cluster sizes, base and refined"),
    "confidence.png": (confidence, False, "Confidence histograms, base and refined"),
}


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG (Agg), at the module's DPI."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
