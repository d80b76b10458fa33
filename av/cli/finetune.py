"""``av closedloop train``: closed-loop fine-tuning of the student (DAgger, :mod:`closedloop.finetune`).

Registered into the ``closedloop`` group by :func:`register` (``av/cli/closedloop.py`` calls it
with its sub-parsers). Writes ``RUN/iter-NNN/`` per iteration, ``RUN/report.json``,
``RUN/report.html``, ``RUN/scores.png`` and ``RUN/fixed/*.gif`` (failures fixed, before and
after); rerunning the same command continues a killed run. Rollouts and labelling run
in-process, or as Ray tasks with ``--ray local`` / ``--ray ADDRESS``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from av.cli.args import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``closedloop`` group's sub-parsers ``sub``."""
    from closedloop.finetune_config import FinetuneConfig

    p = sub.add_parser(
        "train", help="closed-loop fine-tuning of the student: it drives, the teacher relabels (DAgger)",
        description="Each iteration rolls the student out (mixed with the teacher), relabels the visited states "
        "with the teacher's search, fine-tunes the best student so far on all states so far (and the training "
        "drives' logged states), evaluates on training, hard-variant and held-out drives and mines variants around "
        "failures. The report draws the failures fixed. Rerun the same command to continue a killed run.")
    p.add_argument("--student", required=True, type=Path, metavar="CKPT",
                   help="starting student (av distill: RUN/student.ckpt)")
    p.add_argument("--teacher", default=None, type=Path, metavar="CKPT",
                   help="teacher network checkpoint for the search (default: rule proposals only)")
    p.add_argument("--teacher-arg", action="append", default=[], metavar="KEY=VALUE", dest="teacher_arg",
                   help="a teacher search setting (`av closedloop planners teacher` lists them); repeatable")
    p.add_argument("--store", action="append", required=True, metavar="STORE",
                   help="scenario store of drives to train on and hold out; repeat for several")
    p.add_argument("--out", required=True, type=Path, metavar="RUN", help="run directory")
    add_config_args(p, FinetuneConfig)
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from av.errors import AvError
    from closedloop.finetune import FinetuneConfig, finetune

    teacher: dict[str, str] = {}
    for item in args.teacher_arg:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AvError(f"--teacher-arg {item!r}: expected KEY=VALUE")
        teacher[key.strip()] = value.strip()
    if args.teacher is not None:
        teacher["checkpoint"] = str(args.teacher)
    report = finetune([str(s) for s in args.store], str(args.student), teacher, args.out,
                      config_from_args(FinetuneConfig, args))
    first, last = report["iterations"][0]["scores"], report["iterations"][-1]["scores"]
    for name in ("train", "hard", "heldout"):
        if first[name]["scenarios"]:
            print(f"{name}: CLS-NR {first[name]['cls_nr']:.3f} -> {last[name]['cls_nr']:.3f}, "
                  f"CLS-R {first[name]['cls_r']:.3f} -> {last[name]['cls_r']:.3f} ({first[name]['scenarios']} drives)")
    fixed = report["fixed_failures"]
    print(f"{len(fixed)} failed rollouts of iteration 0 pass at the last; "
          f"{sum(bool(f['gifs']) for f in fixed)} drawn in {args.out / 'fixed'}")
    print(f"wrote {args.out / 'report.json'}, {args.out / 'report.html'}; final student {report['final_student']}; "
          f"best on training drives and hard variants: iteration {report['best_iteration']} ({report['best_student']})")
    return 0
