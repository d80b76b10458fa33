"""Entry point of the ``av`` command: ``av <group> <command> [options]``."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

import av
from av.errors import AvError
from av.types import ScenarioError

# Each group module defines ``register(subparsers)`` and sets ``func`` on its parsers.
GROUPS = ("data", "viz", "scenarios", "closedloop", "carla", "train", "export", "safety", "bench", "pipeline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="av",
        description="Closed-loop training, distillation and evaluation of driving planners.",
    )
    parser.add_argument("--version", action="version", version=f"av {av.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in GROUPS:
        importlib.import_module(f"av.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except (AvError, ScenarioError) as e:
        print(f"av: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("av: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
