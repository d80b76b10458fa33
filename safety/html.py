"""Static HTML pages of the safety work products (trace matrix, diversity, safety case)."""

from __future__ import annotations

import html
from typing import Iterable, Sequence

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:90em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;vertical-align:top;text-align:left}
th{background:#f3f3f3}.ok{color:#17702c;font-weight:600}.bad{color:#b00020;font-weight:600}.muted{color:#777}
code{font-size:90%}h2{margin-top:1.6em}
"""

_GOOD = {"passed", "active", "met", "ok", "covered", "pass", "supported"}
_BAD = {"failed", "stale", "not met", "skipped", "fail", "gap", "uncovered", "open"}


def esc(x: object) -> str:
    return html.escape(str(x))


def status(s: str) -> str:
    """A status word coloured green (good), red (bad) or grey (neither)."""
    cls = "ok" if s in _GOOD else "bad" if s in _BAD else "muted"
    return f'<span class="{cls}">{esc(s)}</span>'


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """An HTML table; cells are already HTML (escape text with :func:`esc`)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>\n")
