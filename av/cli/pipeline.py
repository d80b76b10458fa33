"""``av pipeline``: the main job, stage by stage, resumable.

Stages (each writes under ``--out`` and is skipped when its output is already complete):
``data`` (synthesize the default dataroot unless ``--dataroot`` is given) -> ``import``
(scenario store) -> ``pictures`` (bird's-eye views of a few drives) -> ``eval`` (every
baseline planner in closed loop with log-replay and reactive agents: results, summary, HTML
report) -> ``variants`` (seeded variants of every scenario, with provenance) ->
``adversarial`` (variants that lower the IDM planner's CLS-NR while PDM-Closed still solves them).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from rich.console import Console

console = Console(stderr=True)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="run the whole job (default: on generated synthetic drives)")
    p.add_argument("--out", type=Path, default=Path("runs/pipeline"), help="output directory (default: runs/pipeline)")
    p.add_argument("--dataroot", type=Path, default=None, help="a nuScenes-format dataroot; default: synthesize one")
    p.add_argument("--version", default="v1.0-mini", help="nuScenes version folder (default: v1.0-mini)")
    p.add_argument("--drives", type=int, default=6, help="synthetic drives when no --dataroot (default: 6)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--planners", default="log_replay,constant_velocity,idm,pdm_closed",
                   help="planners evaluated in closed loop (default: all baselines)")
    p.add_argument("--variants-per-scenario", type=int, default=2, help="variants per scenario (default: 2)")
    p.add_argument("--adversarial-budget", type=int, default=32,
                   help="variants scored in the adversarial search against the IDM planner, 0 to skip (default: 32)")
    p.add_argument("--force", action="store_true", help="redo stages whose outputs exist")
    p.set_defaults(func=run)


def _stage(name: str, done: bool, force: bool, fn: Callable[[], None]) -> None:
    if done and not force:
        console.print(f"[dim]stage {name}: up to date, skipped[/dim]")
        return
    console.rule(f"stage {name}")
    fn()


def run(args: argparse.Namespace) -> int:
    from av.data.nuscenes import ImportConfig, load_nuscenes
    from av.data.synth import SynthConfig, write_synthetic_dataroot
    from av.viz import render_scenario
    from scenarios.store import read_store, store_count, write_store

    out: Path = args.out
    dataroot = args.dataroot or out / "synthetic-dataroot"
    version = args.version if args.dataroot else SynthConfig.version
    store = out / "store"
    pictures = out / "pictures"

    if args.dataroot is None:
        _stage(
            "data",
            (dataroot / version).is_dir(),
            args.force,
            lambda: write_synthetic_dataroot(dataroot, SynthConfig(drives=args.drives, seed=args.seed)),
        )
    _stage(
        "import",
        (store / "manifest.json").is_file(),
        args.force,
        lambda: write_store(store, load_nuscenes(dataroot, ImportConfig(version=version))),
    )

    def draw() -> None:
        scenarios = read_store(store)[:3]
        for s in scenarios:
            render_scenario(s, pictures / f"{s.id}.gif")
        console.print(f"{len(scenarios)} GIFs in {pictures}")

    _stage("pictures", pictures.is_dir() and any(pictures.glob("*.gif")), args.force, draw)

    evaldir = out / "eval"
    planners = [p.strip() for p in args.planners.split(",") if p.strip()]

    def evaluate() -> None:
        from closedloop.report import write_report
        from closedloop.runner import EvalConfig, run_eval

        for planner in planners:
            for agents in ("log", "idm"):
                run_eval(EvalConfig(store=store, planner=planner, out=evaldir, agents=agents,
                                    resume=not args.force, report=False, threads=1))
        write_report(evaldir)

    _stage("eval", (evaldir / "report.html").is_file(), args.force, evaluate)

    variants = out / "variants"

    def make_variants() -> None:
        from scenarios.variants import generate_variants

        parents = read_store(store)
        made, stats = generate_variants(parents, args.variants_per_scenario, args.seed)
        write_store(variants, [*parents, *made])
        console.print(f"{len(made)} variants of {len(parents)} scenarios in {variants}")

    _stage("variants", (variants / "manifest.json").is_file(), args.force, make_variants)

    adversarial = out / "adversarial"

    def search() -> None:
        import json

        from av.cli.scenarios import closedloop_scorer
        from av.fileio import atomic_write_json
        from scenarios.adversarial import adversarial_search

        parents = read_store(store)
        found, report = adversarial_search(
            parents, closedloop_scorer("log", 64, "cpu"), "idm", args.adversarial_budget, args.seed)
        used = {v.provenance.parent_id for v in found if v.provenance}
        write_store(adversarial, [*(p for p in parents if p.id in used), *found])
        atomic_write_json(adversarial / "report.json", report.as_dict())
        console.print(json.dumps(report.as_dict()))

    if args.adversarial_budget > 0:
        _stage("adversarial", (adversarial / "report.json").is_file(), args.force, search)
    _print_summary(evaldir, store_count(store))
    return 0


def _print_summary(evaldir: Path, n: int) -> None:
    import json

    from rich.table import Table

    summary = json.loads((evaldir / "summary.json").read_text())
    table = Table(title=f"closed-loop scores on {n} scenarios ({evaldir / 'report.html'})")
    for col in ("planner", "agents", "CLS", "PDMS"):
        table.add_column(col)
    for row in summary["rows"]:
        table.add_row(row["planner"], row["agents"], f"{row['cls']:.3f}", f"{row['pdms']:.3f}")
    Console().print(table)
