"""The traceability matrix: requirements -> verifications -> latest results, and back.

:func:`build_trace` joins the records (:mod:`safety.records`), the tests that declare
requirements (:mod:`safety.verification`), the runtime monitors' declared requirement IDs and the
closed-loop metric thresholds, with the latest test run (JUnit) and evaluation run
(``summary.json``), and lists every gap. Gap kinds (:data:`GAP_KINDS`):

* ``unverified`` a requirement that no test, monitor or metric verifies;
* ``dangling`` a verification or record pointing at an ID that does not exist;
* ``failing`` a failed test, a skipped one, or a metric threshold not met (or without a result);
* ``stale`` a declared test with no result in the run, or whose file changed since the run;
* ``asil`` a child with a lower ASIL than its parent outside a valid decomposition;
* ``decomposition`` a decomposition that is not an ISO 26262-9 scheme, or has no
  dependent-failure record;
* ``uncovered`` a hazard that no safety goal addresses, or a goal without requirements.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from safety.asil import valid_decomposition
from safety.records import Records
from safety.verification import JUnitRun, TestDecl

GAP_KINDS = ("unverified", "dangling", "failing", "stale", "asil", "decomposition", "uncovered")


@dataclass(frozen=True)
class MonitorDecl:
    """A runtime monitor as a verification: its ``name``, implementation ``module`` and the
    requirement IDs it declares."""

    name: str
    module: str
    requirements: tuple[str, ...]


@dataclass(frozen=True)
class Verification:
    """One row of the backward matrix.

    ``kind``: ``test``, ``monitor`` or ``metric``; ``id``: node id, monitor name or metric record
    ID; ``status``: ``passed``, ``failed``, ``skipped``, ``stale``, ``not run`` (no JUnit given),
    ``active`` (a monitor), ``met``, ``not met``, ``not evaluated``; ``detail``: one line;
    ``run``/``date``: the result's source file and its timestamp ("" without a result).
    """

    kind: str
    id: str
    requirements: tuple[str, ...]
    status: str
    detail: str = ""
    run: str = ""
    date: str = ""


@dataclass(frozen=True)
class Gap:
    """A traceability gap: ``kind`` (one of :data:`GAP_KINDS`), the ``subject`` ID, a ``message``."""

    kind: str
    subject: str
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.subject}: {self.message}"


@dataclass(frozen=True)
class Trace:
    """The matrix both ways plus gaps and warnings (see the module docstring)."""

    records: Records
    verifications: tuple[Verification, ...]
    gaps: tuple[Gap, ...]
    warnings: tuple[str, ...] = ()
    forward: dict[str, list[int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.gaps

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: requirements with their verifications, verifications, gaps, warnings."""
        r = self.records
        reqs = []
        for item in (*r.goals, *r.requirements):
            reqs.append({
                "id": item.id, "kind": "goal" if item in r.goals else "requirement", "title": item.title,
                "text": item.text, "asil": str(item.asil), "parent": getattr(item, "parent", None),
                "hazards": list(hazards_of(r, item.id)), "file": item.path,
                "verifications": [self.verifications[i].id for i in self.forward.get(item.id, [])],
            })
        return {
            "ok": self.ok,
            "requirements": reqs,
            "hazards": [{"id": h.id, "title": h.title, "asil": str(h.asil)} for h in r.hazards],
            "verifications": [{**asdict(v), "requirements": list(v.requirements)} for v in self.verifications],
            "gaps": [asdict(g) for g in self.gaps],
            "warnings": list(self.warnings),
        }


def hazards_of(records: Records, rid: str) -> tuple[str, ...]:
    """Hazards a goal or requirement addresses: its own ``hazards``, else its parent's (upwards)."""
    seen: set[str] = set()
    item = records.traceable.get(rid)
    while item is not None and item.id not in seen:
        seen.add(item.id)
        if item.hazards:
            return item.hazards
        item = records.traceable.get(getattr(item, "parent", None) or "")
    return ()


