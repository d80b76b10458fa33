"""``av safety``: requirement traceability, monitor diversity and the safety case.

* ``av safety trace`` builds the traceability matrix (requirements -> tests, monitors, metric
  thresholds -> latest results, and back), writes ``trace.html``, ``trace.json`` and
  ``requirements.reqif`` under ``--out``, and exits 1 listing every gap (see
  :mod:`safety.trace`). Results come from ``--junit FILE`` (a pytest JUnit XML file) or
  ``--run-tests`` (runs the ``req``-marked tests now); ``--eval RUN_DIR`` checks the closed-loop
  metric thresholds against an evaluation run's ``summary.json``.
* ``av safety diversity`` prints and writes (``diversity.json``, ``diversity.html``) the static
  overlap of the registered monitors, the dependent-failure entries and the hazard coverage, and
  with ``--catches FILE`` the fault-injection statistics; exits 1 on an uncovered hazard.
* ``av safety inject --store STORE`` replays logged drives, injects corrupted plans and
  perception faults, and writes the monitors' catch matrix (``catches.json``) and rates
  (``inject.json``, see :mod:`safety.inject`); with ``--closed-loop`` the faults are injected
  into a planner driven closed-loop through the one driver with the monitors and the fallback in
  the loop (:mod:`safety.faults`), over the drives and ``--variants`` of them.
* ``av safety explain --run EVAL_DIR --store STORE --checkpoint CKPT`` explains the scenarios
  of the run that lost points (or ``--scenario ID``): sub-scores over time, every vetoed plan
  with the monitors' verdicts, the student's saliency over agents and lanes on the bird's-eye
  view (see :mod:`safety.explain`).
* ``av safety evidence`` runs ruff, mypy and pytest-cov on the safety-relevant code and writes
  the results as evidence items (``code_evidence.json``, see :mod:`safety.evidence`).
* ``av safety report`` writes the safety case (``safety_case.html``/``.json``: claims ->
  arguments -> evidence, each item with its run, date and result) beside the trace files; it
  reports open claims but exits 0 (the trace command is the gate).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from av.errors import AvError

if TYPE_CHECKING:
    from safety.diversity import StaticDiversity
    from safety.trace import Trace

PROJECT = Path(__file__).resolve().parents[2]


def _tests_dir(arg: str | None) -> Path:
    path = Path(arg) if arg else PROJECT / "tests"
    if not path.is_dir():
        raise AvError(f"{path}: no such tests directory (pass --tests DIR)")
    return path


def run_tagged_tests(tests: Path, junit: Path) -> None:
    """Run the ``req``-marked tests under ``tests`` with pytest, writing JUnit XML to ``junit``."""
    junit.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tests.parent.resolve()), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "req", "-p", "no:cacheprovider",
           f"--junitxml={junit.resolve()}", str(tests.resolve())]
    print(f"av safety trace: running {' '.join(cmd[1:])}", file=sys.stderr)
    rc = subprocess.run(cmd, cwd=tests.parent, env=env).returncode
    if rc not in (0, 1) or not junit.is_file():
        raise AvError(f"pytest on {tests} ended with exit code {rc} and no usable results ({junit})")


def _summary(run_dir: str | None) -> tuple[dict[str, Any] | None, str, str]:
    if run_dir is None:
        return None, "", ""
    from closedloop.runner import SUMMARY, read_summary

    summary = read_summary(Path(run_dir))
    if summary is None:
        raise AvError(f"{run_dir}: no {SUMMARY} (an av closedloop eval run directory is expected)")
    path = Path(run_dir) / SUMMARY
    date = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).replace(microsecond=0).isoformat()
    return summary, str(path), date


def build_project_trace(records: str | None, tests: str | None, junit: Path | None, eval_dir: str | None) -> "Trace":
    """The :class:`safety.trace.Trace` of the given (or the project's) records and tests."""
    from safety.monitors import all_monitors
    from safety.records import RECORDS_DIR, load_records
    from safety.trace import MonitorDecl, build_trace
    from safety.verification import read_junit, scan_tests

    recs = load_records(Path(records) if records else RECORDS_DIR)
    tests_dir = _tests_dir(tests)
    monitors = [MonitorDecl(m.name, type(m).__module__, tuple(m.requirements)) for m in all_monitors()]
    summary, spath, sdate = _summary(eval_dir)
    return build_trace(recs, scan_tests(tests_dir), monitors, read_junit(junit) if junit else None,
                       summary, spath, sdate)


def _junit(args: argparse.Namespace, out: Path) -> Path | None:
    """The JUnit file of ``--junit``, or of the run ``--run-tests`` makes now (None: structure only)."""
    if args.junit and args.run_tests:
        raise AvError("give either --junit FILE or --run-tests, not both")
    if not args.junit and not args.run_tests and not args.structure_only:
        raise AvError("no test results: give --junit FILE (pytest --junitxml), --run-tests, or --structure-only")
    if args.run_tests:
        junit = out / "junit.xml"
        run_tagged_tests(_tests_dir(args.tests), junit)
        return junit
    return Path(args.junit) if args.junit else None


def _trace(args: argparse.Namespace) -> int:
    from safety.outputs import write_trace

    out = Path(args.out)
    trace = build_project_trace(args.records, args.tests, _junit(args, out), args.eval)
    files = write_trace(trace, out)
    counts: dict[str, int] = {}
    for v in trace.verifications:
        key = f"{v.kind} {v.status}"
        counts[key] = counts.get(key, 0) + 1
    r = trace.records
    print(f"trace: {len(r.hazards)} hazards, {len(r.goals)} safety goals, {len(r.requirements)} requirements, "
          f"{len(trace.verifications)} verifications ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))})")
    for w in trace.warnings:
        print(f"warning: {w}")
    for g in trace.gaps:
        print(f"gap: {g}")
    print(f"wrote {', '.join(str(f) for f in files)}")
    if trace.gaps:
        print(f"av: trace failed: {len(trace.gaps)} gap(s), first: {trace.gaps[0]}", file=sys.stderr)
        return 1
    return 0


def read_catches(path: Path) -> tuple[list[str], list[str], list[list[bool]]]:
    """A catch file: ``{"monitors": [names], "events": [{"fault": str, "caught": [bool per monitor]}]}``."""
    import json

    try:
        data = json.loads(path.read_text())
        names = [str(n) for n in data["monitors"]]
        faults = [str(e["fault"]) for e in data["events"]]
        caught = [[bool(c) for c in e["caught"]] for e in data["events"]]
    except OSError as e:
        raise AvError(f"{path}: cannot read ({e.strerror or e})") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise AvError(f"{path}: not a catch file ({type(e).__name__}: {e}); expected "
                      '{"monitors": [...], "events": [{"fault": ..., "caught": [...]}]}') from None
    bad = [i for i, c in enumerate(caught) if len(c) != len(names)]
    if bad:
        raise AvError(f"{path}: event {bad[0]} has {len(caught[bad[0]])} catches for {len(names)} monitors")
    return names, faults, caught


def project_diversity(records: str | None) -> "tuple[StaticDiversity, list[str]]":
    """The static diversity of the registered monitors and the problems of the DFA records."""
    from safety.diversity import check_dependent_failure_records, profiles, static_analysis
    from safety.monitors import all_monitors
    from safety.records import RECORDS_DIR, load_records

    recs = load_records(Path(records) if records else RECORDS_DIR)
    static = static_analysis(profiles(all_monitors(), recs), [h.id for h in recs.hazards])
    return static, check_dependent_failure_records(recs, static)


def _diversity(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from av.fileio import atomic_write_bytes, atomic_write_json
    from safety.diversity import statistics_by_fault
    from safety.outputs import diversity_html

    static, problems = project_diversity(args.records)
    empirical = None
    if args.catches:
        names, faults, caught = read_catches(Path(args.catches))
        matrix = np.array(caught, dtype=bool).reshape(len(caught), len(names))
        empirical = statistics_by_fault(matrix, faults, names)
    out = Path(args.out)
    atomic_write_json(out / "diversity.json", {**static.to_dict(), "problems": problems, "empirical": empirical})
    atomic_write_bytes(out / "diversity.html", diversity_html(static, problems, empirical).encode())
    for h, pair in static.coverage.items():
        mons = ", ".join(static.monitors_per_hazard[h]) or "none"
        print(f"{h}: {'covered by ' + ' + '.join(pair) if pair else 'NOT covered by two diverse monitors'} "
              f"(monitors: {mons})")
    for p in static.pairs:
        print(f"  {p.a} + {p.b}: shared inputs [{', '.join(p.shared_inputs)}], same method {p.same_method}, "
              f"shared code [{', '.join(p.shared_code)}]")
    print(f"{len(static.entries)} dependent-failure entries")
    if empirical:
        st = empirical["all"]
        print(f"fault injection: {st['events']} hazardous events, caught by >= 1 monitor: {st['any_catch_rate']:.3f}")
        print(json.dumps(st["catch_rate"]))
    for p in problems:
        print(f"problem: {p}")
    print(f"wrote {out / 'diversity.json'}, {out / 'diversity.html'}")
    if static.uncovered or problems:
        print(f"av: diversity check failed: uncovered hazards {static.uncovered}, {len(problems)} record problem(s)",
              file=sys.stderr)
        return 1
    return 0


def _empirical(catches: str | None) -> dict | None:
    if not catches:
        return None
    import numpy as np

    from safety.diversity import statistics_by_fault

    names, faults, caught = read_catches(Path(catches))
    return statistics_by_fault(np.array(caught, dtype=bool).reshape(len(caught), len(names)), faults, names)


def _evidence(args: argparse.Namespace) -> int:
    from av.fileio import atomic_write_json
    from safety.evidence import COVERAGE_TESTS, SAFETY_CODE, code_evidence

    root = Path(args.root).resolve() if args.root else PROJECT
    paths = [p.strip() for p in args.paths.split(",") if p.strip()] if args.paths else list(SAFETY_CODE)
    tests = [t.strip() for t in args.tests.split(",") if t.strip()] if args.tests else list(COVERAGE_TESTS)
    missing = [p for p in [*paths, *tests] if not (root / p).exists()]
    if missing:
        raise AvError(f"{root}: no such path(s): {', '.join(missing)}")
    items = code_evidence(root, paths, tests)
    out = Path(args.out)
    atomic_write_json(out / "code_evidence.json", {"root": str(root), "evidence": [e.__dict__ for e in items]})
    for e in items:
        print(f"{e.result:>13}  {e.what}  [{e.run}, {e.date}]")
    print(f"wrote {out / 'code_evidence.json'} (for av safety report --code-evidence)")
    return 0


def read_code_evidence(path: str | None) -> "list[Any] | None":
    """The evidence items of a ``code_evidence.json`` (``None`` without a path)."""
    if not path:
        return None
    import json

    from safety.case import Evidence

    try:
        data = json.loads(Path(path).read_text())
        return [Evidence(str(e["what"]), str(e["run"]), str(e["date"]), str(e["result"])) for e in data["evidence"]]
    except OSError as e:
        raise AvError(f"{path}: cannot read ({e.strerror or e})") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise AvError(f"{path}: not a code evidence file of av safety evidence ({type(e).__name__}: {e})") from None


def _explain(args: argparse.Namespace) -> int:
    import torch

    from av.fileio import atomic_write_json
    from av.keys import file_digest
    from closedloop.evaluator import reasons
    from closedloop.planner import make_planner
    from closedloop.runner import read_results, read_summary
    from safety.explain import explain_scenario
    from scenarios.store import read_store

    run = Path(args.run)
    table = read_results(run)
    if table is None:
        raise AvError(f"{run}: no results (an av closedloop eval run directory is expected)")
    rows = table.select(args.planner, args.agents)
    if len(rows) == 0:
        raise AvError(f"{run}: no results of planner {args.planner!r} with {args.agents} agents")
    inputs = [r["inputs"] for r in (read_summary(run) or {}).get("rows", [])
              if r["planner"] == args.planner and r["agents"] == args.agents]
    recorded = inputs[0].get("planner_files", {}).get("checkpoint") if inputs else None
    plan_every = int(inputs[0].get("plan_every", 1)) if inputs else 1
    if recorded and recorded != file_digest(args.checkpoint):
        raise AvError(f"{args.checkpoint}: not the checkpoint {run} evaluated (content digest differs)")
    ids = [str(i) for i in rows.column("scenario_id")]
    why = reasons({m: rows.column(m) for m in rows.metrics})
    lost = {i: w for i, w in zip(ids, why, strict=True) if w}
    wanted = args.scenario or list(lost)[: args.limit]
    unknown = [i for i in wanted if i not in ids]
    if unknown:
        raise AvError(f"{run}: no {args.planner} result for scenario(s) {', '.join(unknown)}")
    scenarios = {s.id: s for s in read_store(Path(args.store)) if s.id in wanted}
    missing = [i for i in wanted if i not in scenarios]
    if missing:
        raise AvError(f"{args.store}: no scenario(s) {', '.join(missing)} (give the store the run evaluated)")
    torch.manual_seed(0)
    planner = make_planner(args.planner, checkpoint=args.checkpoint)
    net = getattr(planner, "network", None)
    if net is None:
        raise AvError(f"planner {args.planner!r} has no network to attribute (use the student)")
    out = Path(args.out)
    index = []
    for sid in wanted:
        rec = explain_scenario(scenarios[sid], planner, net, out / sid, args.agents, args.pictures,
                               plan_every=plan_every)
        index.append({"scenario": sid, "run_lost_points": lost.get(sid, ""), "replay_lost_points": rec["lost_points"],
                      "vetoed_plans": len(rec["vetoed_plans"]), "pictures": [f"{sid}/{p}" for p in rec["pictures"]]})
        print(f"{sid}: lost points: {lost.get(sid) or 'none'}; {len(rec['vetoed_plans'])} vetoed plan(s); "
              f"{len(rec['pictures'])} picture(s) in {out / sid}")
    atomic_write_json(out / "index.json", {"run": str(run), "planner": args.planner, "agents": args.agents,
                                           "scenarios": index})
    if not wanted:
        print(f"{run}: no scenario of {args.planner} lost points; nothing to explain (give --scenario ID)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from av.fileio import atomic_write_bytes, atomic_write_json
    from safety.case import build_case, case_html
    from safety.outputs import write_trace

    out = Path(args.out)
    trace = build_project_trace(args.records, args.tests, _junit(args, out), args.eval)
    write_trace(trace, out)
    static, problems = project_diversity(args.records)
    case = build_case(trace, static, problems, _empirical(args.catches), code=read_code_evidence(args.code_evidence))
    atomic_write_json(out / "safety_case.json", case.to_dict())
    atomic_write_bytes(out / "safety_case.html", case_html(case).encode())

    def walk(c, depth=0):
        print(f"{'  ' * depth}{c.id}: {'supported' if c.supported else 'OPEN'}")
        for k in c.claims:
            if depth < 1:
                walk(k, depth + 1)

    walk(case)
    print(f"wrote {out / 'safety_case.html'}, {out / 'safety_case.json'} (and the trace files)")
    return 0


def _closed_loop(args: argparse.Namespace, scenarios: list) -> tuple[Any, dict[str, Any]]:
    """Closed-loop injection (:mod:`safety.faults`) over ``scenarios`` and ``--variants`` of them."""
    from closedloop.planner import make_planner
    from safety.faults import FAULTS, inject_closed_loop

    faults = [f.strip() for f in args.faults.split(",") if f.strip()] if args.faults else list(FAULTS)
    unknown = [f for f in faults if f not in FAULTS]
    if unknown or not faults:
        raise AvError(f"--faults: unknown fault(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(FAULTS)}")
    if args.plan_every < 1:
        raise AvError(f"--plan-every must be >= 1, got {args.plan_every}")
    make_planner(args.planner)  # an unknown planner fails here, before any work
    if args.variants:
        from scenarios.variants import generate_variants

        scenarios = [*scenarios, *generate_variants(scenarios, args.variants, args.seed)[0]]
    result, closed = inject_closed_loop(scenarios, lambda: make_planner(args.planner), faults, args.every, args.seed,
                                        plan_every=args.plan_every)
    return result, {"closed_loop": True, "planner": args.planner, "plan_every": args.plan_every,
                    "drives": len(scenarios), "variants_per_scenario": args.variants, "per_fault_closed_loop": closed}


def print_catch_table(summary: dict[str, Any]) -> None:
    """Per fault type: hazardous events, caught by any, and each monitor's catch rate."""
    per = summary["per_fault"]
    if not per:
        return
    names = list(next(iter(per.values()))["per_monitor"])
    print(f"{'fault':<14}{'events':>7}{'any':>6} " + " ".join(f"{n[:8]:>8}" for n in names))
    rows = [(f, v["hazardous"], v["caught_by_any"], v["per_monitor"]) for f, v in per.items()]
    rows.append(("all", summary["hazardous_events"], float("nan"), summary["per_monitor_catch_rate"]))
    for f, n, any_, rates in rows:
        print(f"{f:<14}{n:>7}{any_:>6.2f} " + " ".join(f"{rates[m]:>8.2f}" for m in names))


def _inject(args: argparse.Namespace) -> int:
    import json

    import torch

    from av.fileio import atomic_write_json
    from safety.diversity import statistics_by_fault
    from safety.inject import inject
    from safety.monitors import all_monitors
    from scenarios.store import read_store

    if args.every <= 0:
        raise AvError(f"--every must be > 0 s, got {args.every}")
    if args.variants < 0:
        raise AvError(f"--variants must be >= 0, got {args.variants}")
    torch.manual_seed(args.seed)
    scenarios = read_store(Path(args.store))
    if args.limit:
        scenarios = scenarios[: args.limit]
    if not scenarios:
        raise AvError(f"{args.store}: no scenarios")
    extra: dict[str, Any] = {"closed_loop": False}
    if args.closed_loop:
        result, extra = _closed_loop(args, scenarios)
    else:
        result = inject(scenarios, all_monitors, every_s=args.every, seed=args.seed)
    out = Path(args.out)
    summary = {"store": str(args.store), "scenarios": len(scenarios), "every_s": args.every, "seed": args.seed,
               **extra, **result.summary()}
    if len(result.faults):
        summary["diversity"] = statistics_by_fault(result.caught, result.faults, result.monitors)
    atomic_write_json(out / "catches.json", result.catches_json())
    atomic_write_json(out / "inject.json", summary)
    print_catch_table(summary)
    print(json.dumps({k: summary[k] for k in ("scenarios", "hazardous_events", "hazardous_injected_plans",
                                              "injected_plans_vetoed_by_any", "fallback_applied",
                                              "fallback_collides_within_horizon")}))
    print("catch rate per monitor: " + json.dumps({k: None if v is None else round(v, 3)
                                                   for k, v in summary["per_monitor_catch_rate"].items()}))
    print("false alarms on human plans: " + json.dumps({k: round(v, 3) for k, v in
                                                        summary["false_alarm_rate_on_human_plans"].items()}))
    print(f"wrote {out / 'catches.json'} (for av safety diversity --catches), {out / 'inject.json'}")
    missed = summary["injected_plans_vetoed_by_any"]
    if missed is not None and missed < 1.0:
        print(f"av: fault injection: only {missed:.3f} of the colliding injected plans were vetoed", file=sys.stderr)
        return 1
    unprotected = [f for f, v in summary.get("per_fault_closed_loop", {}).items()
                   if v["fallback_drove_at_vetoed"] != v["vetoed"]]
    if unprotected:
        print(f"av: fault injection: vetoed plans without the fallback driving under {', '.join(unprotected)}",
              file=sys.stderr)
        return 1
    return 0


def safety_stage(stores: list[Path], eval_dir: Path | None, out: Path, seed: int = 0, planner: str = "idm",
                 every_s: float = 1.0, plan_every: int = 5) -> dict[str, Any]:
    """The pipeline's safety stage: closed-loop fault injection (:mod:`safety.faults`, every
    fault type, ``planner`` as the base) over the drives of ``stores`` (``out/inject``), the
    diversity analysis with its catches (``out/diversity``), and the safety case with the trace
    structure and the eval run's metric thresholds (``out/report``; the test results come from
    ``av safety report --run-tests``). Returns the injection summary."""
    from av.fileio import atomic_write_bytes, atomic_write_json
    from closedloop.planner import make_planner
    from safety.case import build_case, case_html
    from safety.diversity import statistics_by_fault
    from safety.faults import inject_closed_loop
    from safety.outputs import diversity_html, write_trace
    from scenarios.store import read_store

    scenarios = [s for store in stores for s in read_store(store)]
    result, closed = inject_closed_loop(scenarios, lambda: make_planner(planner), every_s=every_s, seed=seed,
                                        plan_every=plan_every)
    summary = {"closed_loop": True, "planner": planner, "drives": len(scenarios), "per_fault_closed_loop": closed,
               **result.summary()}
    empirical = (statistics_by_fault(result.caught, result.faults, result.monitors) if len(result.faults) else None)
    atomic_write_json(out / "inject" / "catches.json", result.catches_json())
    atomic_write_json(out / "inject" / "inject.json", {**summary, "diversity": empirical})
    static, problems = project_diversity(None)
    atomic_write_json(out / "diversity" / "diversity.json", {**static.to_dict(), "problems": problems,
                                                              "empirical": empirical})
    atomic_write_bytes(out / "diversity" / "diversity.html", diversity_html(static, problems, empirical).encode())
    trace = build_project_trace(None, None, None, str(eval_dir) if eval_dir else None)
    write_trace(trace, out / "report")
    case = build_case(trace, static, problems, empirical)
    atomic_write_json(out / "report" / "safety_case.json", case.to_dict())
    atomic_write_bytes(out / "report" / "safety_case.html", case_html(case).encode())
    return summary


def _evidence_args(p: argparse.ArgumentParser) -> None:
    """The arguments ``trace`` and ``report`` share: records, tests and their results, eval run."""
    p.add_argument("--records", default=None, help="records directory (default: the project's safety/requirements)")
    p.add_argument("--tests", default=None, help="tests directory scanned for @pytest.mark.req (default: the project's)")
    p.add_argument("--junit", default=None, help="JUnit XML of the latest test run (pytest --junitxml)")
    p.add_argument("--run-tests", action="store_true", help="run the req-marked tests now and use their results")
    p.add_argument("--structure-only", action="store_true",
                   help="records and declarations only, without test results (their evidence stays open)")
    p.add_argument("--eval", default=None, metavar="RUN_DIR", help="closed-loop eval run to check metric thresholds")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("safety", help="requirement traceability, monitor diversity, safety case")
    cmds = p.add_subparsers(dest="safety_command", metavar="COMMAND", required=True)
    t = cmds.add_parser("trace", help="traceability matrix both ways; exits 1 on any gap")
    _evidence_args(t)
    t.add_argument("--out", default="runs/safety/trace", help="output directory (default: runs/safety/trace)")
    t.set_defaults(func=_trace)
    d = cmds.add_parser("diversity", help="monitor overlap, dependent failures, hazard coverage (exit 1 if uncovered)")
    d.add_argument("--records", default=None, help="records directory (default: the project's)")
    d.add_argument("--catches", default=None, help="fault-injection catch file (JSON) for the empirical statistics")
    d.add_argument("--out", default="runs/safety/diversity", help="output directory (default: runs/safety/diversity)")
    d.set_defaults(func=_diversity)
    i = cmds.add_parser("inject", help="fault injection on logged drives: catch matrix of the monitors (exit 1 if a "
                                       "colliding injected plan passes every monitor)")
    i.add_argument("--store", required=True, help="scenario store (av data import)")
    i.add_argument("--every", type=float, default=1.0, help="seconds between injection points (default: 1)")
    i.add_argument("--limit", type=int, default=0, help="use only the first N scenarios (default: all)")
    i.add_argument("--seed", type=int, default=0, help="seed of the perception noise (default: 0)")
    i.add_argument("--closed-loop", action="store_true",
                   help="inject the faults closed-loop through the driver (monitors + fallback in the loop)")
    i.add_argument("--planner", default="idm",
                   help="closed loop: the base planner faults are injected into (default: idm)")
    i.add_argument("--faults", default=None, help="closed loop: comma-separated fault types (default: all)")
    i.add_argument("--plan-every", type=int, default=5, help="closed loop: plan every k 10 Hz steps (default: 5)")
    i.add_argument("--variants", type=int, default=0,
                   help="closed loop: also drive N variants per scenario (default: 0)")
    i.add_argument("--out", default="runs/safety/inject", help="output directory (default: runs/safety/inject)")
    i.set_defaults(func=_inject)
    r = cmds.add_parser("report", help="HTML safety case: claims -> arguments -> evidence (run, date, result)")
    _evidence_args(r)
    r.add_argument("--catches", default=None, help="fault-injection catch file (JSON) for the diversity evidence")
    r.add_argument("--code-evidence", default=None,
                   help="code_evidence.json of av safety evidence (lint, types, coverage)")
    r.add_argument("--out", default="runs/safety/report", help="output directory (default: runs/safety/report)")
    r.set_defaults(func=_report)
    x = cmds.add_parser("explain", help="explain vetoed plans and lost points of an eval run: sub-scores over time, "
                                        "monitor verdicts, the student's attribution on the bird's-eye view")
    x.add_argument("--run", required=True, help="av closedloop eval run directory")
    x.add_argument("--store", required=True, help="the scenario store the run evaluated")
    x.add_argument("--checkpoint", required=True, help="the student checkpoint the run evaluated")
    x.add_argument("--planner", default="student", help="the run's planner name (default: student)")
    x.add_argument("--agents", default="log", choices=("log", "idm"),
                   help="agent mode of the run's rows (default: log)")
    x.add_argument("--scenario", action="append", default=[], help="scenario ID (repeatable; default: those that "
                                                                    "lost points)")
    x.add_argument("--limit", type=int, default=3, help="at most N scenarios that lost points (default: 3)")
    x.add_argument("--pictures", type=int, default=4, help="attribution pictures per scenario (default: 4)")
    x.add_argument("--out", default="runs/safety/explain", help="output directory (default: runs/safety/explain)")
    x.set_defaults(func=_explain)
    e = cmds.add_parser("evidence", help="run lint (ruff), type check (mypy) and coverage (pytest-cov) on the "
                                         "safety-relevant code; the results become safety-case evidence")
    e.add_argument("--root", default=None, help="project root (default: this checkout)")
    e.add_argument("--paths", default=None, help="comma-separated files/packages checked (default: monitors, runtime, "
                                                 "evaluator)")
    e.add_argument("--tests", default=None, help="comma-separated test files run for coverage (default: theirs)")
    e.add_argument("--out", default="runs/safety/evidence", help="output directory (default: runs/safety/evidence)")
    e.set_defaults(func=_evidence)
