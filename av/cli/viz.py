"""``av viz``: bird's-eye-view picture (PNG) or animation (GIF) of one scenario."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("viz", help="render a scenario as a bird's-eye-view PNG or GIF")
    p.add_argument("store", type=Path, help="scenario store directory")
    p.add_argument("scenario_id", help="id of the scenario to draw (see `av data list`)")
    p.add_argument("--out", type=Path, required=True, help="output file: .png (one frame) or .gif (whole drive)")
    p.add_argument("--with-parent", action="store_true", help="draw a variant beside the scenario it came from")
    p.set_defaults(func=_viz)


def _viz(args: argparse.Namespace) -> int:
    from av.errors import AvError
    from av.viz import render_scenario
    from scenarios.store import read_store

    if args.out.suffix.lower() not in (".png", ".gif"):
        raise AvError(f"{args.out}: output must end in .png or .gif")
    (scenario,) = read_store(args.store, [args.scenario_id])
    parent = None
    if args.with_parent:
        if scenario.provenance is None:
            raise AvError(f"{args.scenario_id}: not a variant (it has no parent)")
        (parent,) = read_store(args.store, [scenario.provenance.parent_id])
    render_scenario(scenario, args.out, parent=parent)
    print(args.out)
    return 0
