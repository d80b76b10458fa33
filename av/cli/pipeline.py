"""``av pipeline``: the main job, stage by stage, resumable.

Stages (each writes under ``--out`` and is skipped when its output is already complete):
``data`` (synthesize the default dataroot unless ``--dataroot`` is given) -> ``import``
(scenario store) -> ``pictures`` (bird's-eye views of a few drives).
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
    console.print(f"store: {store} ({store_count(store)} scenarios)")
    return 0
