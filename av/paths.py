"""Where things are: the shared real data (for tests and users who have it) and default outputs."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir() -> Path | None:
    """``$AV_SHARED_DATA``, else ``../shared/data`` beside the source checkout, if it exists."""
    env = os.environ.get("AV_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def nuscenes_mini_dir() -> Path | None:
    """The shared nuScenes v1.0-mini dataroot, if present."""
    d = shared_data_dir()
    if d is not None and (d / "nuscenes-mini" / "v1.0-mini").is_dir():
        return d / "nuscenes-mini"
    return None
