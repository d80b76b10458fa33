"""Closed-loop simulation: the :class:`Simulator` protocol, its configuration and backends.

``run(batch, planner, config)`` drives a planner through a batch with the builtin simulator::

    from closedloop.sim import SimConfig, run
    rollout = run(collate(scenarios), make_planner("log_replay"), SimConfig(agents="idm"))
"""

from closedloop.sim.base import SimConfig, Simulator, make_simulator, register_simulator, simulator_names
from closedloop.sim.builtin import BuiltinSimulator, SimState, run

__all__ = [
    "BuiltinSimulator",
    "SimConfig",
    "SimState",
    "Simulator",
    "make_simulator",
    "register_simulator",
    "run",
    "simulator_names",
]
