"""report.html: one self-contained page (figures inlined as data URIs, no external URL, no script)."""

from __future__ import annotations

import base64
import json
from html import escape
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f3f3f3}
.better{color:#1a7f37;font-weight:600}.worse{color:#b3261e}
.collapse{border:2px solid #b3261e;background:#fdecea;padding:8px 16px}
figure{margin:16px 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555}
pre{background:#f6f8fa;padding:12px;overflow:auto;font-size:12px;max-height:480px}
"""
# (key, label, higher is better); ECE is better lower.
_METRICS = (
    ("acc", "accuracy (Hungarian)", True),
    ("nmi", "NMI", True),
    ("ari", "ARI", True),
    ("ece", "ECE", False),
    ("many_to_one_acc", "many-to-one accuracy", True),
    ("mean_confidence", "mean confidence", None),
)


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return escape(str(v))


def _row(label: str, base: Any, refined: Any, higher_better: bool | None) -> str:
    cls = ""
    numbers = isinstance(base, int | float) and isinstance(refined, int | float)
    if higher_better is not None and numbers and refined != base:
        cls = "better" if (refined > base) == higher_better else "worse"
    return f'<tr><td>{escape(label)}</td><td>{_num(base)}</td><td class="{cls}">{_num(refined)}</td></tr>'


def metrics_table(result: dict[str, Any]) -> str:
    """Base vs refined: clustering figures, clean set, robustness per attack and eps."""
    base, refined = result.get("base") or {}, result.get("refined") or {}
    rows = [_row(label, base.get(k), refined.get(k), hb) for k, label, hb in _METRICS]
    clean = result.get("clean_set") or {}
    init, final = clean.get("initial") or {}, clean.get("final") or {}
    rows.append(_row("clean set size (initial / final)", init.get("size"), final.get("size"), None))
    rows.append(_row("clean set precision", init.get("precision"), final.get("precision"), True))
    rob = result.get("robustness") or {}
    rb, rr = rob.get("base") or {}, rob.get("refined") or {}
    rows.append(_row("robustness: clean accuracy", rb.get("clean_accuracy"), rr.get("clean_accuracy"), True))
    in_features = rb.get("space") == "features"
    for a, b in zip(rb.get("attacks") or [], rr.get("attacks") or [], strict=False):
        steps = f", {a['steps']} steps" if a.get("steps") else ""
        radius = f"{a['eps']:g} x feature std" if in_features else f"{a['eps'] * 255:.1f}/255"
        name = f"{a['kind']} eps {radius}{steps}"
        rows.append(_row(f"{name}: accuracy", a.get("accuracy"), b.get("accuracy"), True))
        rows.append(_row(f"{name}: stability", a.get("stability"), b.get("stability"), True))
    head = "<thead><tr><th>metric</th><th>base</th><th>refined</th></tr></thead>"
    return f"<table>{head}<tbody>{''.join(rows)}</tbody></table>"


def collapse_block(result: dict[str, Any]) -> str:
    """The collapse signs that fired, when any did (empty string otherwise)."""
    col = result.get("collapse") or {}
    if not col.get("suspected"):
        return ""
    items = "".join(f"<li>{escape(str(f.get('message', f)))}</li>" for f in col.get("fired") or [])
    returned = escape(str(col.get("returned", "")))
    return f'<div class="collapse"><h2>Collapse signs</h2><ul>{items}</ul><p>{returned}</p></div>'


def runs_table(result: dict[str, Any]) -> str:
    """With several seeds: each figure's mean, std and values over the runs, and the run chosen."""
    runs = result.get("runs") or []
    if len(runs) < 2:
        return ""
    rows = "".join(
        f"<tr><td>{escape(k)}</td><td>{_num(v.get('mean'))}</td><td>{_num(v.get('std'))}</td>"
        f"<td>{escape(', '.join(_num(x) for x in v.get('values') or []))}</td></tr>"
        for k, v in (result.get("summary") or {}).items()
    )
    best = result.get("best_run") or {}
    head = "<thead><tr><th>figure</th><th>mean</th><th>std</th><th>per run</th></tr></thead>"
    chosen = f"<p>artifacts from run {_num(best.get('index'))} (seed {_num(best.get('seed'))}): "
    return f"<h2>Runs</h2>{chosen}{escape(str(best.get('criterion', '')))}</p><table>{head}{rows}</table>"


def _timings(result: dict[str, Any]) -> str:
    t = result.get("timings") or {}
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{_num(v, 2)}</td></tr>" for k, v in t.items())
    total = sum(v for v in t.values() if isinstance(v, int | float))
    head = "<thead><tr><th>stage</th><th>seconds</th></tr></thead>"
    return f"<table>{head}{rows}<tr><th>total</th><th>{total:.2f}</th></tr></table>"


def _figure_html(name: str, caption: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="{escape(name)}"><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(caption)} ({escape(name)})</figcaption></figure>"
    )


def render(result: dict[str, Any], figures: list[tuple[str, str, bytes]], report_notes: list[str]) -> str:
    """The whole page. figures: (artifact name, caption, PNG bytes) in display order.

    report_notes: sentences about the report itself (figures left out and why), shown first.
    """
    facts = result.get("dataset") or {}
    spec = result.get("spec") or {}
    base_method = (spec.get("base") or {}).get("method", "?")
    k = len((result.get("refined") or {}).get("cluster_sizes") or []) or spec.get("num_clusters")
    unit = "images" if facts.get("has_images", True) is not False else "samples"
    title = f"RUC refinement report: {base_method} base, {k} clusters, {facts.get('count', '?')} {unit}"
    notes = [*report_notes, *(result.get("notes") or [])]
    notes_html = "".join(f"<li>{escape(str(n))}</li>" for n in notes) or "<li>none</li>"
    figs = "".join(_figure_html(*f) for f in figures) or "<p>No figure could be drawn.</p>"
    shape = f"images of {facts.get('height')}x{facts.get('width')}x{facts.get('channels')}"
    space = ((result.get("base_info") or {}).get("feature_space")) or {}
    if unit == "samples":
        shape = f"feature vectors ({space.get('name', '?')}, D = {space.get('dim', '?')})"
    info = (
        f"<p>dataset: {_num(facts.get('count'))} {escape(shape)}, labels: "
        f"{'yes' if facts.get('has_labels') else 'no'}; device: {escape(str(result.get('device', '?')))}; "
        f"clean set: {escape(str((result.get('clean_set') or {}).get('reason', '')))}</p>"
    )
    spec_json = escape(json.dumps(spec, indent=2))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>{info}{collapse_block(result)}"
        f'<h2>Notes</h2><ul id="notes">{notes_html}</ul>'
        f"<h2>Metrics</h2>{metrics_table(result)}{runs_table(result)}"
        f'<h2>Figures</h2><div id="figures">{figs}</div>'
        f"<h2>Timings</h2>{_timings(result)}"
        f"<h2>Spec</h2><pre>{spec_json}</pre></body></html>"
    )
