"""The layering contract: ``av -> scenarios -> distill -> closedloop -> safety``, with ``av.cli`` on top.

A package imports only itself and packages to its left; ``av/cli`` may import anything and
nothing imports it; only the nuScenes adapter (``av/data/nuscenes.py``) imports ``nuscenes``.
Every import in the source tree is checked (module level, inside functions, under
``TYPE_CHECKING``, and ``importlib.import_module("...")`` with a literal name); a failure lists
each offending ``file:line``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("av", "scenarios", "distill", "closedloop", "safety", "av.cli")
NUSCENES_ADAPTER = "av/data/nuscenes.py"


def layer_of(module: str) -> int | None:
    """Index into :data:`LAYERS` of a dotted module name; ``None`` for third-party modules."""
    if module == "av.cli" or module.startswith("av.cli."):
        return LAYERS.index("av.cli")
    top = module.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """``(line, dotted module)`` for every import in ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield node.lineno, base
            for alias in node.names:  # "from av import cli" imports the module av.cli
                yield node.lineno, f"{base}.{alias.name}"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def source_files() -> list[Path]:
    files = [p for top in ("av", "scenarios", "distill", "closedloop", "safety") for p in (ROOT / top).rglob("*.py")]
    return sorted(p for p in files if not any(part.startswith(".") for part in p.relative_to(ROOT).parts))


def violations(files: list[Path]) -> list[str]:
    """``file:line: message`` for each import against the contract."""
    out = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        own = layer_of(module_name(path))
        assert own is not None, rel
        for line, target in imports(path):
            if target.split(".")[0] == "nuscenes" and rel != NUSCENES_ADAPTER:
                out.append(f"{rel}:{line}: imports {target} (only {NUSCENES_ADAPTER} may import nuscenes)")
            other = layer_of(target)
            if other is not None and other > own:
                out.append(f"{rel}:{line}: {LAYERS[own]} imports {target} ({LAYERS[other]} is a higher layer)")
    return sorted(set(out))


def test_the_tree_keeps_the_layering() -> None:
    files = source_files()
    assert len(files) > 30, "the source tree was not found"
    found = violations(files)
    assert not found, "imports against av -> scenarios -> distill -> closedloop -> safety -> av.cli:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("where", "code", "line"),
    [
        ("av/x.py", "import closedloop.sim\n", 1),
        ("av/x.py", "from av.cli import main\n", 1),
        ("av/x.py", "import torch\nfrom av import cli\n", 2),
        ("scenarios/x.py", "def f():\n    from distill import data\n", 2),
        ("closedloop/x.py", "import importlib\nimportlib.import_module('safety.monitors')\n", 2),
        ("closedloop/x.py", "from nuscenes.nuscenes import NuScenes\n", 1),
        ("scenarios/sub/x.py", "from ...closedloop import sim\n", 1),
        ("safety/x.py", "from closedloop.rollout import Rollout\nimport av.geometry\nimport torch\n", None),
        ("av/cli/x.py", "import safety\nfrom closedloop import runner\n", None),
        ("distill/sub/x.py", "from ..data import y\nfrom . import z\n", None),
    ],
)
def test_the_checker_reports_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, code: str,
                                           line: int | None) -> None:
    """The checker itself: a bad import is reported with its file and line, good ones are not."""
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    path = tmp_path / where
    path.parent.mkdir(parents=True)
    path.write_text(code)
    found = violations([path])
    if line is None:
        assert found == []
    else:
        assert found and all(f.startswith(f"{where}:{line}: ") for f in found), found
