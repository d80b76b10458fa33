"""``av bench``: (filled in by its feature)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="bench commands")
    p.add_subparsers(dest="bench_command", metavar="COMMAND", required=True)