def _structure_gaps(r: Records) -> list[Gap]:
    gaps: list[Gap] = []
    trace_ids = r.traceable
    hazard_ids = {h.id for h in r.hazards}
    for g in r.goals:
        for h in g.hazards:
            if h not in hazard_ids:
                gaps.append(Gap("dangling", g.id, f"names hazard {h}, which does not exist ({g.path})"))
        if not any(q.parent == g.id for q in r.requirements):
            gaps.append(Gap("uncovered", g.id, "safety goal without any requirement refining it"))
    for h in r.hazards:
        if not any(h.id in g.hazards for g in r.goals):
            gaps.append(Gap("uncovered", h.id, "hazard addressed by no safety goal"))
    for q in r.requirements:
        for h in q.hazards:
            if h not in hazard_ids:
                gaps.append(Gap("dangling", q.id, f"names hazard {h}, which does not exist ({q.path})"))
        if q.parent is not None and q.parent not in trace_ids:
            gaps.append(Gap("dangling", q.id, f"parent {q.parent} does not exist ({q.path})"))
            continue
        if q.parent is None:
            if q.asil.level != "QM":
                gaps.append(Gap("asil", q.id, f"ASIL {q.asil} requirement has no parent safety goal; only QM "
                                              "requirements may stand alone"))
            continue
        parent = trace_ids[q.parent]
        lower = q.asil.rank < parent.asil.rank
        if q.decomposition is None:
            if lower or q.asil.origin is not None:
                gaps.append(Gap("asil", q.id, f"ASIL {q.asil} is lower than its parent {parent.id} (ASIL {parent.asil})"
                                              " and names no decomposition; ISO 26262-9 allows a lower ASIL only as "
                                              "one of two decomposed, independent children")
                            if lower else Gap("asil", q.id, f"ASIL {q.asil} is annotated as decomposed but names no "
                                                            "decomposition"))
            continue
        dec = r.by_id.get(q.decomposition)
        if dec is None or dec not in r.decompositions:
            gaps.append(Gap("dangling", q.id, f"decomposition {q.decomposition} does not exist ({q.path})"))
        elif dec.parent != q.parent or q.id not in dec.children:
            gaps.append(Gap("asil", q.id, f"decomposition {dec.id} splits {dec.parent} into "
                                          f"{', '.join(dec.children)}, not {q.id} under {q.parent}"))
    for d in r.decompositions:
        parent = trace_ids.get(d.parent)
        children = [trace_ids.get(c) for c in d.children]
        missing = [c for c, x in zip(d.children, children) if x is None]
        if parent is None or missing:
            gaps.append(Gap("dangling", d.id, f"names {', '.join(([d.parent] if parent is None else []) + missing)}, "
                                              f"which does not exist ({d.path})"))
            continue
        why = valid_decomposition(parent.asil, [c.asil for c in children])
        if why:
            gaps.append(Gap("decomposition", d.id, f"invalid ASIL decomposition of {parent.id} (ASIL {parent.asil}): {why}"))
        dfa = r.by_id.get(d.dependent_failure or "")
        if dfa is None or dfa not in r.dependent_failures:
            what = f"names {d.dependent_failure}, which does not exist" if d.dependent_failure else "names none"
            gaps.append(Gap("decomposition", d.id, f"decomposition of {parent.id} without a dependent-failure "
                                                   f"record ({what}); the children's independence is not argued"))
        elif dfa.decomposition != d.id:
            gaps.append(Gap("decomposition", d.id, f"dependent-failure record {dfa.id} analyses {dfa.decomposition}, "
                                                   f"not {d.id}"))
    for f in r.dependent_failures:
        if f.decomposition not in {d.id for d in r.decompositions}:
            gaps.append(Gap("dangling", f.id, f"analyses decomposition {f.decomposition}, which does not exist"))
    return gaps


