"""``av scenarios``: (filled in by its feature)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scenarios", help="scenarios commands")
    p.add_subparsers(dest="scenarios_command", metavar="COMMAND", required=True)
