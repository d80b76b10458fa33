"""Runtime monitors: checks that judge a planned trajectory before it is driven.

Every monitor implements :class:`av.monitor.Monitor` (``judge(observation, trajectory) ->
Verdict``), is vectorised over the batch, imports only ``av``, ``torch`` and the standard
library (so it runs in the vehicle runtime as well as in the simulator), and declares, as class
attributes, what the diversity analysis and the trace need:

* ``name``; ``inputs``: the observation channels it reads (``agents.velocity``, ``lanes``, ...;
  ``trajectory`` for the plan, ``clock`` for time); ``method``: its method family;
  ``requirements``: the requirement IDs it implements (``safety/requirements``).

Each monitor module is self-contained on purpose (no shared helper module), so that the code
overlap of two monitors is only ``av`` and ``torch``; see ``av safety diversity``.
"""

from __future__ import annotations

import importlib
from typing import Any

from av.errors import AvError
from av.monitor import Monitor

# name -> "module:Class" (imported on use)
MONITORS: dict[str, str] = {
    "rss": "safety.monitors.rss:RssMonitor",
    "ttc": "safety.monitors.ttc:TtcMonitor",
    "drivable_area": "safety.monitors.drivable:DrivableAreaMonitor",
    "lane_keeping": "safety.monitors.lanes:LaneKeepingMonitor",
    "kinematics": "safety.monitors.kinematics:KinematicsMonitor",
    "steering": "safety.monitors.steering:SteeringMonitor",
    "plan_sanity": "safety.monitors.sanity:PlanSanityMonitor",
    "deadline": "safety.monitors.watchdog:DeadlineWatchdog",
}


def monitor_class(name: str) -> type:
    """The class registered under ``name``."""
    if name not in MONITORS:
        raise AvError(f"unknown monitor {name!r} (known: {', '.join(MONITORS)})")
    module, cls = MONITORS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_monitor(name: str, **settings: Any) -> Monitor:
    """A monitor by name with its settings (the dataclass fields of its class)."""
    try:
        return monitor_class(name)(**settings)
    except TypeError as e:
        raise AvError(f"monitor {name}: bad settings ({e})") from None


def all_monitors() -> list[Monitor]:
    """One monitor of every registered kind with default settings."""
    return [make_monitor(n) for n in MONITORS]
