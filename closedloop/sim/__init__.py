"""Closed-loop simulation: the :class:`Simulator` protocol, its configuration and backends.

Backends are driven by :func:`closedloop.driver.rollout`::

    from closedloop.driver import rollout
    from closedloop.sim import make_simulator
    with make_simulator("builtin", agents="idm") as sim:
        result = rollout(sim, collate(scenarios), make_planner("log_replay"))
"""

from closedloop.sim.base import SimConfig, Simulator, Snapshot, make_simulator, register_simulator, simulator_names
from closedloop.sim.builtin import BuiltinSimulator, SimState

__all__ = [
    "BuiltinSimulator",
    "SimConfig",
    "SimState",
    "Simulator",
    "Snapshot",
    "make_simulator",
    "register_simulator",
    "simulator_names",
]
