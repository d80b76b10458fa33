"""The result of simulating a batch of scenarios: what the evaluator scores.

It is the contract between the simulator backends (builtin, CARLA) and the behavior evaluator.
Metrics read only this value and the :class:`~av.batch.ScenarioBatch` it was simulated from.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from av.batch import ScenarioBatch


@dataclass(frozen=True)
class Rollout:
    """Simulated trajectories for ``B`` scenarios over the batch's ``T`` steps (``dt`` s apart).

    Steps before ``start_step`` repeat the log (the history the planner was given); the
    simulated part is ``start_step <= t`` where ``step_valid``.

    * ``ego`` ``[B, T, 5]``: simulated rear-axle state (x, y, yaw, vx, vy), local frame, SI.
    * ``ego_accel`` ``[B, T, 2]``: rear-axle acceleration in the body frame (longitudinal,
      lateral), m/s^2, from the vehicle model's state (not finite differences of poses).
    * ``ego_yaw_rate`` ``[B, T]`` rad/s and ``ego_yaw_accel`` ``[B, T]`` rad/s^2, model state.
    * ``agents`` ``[B, N, T, 5]``: background-agent box-centre states as simulated (log replay
      or reactive); ``agent_valid`` bool ``[B, N, T]``.
    * ``step_valid`` bool ``[B, T]`` and ``start_step`` long ``[B]``.
    * ``planned`` (optional) ``[B, T, H, 3]``: the trajectory the planner returned at each
      step (x, y, yaw in the world/local frame), for pictures and plan-consistency metrics.
    * ``agent_mode``: ``"log"`` or ``"idm"``; ``planner``: the planner's name.
    * ``monitor_names``: the ``M`` runtime monitors that judged the plans; ``vetoes`` bool
      ``[B, T, M]``: monitor ``m`` vetoed the plan made at step ``t``; ``fallback_used`` bool
      ``[B, T]``: the fallback's plan was driven from step ``t``; ``veto_reasons``: one
      ``(scenario_id, step, monitor, reason)`` per veto, in time order.
    """

    scenario: ScenarioBatch
    ego: Tensor
    ego_accel: Tensor
    ego_yaw_rate: Tensor
    ego_yaw_accel: Tensor
    agents: Tensor
    agent_valid: Tensor
    step_valid: Tensor
    start_step: Tensor
    agent_mode: str
    planner: str
    planned: Tensor | None = None
    monitor_names: tuple[str, ...] = ()
    vetoes: Tensor | None = None
    fallback_used: Tensor | None = None
    veto_reasons: tuple[tuple[str, int, str, str], ...] = ()
