"""The runtime-monitor protocol: a check that judges a planned trajectory before it is driven.

A monitor sees what the car sees (an :class:`~av.observation.Observation`) and the plan the
planner proposes (a :class:`~av.observation.Trajectory`, ego frame at plan time) and returns a
:class:`Verdict` per batch row. The one closed-loop driver (:func:`closedloop.driver.rollout`)
and the vehicle runtime (:mod:`av.runtime`) call monitors the same way; where one vetoes, the
fallback plan is driven instead. Monitors only need ``av``, so they run in the car and in
simulation alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

from av.observation import Observation, Trajectory


@dataclass(frozen=True)
class Verdict:
    """One monitor's judgement of ``B`` plans.

    * ``veto`` bool ``[B]``: True where the plan must not be driven.
    * ``reasons``: ``B`` strings, empty where the plan passed, otherwise one line a person can
      read (what broke, its value and limit, and when), e.g. ``"leaves the drivable area at t =
      0.8 s"``.
    """

    veto: Tensor
    reasons: tuple[str, ...]


@runtime_checkable
class Monitor(Protocol):
    """A runtime check of planned trajectories, batched over ``B`` planning problems."""

    name: str

    def judge(self, observation: Observation, trajectory: Trajectory) -> Verdict:
        """Judge ``trajectory`` (``[B, H, 3]`` ego frame) given ``observation``."""
        ...
