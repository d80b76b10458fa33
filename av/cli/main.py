"""Entry point of the ``av`` command: ``av <group> <command> [options]``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

import av
from av.errors import AvError
from av.types import ScenarioError

#: Top-level packages whose loggers the CLI prints (``logging.getLogger(__name__)`` in each module).
LOGGED = ("av", "scenarios", "distill", "closedloop", "safety")

# Each group module defines ``register(subparsers)`` and sets ``func`` on its parsers.
GROUPS = ("data", "viz", "scenarios", "closedloop", "carla", "train", "export", "safety", "bench", "pipeline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="av",
        description="Closed-loop training, distillation and evaluation of driving planners.",
    )
    parser.add_argument("--version", action="version", version=f"av {av.__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress lines (a line per stage and batch) even on a terminal; -vv: debug")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in GROUPS:
        importlib.import_module(f"av.cli.{name}").register(sub)
    return parser


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted (it may be replaced later)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def configure_logging(verbose: int = 0, quiet: bool = False) -> int:
    """Send the project's log records to stderr, one line each; return the level set.

    Default: INFO (a line per stage and per batch) when stderr is not a terminal, where no progress
    bar is drawn, and WARNING on a terminal; ``verbose`` 1: INFO, 2: DEBUG; ``quiet``: WARNING.
    Calling it again replaces the handler it installed (never anyone else's).
    """
    if quiet:
        level = logging.WARNING
    elif verbose:
        level = logging.DEBUG if verbose > 1 else logging.INFO
    else:
        level = logging.WARNING if sys.stderr.isatty() else logging.INFO
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("av: %(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    setattr(handler, "_av_cli", True)
    for name in LOGGED:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_av_cli", False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
    return level


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
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
