"""The safety case: claims -> arguments -> evidence, built from the latest trace and diversity runs.

Top claim: the student planner with its runtime monitors and fallback is acceptably safe against
the recorded hazards. It splits into one claim per safety goal, argued over the requirements
that refine it (and, where the goal is decomposed, over the ASIL decomposition with its
dependent-failure analysis), plus a claim that the monitors are diverse, one that the
traceability is complete and one on the code (lint, type check, coverage; :mod:`safety.evidence`). Every evidence item names its run (the JUnit file, eval summary, or the
analysis), its date and its result; a claim is ``supported`` only when all its evidence is good
and its sub-claims are supported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

from safety.diversity import StaticDiversity
from safety.trace import Trace, Verification

GOOD = {"passed", "active", "met", "pass"}


@dataclass(frozen=True)
class Evidence:
    """One item: ``what`` it is, the ``run`` that produced it, its ``date`` and ``result``."""

    what: str
    run: str
    date: str
    result: str

    @property
    def good(self) -> bool:
        return self.result in GOOD


@dataclass(frozen=True)
class Claim:
    """A claim, the ``argument`` that supports it, its ``evidence`` and sub-``claims``."""

    id: str
    text: str
    argument: str
    evidence: tuple[Evidence, ...] = ()
    claims: tuple["Claim", ...] = field(default_factory=tuple)

    @property
    def supported(self) -> bool:
        return all(e.good for e in self.evidence) and all(c.supported for c in self.claims) and bool(
            self.evidence or self.claims)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "argument": self.argument, "supported": self.supported,
                "evidence": [e.__dict__ | {"good": e.good} for e in self.evidence],
                "claims": [c.to_dict() for c in self.claims]}


def _evidence(v: Verification, now: str) -> Evidence:
    what = {"test": f"test {v.id}", "monitor": f"runtime monitor '{v.id}' ({v.detail})",
            "metric": f"closed-loop metric threshold {v.id} ({v.detail})"}[v.kind]
    run = v.run or ("monitor registry (safety.monitors)" if v.kind == "monitor" else "not run")
    return Evidence(what, run, v.date or (now if v.kind == "monitor" else ""), v.status)


def build_case(trace: Trace, static: StaticDiversity, problems: list[str], empirical: dict | None = None,
               now: datetime | None = None, code: Sequence[Evidence] | None = None) -> Claim:
    """The claim tree of the project's safety case; ``code``: the lint, type-check and coverage
    evidence of :func:`safety.evidence.code_evidence` (``None``: not produced, the claim stays open)."""
    stamp = (now or datetime.now(timezone.utc)).replace(microsecond=0).isoformat()
    r = trace.records

    def req_claim(rid: str) -> Claim:
        q = r.by_id[rid]
        ev = tuple(_evidence(trace.verifications[i], stamp) for i in trace.forward.get(rid, []))
        kids = tuple(req_claim(c.id) for c in r.requirements if c.parent == rid)
        return Claim(rid, f"{q.title} (ASIL {q.asil}): {q.text}",
                     f"verified by {len(ev)} item(s): tests, runtime monitors and metric thresholds that declare {rid}",
                     ev, kids)

    goals = []
    for g in r.goals:
        decs = [d for d in r.decompositions if d.parent == g.id]
        arg = f"argued over the {sum(q.parent == g.id for q in r.requirements)} requirement(s) refining {g.id}"
        ev: tuple[Evidence, ...] = ()
        if decs:
            arg += "; ASIL decomposition " + ", ".join(f"{d.id} ({' + '.join(d.children)}, dependent failures in "
                                                      f"{d.dependent_failure})" for d in decs)
            ev = tuple(Evidence(f"dependent-failure analysis {d.dependent_failure} of {d.id} checked against the "
                                "static diversity analysis", "av safety diversity", stamp,
                                "pass" if not [p for p in problems if p.startswith(f"{d.dependent_failure}:")]
                                else "fail") for d in decs)
        goals.append(Claim(g.id, f"{g.title} (ASIL {g.asil}; hazards {', '.join(g.hazards)}): {g.text}", arg, ev,
                           tuple(req_claim(q.id) for q in r.requirements if q.parent == g.id)))
    div_ev = [Evidence(f"hazard {h}: two monitors differing in inputs and method "
                       f"({' + '.join(p) if p else 'none found'})", "av safety diversity (static)", stamp,
                       "pass" if p else "fail") for h, p in static.coverage.items()]
    if empirical:
        st = empirical["all"]
        div_ev.append(Evidence(f"fault injection: {st['events']} hazardous events, caught by at least one monitor: "
                               f"{st['any_catch_rate']:.3f}", "av safety diversity --catches", stamp,
                               "pass" if st["any_catch_rate"] == 1.0 else "fail"))
    diversity = Claim("C-DIV", "The runtime monitors do not fail together", "every hazard is covered by two monitors "
                      f"that differ in inputs and method; {len(static.entries)} shared items are recorded as "
                      "dependent-failure entries", tuple(div_ev))
    trace_ev = Evidence(f"traceability matrix: {len(r.requirements)} requirements, {len(trace.verifications)} "
                        f"verifications, {len(trace.gaps)} gap(s)", "av safety trace", stamp,
                        "pass" if trace.ok else "fail")
    tracing = Claim("C-TRACE", "Every requirement is verified by current, passing evidence",
                    "the trace check finds no unverified requirement, dangling verification, failing or stale "
                    "result, or invalid ASIL decomposition", (trace_ev,))
    qm = tuple(req_claim(q.id) for q in r.requirements if q.parent is None)
    nominal = Claim("C-NOMINAL", "The student performs acceptably in nominal closed-loop driving (QM)",
                    "closed-loop metric thresholds on the evaluation run", (), qm) if qm else None
    code_ev = tuple(code) if code is not None else (
        Evidence("lint, type check and test coverage of the safety-relevant code: not produced", "av safety evidence",
                 "", "not run"),)
    code_claim = Claim("C-CODE", "The safety-relevant code (runtime monitors, vehicle runtime, evaluator) is "
                       "lint-clean, type-correct and covered by tests", "the tools are run on that code and their "
                       "results recorded (tool, version, date, result)", code_ev)
    top_kids = tuple(goals) + (diversity, tracing, code_claim) + ((nominal,) if nominal else ())
    return Claim("C-0", "The student planner, with its runtime monitors and fallback, is acceptably safe against "
                 f"the hazards {', '.join(h.id for h in r.hazards)}",
                 "argued over the safety goals (one per hazard group), the independence of the monitors and the "
                 "completeness of the verification", (), top_kids)


def case_html(case: Claim, title: str = "Safety case") -> str:
    """The claim tree as nested HTML: claim, argument, evidence table (run, date, result)."""
    from safety.html import esc, page, status, table

    def render(c: Claim) -> str:
        head = f"<b>{esc(c.id)}</b> {status('supported' if c.supported else 'open')} {esc(c.text)}"
        body = f"<p class='muted'>Argument: {esc(c.argument)}</p>"
        if c.evidence:
            body += table(["evidence", "run", "date", "result"],
                          ([esc(e.what), esc(e.run), esc(e.date), status(e.result)] for e in c.evidence))
        kids = "".join(f"<li>{render(k)}</li>" for k in c.claims)
        return head + body + (f"<ul>{kids}</ul>" if kids else "")

    return page(title, f"<ul><li>{render(case)}</li></ul>")
