"""``av train teacher`` and ``av distill``: train the teacher network by imitation of logged
drives, then distill it into the student. Both register here (one module, two top-level
commands) and write a run directory: ``RUN/<name>.ckpt``, ``RUN/<name>.json`` (parameter count,
training time, held-out scenes, last validation metrics), ``RUN/checkpoints/<name>/last.ckpt``
(for ``--resume``) and ``RUN/logs/<name>/metrics.csv``.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

from av.cli.args import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    from av.nets import TEACHER_PRESETS, StudentConfig
    from distill.config import DataConfig, DistillLossConfig, OptimConfig, TrainerConfig

    p = sub.add_parser("train", help="train networks (the teacher)")
    s = p.add_subparsers(dest="train_command", metavar="COMMAND", required=True)
    te = s.add_parser("teacher", help="train the teacher network by imitation of the logged drives",
                      description="Writes RUN/teacher.ckpt (Lightning checkpoint, loads with weights_only=True).")
    _data_args(te, DataConfig)
    te.add_argument("--preset", choices=sorted(TEACHER_PRESETS), default="default",
                    help="teacher size: default (CPU, minutes) or large (GPU) (default: default)")
    add_config_args(te, OptimConfig)
    add_config_args(te, TrainerConfig)
    te.set_defaults(func=_train_teacher)

    d = sub.add_parser("distill", help="distill a teacher into the small student network",
                       description="Labels the stores' states with the teacher (cached), trains the student "
                       "on its plans and scores and writes RUN/student.ckpt.")
    d.add_argument("--teacher", required=True, type=Path, metavar="CKPT", help="teacher checkpoint (RUN/teacher.ckpt)")
    d.add_argument("--labeller", choices=("search", "network"), default="search",
                   help="search: the teacher planner's search (proposals simulated and scored); "
                   "network: the teacher network's most confident proposal (default: search)")
    _data_args(d, DataConfig)
    add_config_args(d, StudentConfig, skip=("horizon",))
    add_config_args(d, DistillLossConfig)
    add_config_args(d, OptimConfig)
    add_config_args(d, TrainerConfig)
    d.set_defaults(func=_distill)


def _data_args(p: argparse.ArgumentParser, cls: type) -> None:
    p.add_argument("--store", action="append", required=True, metavar="STORE",
                   help="scenario store (logged drives, variants, synthetic drives); repeat for several")
    p.add_argument("--out", required=True, type=Path, metavar="RUN", help="run directory")
    p.add_argument("--val-scenes", default="", metavar="NAME[,NAME...]",
                   help="scene names held out for validation (default: the last scene name in sorted order)")
    add_config_args(p, cls, skip=("stores", "val_scenes", "seed"))


def _data_config(args: argparse.Namespace) -> Any:
    from distill.data import DataConfig

    val = tuple(n.strip() for n in args.val_scenes.split(",") if n.strip())
    return config_from_args(DataConfig, args, stores=tuple(str(s) for s in args.store), val_scenes=val,
                            seed=args.seed)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _report(args: argparse.Namespace, name: str, net: Any, data: Any, final: Path, seconds: float,
            extra: dict[str, Any]) -> None:
    import csv

    from av.fileio import atomic_write_json
    from av.nets import parameter_count

    metrics: dict[str, float] = {}
    log = args.out / "logs" / name / "metrics.csv"
    if log.is_file():
        for row in csv.DictReader(log.open()):
            metrics.update({k: float(v) for k, v in row.items() if k.startswith("val/") and v})
    summary = {"checkpoint": str(final), "params": parameter_count(net), "train_seconds": round(seconds, 1),
               "max_epochs": args.max_epochs, **data.split_summary(), "val_metrics": metrics, **extra}
    atomic_write_json(args.out / f"{name}.json", summary)
    shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(metrics.items()))
    print(f"wrote {final}: {summary['params']} parameters, {seconds:.0f} s, held out {', '.join(data.split.val_scenes) or 'nothing'}"
          + (f"; {shown}" if shown else ""))


def _train_teacher(args: argparse.Namespace) -> int:
    from av.nets import TEACHER_PRESETS, TeacherNet
    from av.observe import ObservationSpec
    from distill.data import ScenarioDataModule
    from distill.systems import OptimConfig, TeacherSystem
    from distill.train import TrainerConfig, fit

    trainer = config_from_args(TrainerConfig, args).validate()
    _seed(trainer.seed)
    net = TeacherNet(ObservationSpec(), TEACHER_PRESETS[args.preset])
    data = ScenarioDataModule(_data_config(args), net.spec, net.config.horizon)
    system = TeacherSystem(net, config_from_args(OptimConfig, args))
    final, seconds = fit(system, data, args.out, "teacher", trainer)
    _report(args, "teacher", net, data, final, seconds, {"preset": args.preset})
    return 0


def _distill(args: argparse.Namespace) -> int:
    from av.errors import AvError
    from av.nets import StudentConfig, StudentNet, load_network, parameter_count
    from distill.data import ScenarioDataModule
    from distill.labels import NetworkLabeller
    from distill.systems import DistillationSystem, DistillLossConfig, OptimConfig
    from distill.train import TrainerConfig, fit

    trainer = config_from_args(TrainerConfig, args).validate()
    teacher = load_network(args.teacher)
    if teacher.kind != "teacher":
        raise AvError(f"{args.teacher}: holds a {teacher.kind} network, not a teacher")
    sha = _sha256(args.teacher)
    if args.labeller == "search":  # the teacher planner's search, injected from closedloop
        from closedloop.planners.teacher import make_labeller

        labeller = make_labeller(args.teacher)
    else:
        labeller = NetworkLabeller(teacher, sha)
    _seed(trainer.seed)
    student = StudentNet(teacher.spec, config_from_args(StudentConfig, args, horizon=teacher.config.horizon))
    data = ScenarioDataModule(_data_config(args), teacher.spec, teacher.config.horizon, labeller)
    system = DistillationSystem(student, config_from_args(DistillLossConfig, args), config_from_args(OptimConfig, args),
                                teacher=teacher)
    final, seconds = fit(system, data, args.out, "student", trainer)

    _report(args, "student", student, data, final, seconds, {
        "teacher": str(args.teacher), "teacher_sha256": sha, "teacher_params": parameter_count(teacher),
        "labeller": labeller.settings, "label_cache": str(data.label_cache_path)})
    return 0


def _seed(seed: int) -> None:
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=True, verbose=False)
