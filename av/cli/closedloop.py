"""``av closedloop``: closed-loop evaluation of planners on a scenario store."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from av.cli.args import add_config_args, add_planner_settings_args, planner_settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    from closedloop.runner import EvalConfig

    p = sub.add_parser("closedloop", help="closed-loop simulation and evaluation of planners")
    s = p.add_subparsers(dest="closedloop_command", metavar="COMMAND", required=True)

    ev = s.add_parser(
        "eval",
        help="simulate planners on every scenario of a store; write results, summary and report",
        description="Each planner x agent mode is simulated, scored and merged into RUN_DIR "
        "(results.parquet, summary.json, report.html) as soon as it is done.",
    )
    ev.add_argument("--planner", required=True, metavar="NAME[,NAME...]",
                    help="planner(s), comma-separated: registered names (`av closedloop planners`) "
                    "or package.module:factory")
    ev.add_argument("--agents", default="log", metavar="log|idm[,idm]",
                    help="background agents: log replay, IDM (reactive), or both comma-separated (default: log)")
    add_planner_settings_args(ev)
    ev.add_argument("--checkpoint", default=None, metavar="PATH",
                    help="checkpoint of a learned planner (teacher, student); the same as --planner-arg checkpoint=PATH")
    add_config_args(ev, EvalConfig, skip=("planner", "agents", "planner_settings"))
    ev.set_defaults(func=_eval)

    ls = s.add_parser("planners", help="list the planners and their settings (keys for --planner-arg)")
    ls.add_argument("names", nargs="*", metavar="NAME", help="only these planners (default: all registered)")
    ls.set_defaults(func=_planners)

    from av.cli.finetune import register as register_train  # av closedloop train (closed-loop fine-tuning)

    register_train(s)


def _names(value: str, option: str) -> list[str]:
    from av.errors import AvError

    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise AvError(f"{option}: give at least one name")
    return list(dict.fromkeys(names))


def _eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from av.errors import AvError
    from closedloop.planner import planner_settings
    from closedloop.runner import EvalConfig, read_summary, run_eval
    from scenarios.store import store_count

    planners = _names(args.planner, "--planner")
    modes = _names(args.agents, "--agents")
    if args.checkpoint:
        args.planner_arg = [*args.planner_arg, f"checkpoint={args.checkpoint}"]
    settings = planner_settings_from_args(planners, args)
    for name in planners:  # unknown planners and bad settings fail here, before any work
        try:
            planner_settings(name, **settings[name])
        except AvError as e:
            raise AvError(f"--planner {name}: {e}") from None
    for mode in modes:
        if mode not in ("log", "idm"):
            raise AvError(f"--agents: unknown agent mode {mode!r}; choose log or idm")
    store_count(args.store)
    base = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig)
            if f.name not in ("planner", "agents", "planner_settings")}
    runs = [(name, mode) for name in planners for mode in modes]
    for k, (name, mode) in enumerate(runs):
        # Each run commits its results; the report is drawn once, after the last one.
        last = k == len(runs) - 1
        run_eval(EvalConfig(planner=name, agents=mode, planner_settings=settings[name],
                            **{**base, "report": base["report"] and last}))

    summary = read_summary(Path(args.out)) or {"rows": []}
    table = Table(title=f"closed-loop evaluation: {args.out}")
    from closedloop.evaluator import PDMS_HORIZON_S

    pdms = f"PDMS (first {PDMS_HORIZON_S:g} s)"
    for col in ("planner", "agents", "scenarios", "CLS", "CLS 95% CI", pdms, f"{pdms} 95% CI"):
        table.add_column(col)

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for r in summary["rows"]:
        cls_ci, pdms_ci = r.get("cls_ci95") or [None, None], r.get("pdms_ci95") or [None, None]
        table.add_row(r["planner"], r["agents"], str(r["scenarios"]), num(r.get("cls")),
                      f"[{num(cls_ci[0])}, {num(cls_ci[1])}]", num(r.get("pdms")),
                      f"[{num(pdms_ci[0])}, {num(pdms_ci[1])}]")
    Console(width=120).print(table)
    Console(stderr=True).print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def _planners(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from av.settings import settings_help
    from closedloop.planner import planner_factory, planner_names, settings_type

    console = Console(width=120)
    for name in args.names or planner_names():
        cls = settings_type(planner_factory(name))
        table = Table(title=f"{name}: {cls.__name__ if cls else 'no settings'}", title_justify="left")
        for col in ("key", "type", "default", "help"):
            table.add_column(col)
        for key, type_name, default, help_ in settings_help(cls) if cls else []:
            table.add_row(key, type_name, repr(default), help_)
        console.print(table)
    return 0
