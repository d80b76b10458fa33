"""The static HTML report of an evaluation run directory.

``write_report(run_dir)`` reads ``RUN_DIR/summary.json`` (written by
:mod:`closedloop.runner`) and writes ``RUN_DIR/report.html`` with

* a score table: one row per planner x agent mode (scenario count, the planner's parameter
  count and batch-1 planning latency, CLS and PDMS with their 95 % confidence intervals, every
  sub-metric mean, and the number of scenarios a mean is over where undefined values were left
  out); PDMS headings say that it covers the first 4 s;
* one bar chart per score (``RUN_DIR/figures/<metric>.png``, matplotlib Agg), with the CIs as
  error bars;
* the bird's-eye-view GIFs of each planner's worst scenarios (rendered by the runner into
  ``RUN_DIR/media/``), captioned with the reasons they lost points.

The page is self-contained apart from those image files, and has no timestamps, so the same
summary always gives the same page.
"""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from av.errors import AvError
from av.fileio import atomic_write_bytes
from closedloop.evaluator import NUPLAN_NAMES, PDMS_HORIZON_S, PDMS_NAMES

REPORT = "report.html"
FIGURES = "figures"
#: Summary keys that describe a row rather than a metric.
ROW_KEYS = ("planner", "agents", "scenarios", "store", "plan_every", "worst", "params", "latency_ms")
_HEADLINE = ("cls", "pdms")
#: Metrics shown in the score table and charted; the evaluator's other fields (counts, times,
#: bit masks) go to the details table.
SCORES = ("cls", "pdms", *[m for m in NUPLAN_NAMES + PDMS_NAMES if m not in ("cls", "pdms")], "ade", "fde")
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.key { text-align: left; font-weight: 600; }
.scroll { overflow-x: auto; }
.charts { display: flex; flex-wrap: wrap; gap: 0.5em; }
.charts img { width: 320px; border: 1px solid #eee; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; max-width: 440px; }
figure img { width: 432px; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; } .ci { color: #777; font-size: 0.85em; }
"""


def load_summary(run_dir: Path) -> dict[str, Any]:
    """The parsed ``RUN_DIR/summary.json`` (raises :class:`AvError` if absent or corrupt)."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise AvError(f"{path}: no evaluation summary (run `av closedloop eval` first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AvError(f"{path}: corrupt JSON ({e.msg}, line {e.lineno})") from None


def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    """Metric keys of the summary rows: CLS and PDMS first, then the rest in first-seen order."""
    names: list[str] = []
    for row in rows:
        for k in row:
            if k not in ROW_KEYS and not k.endswith(("_ci95", "_n")) and k not in names:
                names.append(k)
    return [m for m in _HEADLINE if m in names] + [m for m in names if m not in _HEADLINE]


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def heading(metric: str) -> str:
    """The column heading of ``metric``: PDMS and its sub-scores say that they cover the first 4 s."""
    return f"{metric} (first {PDMS_HORIZON_S:g} s)" if metric.startswith("pdms") else metric


def _label(row: dict[str, Any]) -> str:
    return f"{row['planner']} / {row['agents']}"


def _bar_chart(metric: str, rows: list[dict[str, Any]], out: Path) -> None:
    """One PNG: the mean of ``metric`` per planner x agent mode, CI95 as error bars."""
    labels = [_label(r) for r in rows]
    means = [r.get(metric) if r.get(metric) is not None else math.nan for r in rows]
    lo_err, hi_err = [], []
    for r, m in zip(rows, means):
        ci = r.get(f"{metric}_ci95")
        ok = ci is not None and None not in ci and math.isfinite(m)
        lo_err.append(max(m - ci[0], 0.0) if ok else 0.0)
        hi_err.append(max(ci[1] - m, 0.0) if ok else 0.0)
    fig = Figure(figsize=(4.0, 0.6 + 0.35 * len(rows) + 0.6), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ys = list(range(len(rows)))
    ax.barh(ys, [0.0 if math.isnan(m) else m for m in means], xerr=[lo_err, hi_err], color="#3b75c4",
            ecolor="#333", capsize=3)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(heading(metric), fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(out, buf.getvalue())


def _score_table(rows: list[dict[str, Any]], metrics: list[str], with_cost: bool = False) -> str:
    """One row per planner x agent mode; ``with_cost``: also parameter count and latency (ms)."""
    cost = [k for k in ("params", "latency_ms") if with_cost and any(r.get(k) is not None for r in rows)]
    head = "".join(f"<th>{html.escape(heading(m))}</th>" for m in ["planner", "agents", "scenarios", *cost, *metrics])
    body = []
    for r in rows:
        cells = [f'<td class="key">{html.escape(str(r["planner"]))}</td>',
                 f'<td class="key">{html.escape(str(r["agents"]))}</td>', f"<td>{r['scenarios']}</td>"]
        cells += [f"<td>{_fmt(r.get(k))}</td>" for k in cost]
        for m in metrics:
            ci = r.get(f"{m}_ci95")
            ci_txt = f'<br><span class="ci">[{_fmt(ci[0])}, {_fmt(ci[1])}]</span>' if ci else ""
            n = r.get(f"{m}_n")
            n_txt = f'<br><span class="ci">n = {n}</span>' if n is not None and n != r["scenarios"] else ""
            cells.append(f"<td>{_fmt(r.get(m))}{ci_txt}{n_txt}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def _worst_section(rows: list[dict[str, Any]], run_dir: Path) -> str:
    parts = []
    for r in rows:
        worst = r.get("worst") or []
        if not worst:
            continue
        figs = []
        for w in worst:
            reasons = w.get("reasons") or ["no points lost"]
            items = "".join(f"<li>{html.escape(str(x))}</li>" for x in reasons)
            img = w.get("gif")
            pic = (f'<img src="{html.escape(img)}" alt="{html.escape(w["scenario_id"])}">'
                   if img and (run_dir / img).is_file() else "<p>(no picture)</p>")
            figs.append(
                f"<figure>{pic}<figcaption><b>{html.escape(w['scenario_id'])}</b> "
                f"CLS {_fmt(w.get('cls'))}, PDMS {_fmt(w.get('pdms'))} (first {PDMS_HORIZON_S:g} s only)"
                f"<ul>{items}</ul></figcaption></figure>"
            )
        parts.append(f"<h3>{html.escape(_label(r))}</h3>" + "".join(figs))
    return "".join(parts) or "<p>No rendered scenarios.</p>"


def write_report(run_dir: str | Path) -> Path:
    """(Re)write ``RUN_DIR/report.html`` and its bar charts from ``RUN_DIR/summary.json``."""
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    rows = list(summary.get("rows", []))
    metrics = metric_names(rows)
    scores = [m for m in metrics if m in SCORES]
    details = [m for m in metrics if m not in SCORES]
    charts = []
    for m in scores:
        rel = f"{FIGURES}/{m}.png"
        _bar_chart(m, rows, run_dir / rel)
        charts.append(f'<img src="{html.escape(rel)}" alt="{html.escape(m)}">')
    page = (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Closed-loop evaluation</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>Closed-loop evaluation</h1><p>{html.escape(str(run_dir.resolve().name))}: "
        f"{len(rows)} planner x agent-mode runs. CLS: nuPlan closed-loop score over the whole simulated drive; "
        f"PDMS: NAVSIM PDM score, which covers only the first {PDMS_HORIZON_S:g} s of the simulated drive "
        "(so a drive can score PDMS 1 and still collide later); "
        "brackets: 95 % bootstrap confidence interval of the mean over scenarios; n: the number of "
        "scenarios a mean is over where it is not all of them (undefined values are left out).</p>"
        f"<h2>Scores</h2>{_score_table(rows, scores, with_cost=True)}"
        f"<h2>Metrics</h2><div class=\"charts\">{''.join(charts)}</div>"
        f"<h2>Worst scenarios</h2>{_worst_section(rows, run_dir)}"
        f"<h2>Details</h2><p>Means over scenarios of the evaluator's other fields.</p>{_score_table(rows, details)}"
        "</body></html>\n"
    )
    out = run_dir / REPORT
    atomic_write_bytes(out, page.encode())
    return out
