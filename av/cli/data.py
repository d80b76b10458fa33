"""``av data``: import logged drives, generate the synthetic default, list a store."""

from __future__ import annotations

import argparse
from pathlib import Path

from av.cli.args import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    from av.data.nuscenes import ImportConfig

    p = sub.add_parser("data", help="import, generate and list scenario data")
    s = p.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    imp = s.add_parser("import", help="read a nuScenes-format dataroot into a scenario store")
    imp.add_argument("--dataroot", type=Path, required=True, help="nuScenes dataroot (holds VERSION/ and maps/)")
    imp.add_argument("--out", type=Path, required=True, help="scenario store directory to write")
    imp.add_argument("--force", action="store_true", help="replace an existing store at --out")
    add_config_args(imp, ImportConfig)
    imp.set_defaults(func=_import)

    syn = s.add_parser("synth", help="write a synthetic nuScenes-format dataroot (the embedded default)")
    syn.add_argument("--out", type=Path, required=True, help="dataroot directory to write")
    syn.add_argument("--drives", type=int, default=8, help="number of drives (default: 8)")
    syn.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    syn.add_argument("--force", action="store_true", help="replace an existing dataroot at --out")
    syn.set_defaults(func=_synth)

    ls = s.add_parser("list", help="print the scenarios of a store as a table")
    ls.add_argument("store", type=Path, help="scenario store directory")
    ls.set_defaults(func=_list)


def check_out(out: Path, force: bool, what: str) -> None:
    """Refuse an ``--out`` that is a file, or an existing non-empty directory without ``--force``."""
    from av.errors import AvError

    if out.exists() and not out.is_dir():
        raise AvError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise AvError(f"--out {out}: a {what} is already there; pass --force to replace it")


def _import(args: argparse.Namespace) -> int:
    from rich.console import Console

    from av.data.nuscenes import ImportConfig, load_nuscenes
    from scenarios.store import write_store

    from rich.progress import MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    cfg = config_from_args(ImportConfig, args)
    check_out(args.out, args.force, "store")
    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("importing {task.description}"), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(str(args.dataroot), total=None)

        def counted():  # type: ignore[no-untyped-def]
            for s in load_nuscenes(args.dataroot, cfg):
                bar.advance(task)
                yield s

        n = write_store(args.out, counted())
    console.print(f"wrote {n} scenarios to {args.out}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from rich.console import Console

    from av.data.synth import SynthConfig, write_synthetic_dataroot
    from av.errors import AvError

    if args.drives < 1:
        raise AvError(f"--drives must be at least 1, got {args.drives}")
    check_out(args.out, args.force, "dataroot")
    root = write_synthetic_dataroot(args.out, SynthConfig(drives=args.drives, seed=args.seed))
    Console(stderr=True).print(f"wrote {args.drives} synthetic drives to {root}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from scenarios.store import iter_store

    table = Table(title=str(args.store))
    for col in ("id", "source", "location", "duration s", "agents", "lanes", "provenance"):
        table.add_column(col)
    for s in iter_store(args.store):
        prov = s.provenance
        table.add_row(
            s.id,
            f"{s.source.dataset}:{s.source.scene_name}",
            s.source.location,
            f"{s.duration:.1f}",
            str(s.num_agents),
            str(s.map.num_lanes),
            f"{prov.transform}({prov.parent_id}, seed={prov.seed})" if prov else "-",
        )
    Console(width=200).print(table)
    return 0