def _test_rows(tests: Iterable[TestDecl], junit: JUnitRun | None) -> list[tuple[Verification, Gap | None]]:
    out: list[tuple[Verification, Gap | None]] = []
    for t in tests:
        if junit is None:
            out.append((Verification("test", t.nodeid, t.requirements, "not run"), None))
            continue
        res = junit.results.get(t.nodeid)
        if res is None:
            v = Verification("test", t.nodeid, t.requirements, "stale", "no result in the test run", junit.path, junit.timestamp)
            gap = Gap("stale", t.nodeid, f"declares {', '.join(t.requirements)} but has no result in {junit.path}; "
                                         "run the tagged tests again (av safety trace --run-tests)")
        elif res.digest != t.digest:
            v = Verification("test", t.nodeid, t.requirements, "stale", "file changed since the run", junit.path, res.timestamp)
            gap = Gap("stale", t.nodeid, f"its file changed since the run of {res.timestamp or 'unknown date'} "
                                         f"({junit.path}); run the tagged tests again")
        elif res.outcome != "passed":
            v = Verification("test", t.nodeid, t.requirements, res.outcome, res.message, junit.path, res.timestamp)
            gap = Gap("failing", t.nodeid, f"{res.outcome} in {junit.path}"
                                           f"{': ' + res.message if res.message else ''} "
                                           f"(verifies {', '.join(t.requirements)})")
        elif set(res.requirements) != set(t.requirements):
            v = Verification("test", t.nodeid, t.requirements, "stale", "requirement IDs changed since the run",
                             junit.path, res.timestamp)
            gap = Gap("stale", t.nodeid, f"ran for {', '.join(res.requirements)}, now declares "
                                         f"{', '.join(t.requirements)}; run the tagged tests again")
        else:
            v = Verification("test", t.nodeid, t.requirements, "passed", "", junit.path, res.timestamp)
            gap = None
        out.append((v, gap))
    return out


def _metric_rows(r: Records, summary: dict[str, Any] | None, summary_path: str, date: str) -> list[tuple[Verification, Gap | None]]:
    out: list[tuple[Verification, Gap | None]] = []
    for m in r.metrics:
        if summary is None:
            out.append((Verification("metric", m.id, m.verifies, "not evaluated",
                                     f"{m.metric} {m.op} {m.threshold} for planner {m.planner}"), None))
            continue
        rows = [row for row in summary.get("rows", []) if row.get("planner") == m.planner]
        values = [row.get(m.metric) for row in rows]
        if not rows or any(not isinstance(x, (int, float)) for x in values):
            detail = f"no {m.metric} for planner {m.planner} in {summary_path}"
            out.append((Verification("metric", m.id, m.verifies, "not met", detail, summary_path, date),
                        Gap("failing", m.id, detail)))
            continue
        worst = min(values) if m.op == ">=" else max(values)
        met = worst >= m.threshold if m.op == ">=" else worst <= m.threshold
        detail = f"{m.metric} = {worst:.4g} (worst agent mode), required {m.op} {m.threshold}"
        out.append((Verification("metric", m.id, m.verifies, "met" if met else "not met", detail, summary_path, date),
                    None if met else Gap("failing", m.id, f"{detail} for planner {m.planner} in {summary_path}")))
    return out


def build_trace(
    records: Records,
    tests: Iterable[TestDecl],
    monitors: Iterable[MonitorDecl] = (),
    junit: JUnitRun | None = None,
    summary: dict[str, Any] | None = None,
    summary_path: str = "",
    summary_date: str = "",
) -> Trace:
    """Build the matrix and its gaps. ``junit`` ``None`` checks the structure only (tests are
    ``not run``, no result gaps); ``summary`` is a closed-loop ``summary.json`` value for the metric
    thresholds (``None``: they are ``not evaluated``, a warning)."""
    gaps = _structure_gaps(records)
    rows = _test_rows(tests, junit)
    rows += [(Verification("monitor", m.name, m.requirements, "active", m.module), None) for m in monitors]
    rows += _metric_rows(records, summary, summary_path, summary_date)
    ids = records.traceable
    forward: dict[str, list[int]] = {i: [] for i in ids}
    verifications = []
    for k, (v, gap) in enumerate(rows):
        verifications.append(v)
        if gap is not None:
            gaps.append(gap)
        if not v.requirements:
            gaps.append(Gap("dangling", v.id, f"{v.kind} verifies no requirement"))
        for rid in v.requirements:
            if rid in forward:
                forward[rid].append(k)
            else:
                gaps.append(Gap("dangling", v.id, f"{v.kind} verifies {rid}, which is not a requirement or safety goal"))
    for q in records.requirements:
        if not forward[q.id]:
            gaps.append(Gap("unverified", q.id, f"no test, monitor or metric verifies it ({q.path})"))
    warnings = []
    if junit is None:
        warnings.append("no test results given: structure checked only (use --junit FILE or --run-tests)")
    if summary is None and records.metrics:
        warnings.append(f"{len(records.metrics)} metric threshold(s) not evaluated (use --eval RUN_DIR)")
    order = {k: i for i, k in enumerate(GAP_KINDS)}
    gaps.sort(key=lambda g: (order[g.kind], g.subject))
    return Trace(records, tuple(verifications), tuple(gaps), tuple(warnings), forward)
