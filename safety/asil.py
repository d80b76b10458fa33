"""ASIL values and the ISO 26262-9 (clause 5) decomposition schemes.

An ASIL is written ``QM``, ``A`` .. ``D``, or, for a requirement that came out of a decomposition,
with the ASIL it was decomposed from in brackets: ``B(D)``. A decomposition splits one
requirement of ASIL X into two sufficiently independent redundant requirements whose levels are
one of the pairs in :data:`SCHEMES` ``[X]``, both annotated ``(X)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LEVELS = ("QM", "A", "B", "C", "D")

# ISO 26262-9:2018, 5.4.10: the allowed (unordered) pairs of levels for each decomposed ASIL.
SCHEMES: dict[str, tuple[tuple[str, str], ...]] = {
    "D": (("C", "A"), ("B", "B"), ("D", "QM")),
    "C": (("B", "A"), ("C", "QM")),
    "B": (("A", "A"), ("B", "QM")),
    "A": (("A", "QM"),),
}

_PATTERN = re.compile(r"^(QM|A|B|C|D)(?:\((A|B|C|D)\))?$")


@dataclass(frozen=True)
class Asil:
    """An ASIL ``level`` (one of :data:`LEVELS`) and, after a decomposition, the level it was
    decomposed ``origin`` from (``None`` otherwise)."""

    level: str
    origin: str | None = None

    @staticmethod
    def parse(text: str) -> "Asil":
        """``"QM"``, ``"B"``, ``"B(D)"`` ... -> :class:`Asil`; ``ValueError`` on anything else."""
        m = _PATTERN.match(str(text).strip())
        if m is None:
            raise ValueError(f"not an ASIL: {text!r} (expected QM, A, B, C, D or e.g. B(D))")
        return Asil(m.group(1), m.group(2))

    @property
    def rank(self) -> int:
        """0 (QM) .. 4 (D)."""
        return LEVELS.index(self.level)

    def __str__(self) -> str:
        return self.level if self.origin is None else f"{self.level}({self.origin})"


def valid_decomposition(parent: Asil, children: list[Asil]) -> str | None:
    """Why decomposing ``parent`` into ``children`` is not a valid ISO 26262-9 scheme, or ``None``.

    Valid: exactly two children, both annotated with the parent's level, and their levels one of
    the pairs of :data:`SCHEMES` for that level (in either order).
    """
    schemes = SCHEMES.get(parent.level)
    allowed = " | ".join(f"{a}({parent.level})+{b}({parent.level})" for a, b in schemes or ())
    if schemes is None:
        return f"a {parent.level} requirement cannot be decomposed"
    if len(children) != 2:
        return f"needs exactly two children, has {len(children)}; allowed for {parent.level}: {allowed}"
    bad = [str(c) for c in children if c.origin != parent.level]
    if bad:
        return f"children {', '.join(bad)} must be annotated ({parent.level}); allowed: {allowed}"
    pair = (children[0].level, children[1].level)
    if pair not in schemes and pair[::-1] not in schemes:
        got = "+".join(str(c) for c in children)
        return f"{got} is not an ISO 26262-9 scheme for {parent.level}; allowed: {allowed}"
    return None
