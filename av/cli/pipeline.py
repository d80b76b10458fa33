"""``av pipeline``: the main job, stage by stage, each stage keyed by what it is made from.

Stages: ``data`` (synthesize the default dataroot unless ``--dataroot`` is given) -> ``import``
(scenario store) -> ``pictures`` (bird's-eye views of a few drives) -> ``variants`` (seeded
variants of every scenario, with provenance) -> ``adversarial`` (variants that lower the IDM
planner's CLS-NR while PDM-Closed still solves them) -> ``teacher`` (``av train teacher`` on
the drives and their variants) -> ``distill`` (``av distill``: the student) -> ``finetune``
(``av closedloop train``: a short closed-loop fine-tuning of the student, its report; from here on
"the student" is its best iteration by the training drives' scores) -> ``export``
(``av export onnx``: the student as ONNX with its parity-checked manifest) -> ``eval`` (every
baseline planner, the teacher and the student in closed loop with log-replay and reactive
agents: results, summary, HTML report) -> ``safety`` (closed-loop fault injection over the
drives and variants with the monitors and fallback in the loop, monitor diversity, the safety
case). ``--no-learned`` leaves out teacher, distill, finetune and export; ``--no-safety`` the
safety stage.

Each stage records its inputs (settings, seeds, the content digest of the store or checkpoint
it reads, the package version) in ``OUT/stages/<stage>.json`` (:class:`av.keys.Manifest`) and
is redone exactly when they changed: a stage made from other inputs is removed and redone, one
that was interrupted continues (training from its last epoch, evaluation from its last
finished batch), one whose inputs are unchanged is skipped. The evaluation is redone per
planner x agent mode (each keyed by :func:`closedloop.runner.run_inputs`), so changing one
planner's setting re-evaluates that planner and nothing else; changing ``--drives`` redoes
``data``, ``import`` and everything that reads the new store.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from av.cli.args import add_planner_settings_args, planner_settings_from_args

console = Console(stderr=True)
STAGES = "stages"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="run the whole job (default: on generated synthetic drives)")
    p.add_argument("--out", type=Path, default=Path("runs/pipeline"), help="output directory (default: runs/pipeline)")
    p.add_argument("--dataroot", type=Path, default=None, help="a nuScenes-format dataroot; default: synthesize one")
    p.add_argument("--version", default="v1.0-mini", help="nuScenes version folder (default: v1.0-mini)")
    p.add_argument("--drives", type=int, default=6, help="synthetic drives when no --dataroot (default: 6)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--planners", default="log_replay,constant_velocity,idm,pdm_closed",
                   help="baseline planners evaluated in closed loop (default: all baselines)")
    add_planner_settings_args(p)
    p.add_argument("--pictures", type=int, default=3, help="drives drawn in the pictures stage, 0 to skip (default: 3)")
    p.add_argument("--worst", type=int, default=3,
                   help="worst scenarios rendered per planner and agent mode in the eval stage (default: 3)")
    p.add_argument("--variants-per-scenario", type=int, default=2, help="variants per scenario (default: 2)")
    p.add_argument("--adversarial-budget", type=int, default=32,
                   help="variants scored in the adversarial search against the IDM planner, 0 to skip (default: 32)")
    p.add_argument("--learned", action=argparse.BooleanOptionalAction, default=True,
                   help="train the teacher, distill the student, export it to ONNX and evaluate both (default: on)")
    p.add_argument("--teacher-epochs", type=int, default=2, help="teacher training epochs (default: 2)")
    p.add_argument("--student-epochs", type=int, default=2, help="student distillation epochs (default: 2)")
    p.add_argument("--teacher-plan-every", type=int, default=10,
                   help="the teacher's search replans every k 10 Hz steps in the eval stage (default: 10, 1 Hz)")
    p.add_argument("--labeller", choices=("search", "network"), default="network",
                   help="distillation labels: the teacher's search or its network (default: network)")
    p.add_argument("--finetune-iterations", type=int, default=1,
                   help="closed-loop fine-tuning (DAgger) iterations of the student, 0 to skip (default: 1)")
    p.add_argument("--safety", action=argparse.BooleanOptionalAction, default=True,
                   help="closed-loop fault injection, monitor diversity and the safety case (default: on)")
    p.add_argument("--force", action="store_true", help="redo every stage even if its inputs are unchanged")
    p.set_defaults(func=run)


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in {*old, *new} if old.get(k) != new.get(k))


def stage(out: Path, name: str, outputs: list[Path], inputs: dict[str, Any], force: bool,
          fn: Callable[[], None], incremental: bool = False) -> bool:
    """Run stage ``name`` unless ``OUT/stages/<name>.json`` says ``outputs`` were made from the
    same ``inputs``; return whether it ran. Outputs made from other inputs are removed first,
    unless the stage is ``incremental`` (it keys its own parts and keeps those still valid)."""
    from av import __version__
    from av.keys import Manifest, needs_work

    inputs = {**inputs, "av_version": __version__}
    path = out / STAGES / f"{name}.json"
    redo, resume = needs_work(path, inputs)
    if not (redo or force) and all(p.exists() for p in outputs):
        console.print(f"[dim]stage {name}: up to date, skipped[/dim]")
        return False
    old = Manifest.read(path)
    new = Manifest.of(inputs)
    if force:
        why, resume = "forced", False
    elif resume:
        why = "resuming an interrupted run"
    elif old is None:
        why = "new"
    elif old.key == new.key:
        why = "outputs missing"
    else:
        why = "inputs changed: " + ", ".join(_changed(old.inputs, new.inputs))
    console.print(f"stage {name}: running ({why})")
    console.rule(f"stage {name}")
    if not resume and (force or not incremental):
        for p in outputs:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    new.write(path)
    start = time.perf_counter()
    fn()
    Manifest.of(inputs, complete=True).write(path)
    logging.getLogger(__name__).info("stage %s: done in %.1f s", name, time.perf_counter() - start)
    return True


def _cli(argv: list[str]) -> None:
    """Run another ``av`` command in this process (its options are its interface)."""
    from av.cli.main import build_parser

    args = build_parser().parse_args(argv)
    args.func(args)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from av.data.nuscenes import ImportConfig, load_nuscenes
    from av.data.synth import SynthConfig, write_synthetic_dataroot
    from av.errors import AvError
    from av.keys import stat_digest, tree_digest
    from av.viz import render_scenario
    from closedloop.planner import planner_settings
    from scenarios.store import read_store, store_count, write_store

    out: Path = args.out
    dataroot = args.dataroot or out / "synthetic-dataroot"
    version = args.version if args.dataroot else SynthConfig.version
    store = out / "store"
    pictures = out / "pictures"
    planners = [p.strip() for p in args.planners.split(",") if p.strip()]
    if not planners:
        raise AvError("--planners: give at least one planner")
    for option in ("pictures", "worst", "variants_per_scenario", "adversarial_budget", "finetune_iterations"):
        if getattr(args, option) < 0:
            raise AvError(f"--{option.replace('_', '-')} must be >= 0, got {getattr(args, option)}")
    for option in ("drives", "teacher_epochs", "student_epochs", "teacher_plan_every"):
        if getattr(args, option) < 1:
            raise AvError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    settings = planner_settings_from_args(planners, args)
    for name in planners:  # unknown planners and bad settings fail here, before any work
        try:
            planner_settings(name, **settings[name])
        except AvError as e:
            raise AvError(f"--planners {name}: {e}") from None

    if args.dataroot is None:
        synth = SynthConfig(drives=args.drives, seed=args.seed)
        stage(out, "data", [dataroot], {"synth": dataclasses.asdict(synth)}, args.force,
              lambda: write_synthetic_dataroot(dataroot, synth))

    imp = ImportConfig(version=version)

    def raw_digest() -> str | None:
        """The dataroot's tables and maps by file sizes and times (``None`` where absent: the
        import stage then reports the missing dataroot)."""
        tables = dataroot / version
        if not tables.is_dir():
            return None
        maps = dataroot / "maps"
        return stat_digest(tables) + (stat_digest(maps) if maps.is_dir() else "")

    stage(out, "import", [store], {"dataroot": str(dataroot), "dataroot_digest": raw_digest(),
                                   "import": dataclasses.asdict(imp)}, args.force,
          lambda: write_store(store, load_nuscenes(dataroot, imp)))
    scenes = {"store_digest": tree_digest(store)}

    def draw() -> None:
        scenarios = read_store(store)[: args.pictures]
        for s in scenarios:
            render_scenario(s, pictures / f"{s.id}.gif")
        console.print(f"{len(scenarios)} GIFs in {pictures}")

    if args.pictures > 0:
        stage(out, "pictures", [pictures], {**scenes, "count": args.pictures}, args.force, draw)

    variants = out / "variants"

    def make_variants() -> None:
        from scenarios.variants import generate_variants

        parents = read_store(store)
        made, stats = generate_variants(parents, args.variants_per_scenario, args.seed)
        write_store(variants, [*parents, *made])
        console.print(f"{len(made)} variants of {len(parents)} scenarios in {variants}")

    stage(out, "variants", [variants], {**scenes, "per_scenario": args.variants_per_scenario, "seed": args.seed},
          args.force, make_variants)

    adversarial = out / "adversarial"
    scorer = {"agents": "log", "batch_size": 64, "device": "cpu", "planner": "idm", "reference": "pdm_closed"}

    def search() -> None:
        import json

        from av.cli.scenarios import closedloop_scorer
        from av.fileio import atomic_write_json
        from scenarios.adversarial import adversarial_search

        parents = read_store(store)
        found, report = adversarial_search(
            parents, closedloop_scorer(scorer["agents"], scorer["batch_size"], scorer["device"]), scorer["planner"],
            args.adversarial_budget, args.seed, reference_planner=scorer["reference"])
        used = {v.provenance.parent_id for v in found if v.provenance}
        write_store(adversarial, [*(p for p in parents if p.id in used), *found])
        atomic_write_json(adversarial / "report.json", report.as_dict())
        console.print(json.dumps(report.as_dict()))

    if args.adversarial_budget > 0:
        stage(out, "adversarial", [adversarial],
              {**scenes, "budget": args.adversarial_budget, "seed": args.seed, "scorer": scorer}, args.force, search)

    evaluated = [(name, settings[name], 1) for name in planners]
    if args.learned:
        evaluated += _learned(out, args, store, variants)

    evaldir = out / "eval"
    from closedloop.runner import EvalConfig, keep_runs, run_eval, run_inputs

    runs = [EvalConfig(store=store, planner=name, out=evaldir, agents=agents, planner_settings=values,
                       plan_every=every, worst=args.worst, resume=not args.force, report=False, threads=1)
            for name, values, every in evaluated for agents in ("log", "idm")]
    inputs = [run_inputs(c) for c in runs]

    def evaluate() -> None:
        from av.keys import digest
        from closedloop.report import write_report

        for config in runs:
            run_eval(config)
        keep_runs(evaldir, {digest(i) for i in inputs})
        write_report(evaldir)

    stage(out, "eval", [evaldir], {**scenes, "runs": inputs}, args.force, evaluate, incremental=True)
    if args.safety:
        _safety(out, args, variants, evaldir)
    _print_summary(evaldir, store_count(store))
    return 0


def _safety(out: Path, args: argparse.Namespace, variants: Path, evaldir: Path) -> None:
    """Stage ``safety``: closed-loop fault injection over the drives and their variants, monitor
    diversity and the safety case (:func:`av.cli.safety.safety_stage`), keyed by the variants
    store (which holds the drives too), the eval summary and the seed."""
    from av.cli.safety import safety_stage
    from av.keys import file_digest, tree_digest

    safety = out / "safety"
    settings = {"planner": "idm", "every_s": 2.0, "plan_every": 10}  # 1 Hz planning: a fast stage

    def run_safety() -> None:
        s = safety_stage([variants], evaldir, safety, args.seed, **settings)
        console.print(f"safety: {s['hazardous_events']} hazardous events over {s['drives']} drives, "
                      f"injected plans vetoed: {s['injected_plans_vetoed_by_any']}")

    stage(out, "safety", [safety], {"store_digest": tree_digest(variants), "seed": args.seed, **settings,
                                    "eval_summary": file_digest(evaldir / "summary.json")}, args.force, run_safety)


def _learned(out: Path, args: argparse.Namespace, store: Path, variants: Path
             ) -> list[tuple[str, dict[str, Any], int]]:
    """Stages ``teacher``, ``distill`` and ``export`` (the ``av train teacher``, ``av distill`` and
    ``av export onnx`` commands); returns the learned planners to evaluate with their settings
    and how often they plan (in 10 Hz steps)."""
    from av.keys import file_digest, tree_digest

    teacher, student, export = out / "teacher", out / "student", out / "export"
    data = {"stores": [tree_digest(store), tree_digest(variants)], "seed": args.seed}
    stores = ["--store", str(store), "--store", str(variants)]
    common = ["--seed", str(args.seed), "--resume", "--no-progress"]

    argv = ["train", "teacher", *stores, "--out", str(teacher), "--max-epochs", str(args.teacher_epochs), *common]
    stage(out, "teacher", [teacher], {**data, "epochs": args.teacher_epochs}, args.force, lambda: _cli(argv))
    teacher_ckpt = teacher / "teacher.ckpt"

    argv2 = ["distill", "--teacher", str(teacher_ckpt), "--labeller", args.labeller, *stores, "--out", str(student),
             "--max-epochs", str(args.student_epochs), *common]
    stage(out, "distill", [student], {**data, "teacher": file_digest(teacher_ckpt), "epochs": args.student_epochs,
                                      "labeller": args.labeller}, args.force, lambda: _cli(argv2))
    student_ckpt = _finetune(out, args, store, teacher_ckpt, student / "student.ckpt")

    argv3 = ["export", "onnx", "--checkpoint", str(student_ckpt), "--out", str(export / "student.onnx"),
             "--store", str(store), "--seed", str(args.seed)]
    stage(out, "export", [export], {"store_digest": data["stores"][0], "student": file_digest(student_ckpt),
                                    "seed": args.seed}, args.force, lambda: _cli(argv3))
    return [("teacher", {"checkpoint": str(teacher_ckpt)}, args.teacher_plan_every),
            ("student", {"checkpoint": str(student_ckpt)}, 1)]


#: ``av closedloop train`` settings of the ``finetune`` stage: few, cheap rollouts (teacher search
#: of 2 s, replanning every 1 s), a short fine-tuning, one variant mined, one fixed failure drawn.
FINETUNE_ARGS = ("--plan-every", "10", "--eval-plan-every", "2", "--label-stride", "10", "--epochs", "3",
                 "--hardest", "1", "--per-failure", "1", "--gifs", "1", "--teacher-search-steps", "20")


def _finetune(out: Path, args: argparse.Namespace, store: Path, teacher_ckpt: Path, student_ckpt: Path) -> Path:
    """Stage ``finetune``: ``av closedloop train`` of the distilled student on the drives (the last
    scene held out) into ``OUT/finetune`` (``report.html``, ``iter-NNN/student.ckpt``). Returns
    the student the later stages use: the run's best iteration (chosen by the training drives'
    and hard variants' CLS, never the held-out drive's), the distilled one where that is
    iteration 0 or the stage is off."""
    import json

    from av.keys import file_digest, tree_digest
    from closedloop.finetune import student_of

    if args.finetune_iterations == 0:
        return student_ckpt
    run = out / "finetune"
    argv = ["closedloop", "train", "--teacher", str(teacher_ckpt), "--student", str(student_ckpt), "--store", str(store),
            "--out", str(run), "--iterations", str(args.finetune_iterations), "--seed", str(args.seed),
            *FINETUNE_ARGS, "--no-progress"]
    stage(out, "finetune", [run], {"store_digest": tree_digest(store), "teacher": file_digest(teacher_ckpt),
                                   "student": file_digest(student_ckpt), "iterations": args.finetune_iterations,
                                   "seed": args.seed, "settings": list(FINETUNE_ARGS)}, args.force,
          lambda: _cli(argv))
    best = int(json.loads((run / "report.json").read_text())["best_iteration"])
    return Path(student_of(run, best, str(student_ckpt)))


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
