"""``av closedloop``: (filled in by its feature)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("closedloop", help="closedloop commands")
    p.add_subparsers(dest="closedloop_command", metavar="COMMAND", required=True)
