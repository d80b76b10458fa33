"""Files of ``av safety trace`` (``trace.html``, the matrix both ways; ``trace.json``;
``requirements.reqif``, ReqIF 1.2) and ``av safety diversity`` (``diversity.html``), each
written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from av.fileio import atomic_write_bytes
from safety.html import esc, page, status, table
from safety.reqif import to_reqif
from safety.trace import Trace, hazards_of

if TYPE_CHECKING:
    from safety.diversity import StaticDiversity


def trace_html(trace: Trace) -> str:
    """The matrix as one HTML page: gaps, requirement -> verifications, verification -> requirements."""
    r = trace.records
    verdict = (status("ok") + " no gaps") if trace.ok else status("gap") + f" {len(trace.gaps)} gap(s)"
    body = [f"<p>{verdict}</p>"]
    if trace.gaps:
        body.append(table(["kind", "subject", "message"],
                          ([status("gap") + " " + esc(g.kind), esc(g.subject), esc(g.message)] for g in trace.gaps)))
    if trace.warnings:
        body.append("<ul>" + "".join(f"<li class='muted'>{esc(w)}</li>" for w in trace.warnings) + "</ul>")
    body.append("<h2>Requirements &rarr; verifications</h2>")
    rows = []
    for item in (*r.goals, *r.requirements):
        vs = [trace.verifications[i] for i in trace.forward.get(item.id, [])]
        cell = "<br>".join(f"{esc(v.kind)} <code>{esc(v.id)}</code> {status(v.status)}"
                           + (f" <span class='muted'>{esc(v.detail)}</span>" if v.detail else "") for v in vs)
        rows.append([f"<b>{esc(item.id)}</b>", esc(item.asil), esc(getattr(item, 'parent', '') or ''),
                     esc(", ".join(hazards_of(r, item.id))), f"{esc(item.title)}<br><span class='muted'>{esc(item.text)}</span>",
                     cell or status("gap")])
    body.append(table(["ID", "ASIL", "parent", "hazards", "requirement", "verified by (latest result)"], rows))
    body.append("<h2>Verifications &rarr; requirements</h2>")
    body.append(table(["kind", "verification", "requirements", "status", "run", "date"],
                      ([esc(v.kind), f"<code>{esc(v.id)}</code>", esc(", ".join(v.requirements)), status(v.status),
                        esc(v.run), esc(v.date)] for v in trace.verifications)))
    body.append("<h2>Hazards</h2>")
    body.append(table(["ID", "ASIL", "hazard", "situation"],
                      ([esc(h.id), esc(h.asil), f"{esc(h.title)}<br><span class='muted'>{esc(h.text)}</span>",
                        esc(h.situation)] for h in r.hazards)))
    body.append("<h2>ASIL decompositions</h2>")
    body.append(table(["ID", "parent", "children", "dependent-failure record"],
                      ([esc(d.id), esc(d.parent), esc(", ".join(f"{c} ({r.by_id[c].asil})" if c in r.by_id else c
                                                              for c in d.children)),
                        esc(d.dependent_failure or "")] for d in r.decompositions)))
    return page("Safety traceability matrix", "".join(body))


def write_trace(trace: Trace, out: Path) -> list[Path]:
    """Write ``trace.html``, ``trace.json`` and ``requirements.reqif`` under ``out``."""
    out = Path(out)
    files = {
        out / "trace.json": (json.dumps(trace.to_dict(), indent=2) + "\n").encode(),
        out / "trace.html": trace_html(trace).encode(),
        out / "requirements.reqif": to_reqif(trace),
    }
    for path, data in files.items():
        atomic_write_bytes(path, data)
    return list(files)


def _num(x: float) -> str:
    return "n/a" if x != x else f"{x:.3g}"


def diversity_html(static: "StaticDiversity", problems: list[str], empirical: dict | None) -> str:
    """Coverage per hazard, pairwise overlap, dependent-failure entries and, where given, the
    fault-injection statistics per fault type."""
    body = ["<h2>Coverage (two monitors differing in inputs and method per hazard)</h2>"]
    body.append(table(["hazard", "monitors", "diverse pair"],
                      ([esc(h), esc(", ".join(static.monitors_per_hazard[h])),
                        status("covered") + f" {esc(' + '.join(p))}" if p else status("uncovered")]
                       for h, p in static.coverage.items())))
    if problems:
        body.append("<ul>" + "".join(f"<li>{status('fail')} {esc(p)}</li>" for p in problems) + "</ul>")
    body.append("<h2>Monitors</h2>")
    body.append(table(["monitor", "method", "inputs", "requirements", "hazards", "code (imports)"],
                      ([esc(p.name), esc(p.method), esc(", ".join(sorted(p.inputs))), esc(", ".join(p.requirements)),
                        esc(", ".join(sorted(p.hazards))), esc(", ".join(sorted(p.code)))] for p in static.profiles)))
    body.append("<h2>Pairs covering a common hazard</h2>")
    body.append(table(["pair", "hazards", "shared inputs", "same method", "shared code", "input / code Jaccard", "diverse"],
                      ([esc(f"{p.a} + {p.b}"), esc(", ".join(p.hazards)), esc(", ".join(p.shared_inputs)),
                        esc(p.same_method), esc(", ".join(p.shared_code)),
                        f"{p.input_jaccard:.2f} / {p.code_jaccard:.2f}", status("pass" if p.diverse else "fail")]
                       for p in static.pairs)))
    body.append(f"<h2>Dependent-failure entries ({len(static.entries)})</h2>")
    body.append(table(["pair", "hazards", "kind", "shared item"],
                      ([esc(f"{e.a} + {e.b}"), esc(", ".join(e.hazards)), esc(e.kind), esc(e.item)] for e in static.entries)))
    if empirical:
        body.append("<h2>Fault injection</h2>")
        for fault, st in empirical.items():
            body.append(f"<h3>{esc(fault)}: {st['events']} hazardous events, caught by at least one monitor: "
                        f"{_num(st['any_catch_rate'])}</h3>")
            body.append(table(["monitor", "catch rate"], ([esc(m), _num(r)] for m, r in st["catch_rate"].items())))
            body.append(table(["pair", "joint misses", "joint-miss rate", "upper 95 %", "Yule's Q", "lift"],
                              ([esc(f"{p['a']} + {p['b']}"), str(p["joint_miss"]), _num(p["joint_miss_rate"]),
                                _num(p["joint_miss_upper95"]), _num(p["yules_q"]), _num(p["lift"])] for p in st["pairs"])))
    return page("Runtime monitor diversity", "".join(body))
