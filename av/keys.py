"""Keys of work: stable digests of what a result was made from, and the manifest that records them.

A stage of a job (an import, an evaluation, a training run) is redone exactly when one of its
inputs changed. Its inputs are a small JSON-able value (settings dataclasses, seeds, the
digest of an input directory, the package version); :func:`digest` turns it into a key that is
stable across processes and machines. :class:`Manifest` is the record written next to the
outputs once they are complete; :func:`needs_work` compares it with the current inputs.

Digests: :func:`digest` of values (canonical JSON, SHA-256), :func:`file_digest` of a file's
bytes, :func:`tree_digest` of a directory (relative paths and the bytes of every file, hidden
files skipped) and :func:`stat_digest` of a directory by file sizes and modification times
(cheap, for large raw data such as a nuScenes dataroot).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from av import __version__
from av.errors import AvError
from av.fileio import atomic_write_json
from av.settings import settings_dict

MANIFEST_FORMAT = "av-work-manifest"
MANIFEST_VERSION = 1
_CHUNK = 1 << 20


def canonical(value: Any) -> str:
    """``value`` (dataclasses, mappings, sequences, paths, scalars) as canonical JSON text."""
    return json.dumps(settings_dict(value), sort_keys=True, separators=(",", ":"), allow_nan=True)


def digest(value: Any) -> str:
    """SHA-256 hex digest of :func:`canonical` ``(value)``."""
    return hashlib.sha256(canonical(value).encode()).hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of the bytes of ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> Iterator[Path]:
    """Regular files under ``root`` in sorted order, skipping hidden files and folders."""
    if not root.is_dir():
        raise AvError(f"{root}: no such directory")
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            yield Path(folder) / name


def tree_digest(root: str | os.PathLike[str]) -> str:
    """Digest of a directory's content: every (relative path, file digest), hidden files skipped."""
    root = Path(root)
    return digest([[p.relative_to(root).as_posix(), file_digest(p)] for p in _files(root)])


def stat_digest(root: str | os.PathLike[str]) -> str:
    """Digest of a directory by (relative path, size, mtime) of every file: cheap, for large raw data."""
    root = Path(root)
    rows = []
    for p in _files(root):
        st = p.stat()
        rows.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return digest(rows)


@dataclass(frozen=True)
class Manifest:
    """What one piece of work was made from: ``inputs`` (JSON values), their ``key``
    (:func:`digest` of the inputs) and whether the work is ``complete``."""

    inputs: dict[str, Any]
    key: str
    complete: bool

    @classmethod
    def of(cls, inputs: Any, complete: bool = False) -> "Manifest":
        plain = settings_dict(inputs)
        return cls(inputs=plain, key=digest(plain), complete=complete)

    def write(self, path: str | os.PathLike[str]) -> None:
        atomic_write_json(path, {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                                 "av_version": __version__, **dataclasses.asdict(self)})

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> "Manifest | None":
        """The manifest at ``path``; ``None`` if there is none or it is unreadable (work is redone)."""
        try:
            raw = json.loads(Path(path).read_text())
            if raw.get("format") != MANIFEST_FORMAT or raw.get("version") != MANIFEST_VERSION:
                return None
            return cls(inputs=raw["inputs"], key=str(raw["key"]), complete=bool(raw["complete"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


def needs_work(path: str | os.PathLike[str], inputs: Any) -> tuple[bool, bool]:
    """``(redo, resume)`` for the work recorded at ``path`` given its current ``inputs``.

    ``redo`` is False only when a complete manifest with the same key exists. ``resume`` is True
    when the recorded work has the same key but is incomplete (its partial outputs may be kept);
    when ``redo and not resume`` earlier outputs were made from other inputs and must go.
    """
    old = Manifest.read(path)
    if old is None or old.key != Manifest.of(inputs).key:
        return True, False
    return (not old.complete), (not old.complete)


def path_digests(settings: Any, where: str = "") -> dict[str, str]:
    """Content digests of the files and directories that a settings dataclass points to
    (``Path`` fields naming a file or directory, string fields naming a file; nested ones
    dotted), so that a result made from a checkpoint or a model file is redone when the file
    changes even if its path does not."""
    out: dict[str, str] = {}
    if not (dataclasses.is_dataclass(settings) and not isinstance(settings, type)):
        return out
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, (str, Path)) and value and os.path.isfile(value):
            out[where + f.name] = file_digest(value)
        elif isinstance(value, Path) and value.is_dir():
            out[where + f.name] = tree_digest(value)
        else:
            out.update(path_digests(value, f"{where}{f.name}."))
    return out
