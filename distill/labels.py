"""Distillation targets: what a labeller says the car should have done in a state.

A labeller is any callable ``labeller(batch, t) -> Labels`` over a
:class:`~av.batch.ScenarioBatch` and log steps ``t`` (long ``[B]``). The teacher's search (a
planner in ``closedloop``) is injected here as one; :class:`NetworkLabeller` is the teacher
network alone (its most confident proposal), for use without the search. Every labeller states
its ``settings`` (a JSON-able dict) so cached labels are keyed by what produced them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from av.batch import ScenarioBatch
from av.features import Features, encode


@dataclass(frozen=True)
class Labels:
    """Targets for ``B`` states, poses in the ego frame at the state (rear axle x, y in m, yaw in
    rad) at the student's steps (``av.nets.TRAJECTORY_DT`` = 0.5 s apart, ``H`` of them).

    * ``plan`` ``[B, H, 3]``: the labeller's chosen plan.
    * ``proposals`` ``[B, K, H, 3]``: the candidates it scored; ``scores`` ``[B, K]`` their
      scores in [0, 1] (higher is better; NaN marks a missing proposal).
    """

    plan: Tensor
    proposals: Tensor
    scores: Tensor

    def validate(self, batch_size: int, horizon: int) -> "Labels":
        """Raise ValueError unless the shapes fit ``batch_size`` states and ``horizon`` poses."""
        B, K = self.scores.shape
        if self.plan.shape != (batch_size, horizon, 3) or self.proposals.shape != (B, K, horizon, 3) \
                or B != batch_size:
            raise ValueError(f"labels: plan {tuple(self.plan.shape)}, proposals {tuple(self.proposals.shape)}, "
                             f"scores {tuple(self.scores.shape)} do not fit {batch_size} states x {horizon} poses")
        return self


class Labeller(Protocol):
    """``labeller(batch, t) -> Labels``; ``settings`` identifies it (and its teacher) for caching."""

    settings: dict[str, Any]

    def __call__(self, batch: ScenarioBatch, t: Tensor) -> Labels: ...


@torch.no_grad()
def network_labels(teacher: nn.Module, features: Features) -> Labels:
    """Labels from the teacher network alone: its proposals, their softmax confidences as
    scores, and the most confident one as the plan."""
    trajectories, logits = teacher(*features.as_tuple())
    scores = logits.softmax(-1)
    best = scores.argmax(-1)
    plan = trajectories[torch.arange(len(best), device=best.device), best]
    return Labels(plan=plan, proposals=trajectories, scores=scores)


class NetworkLabeller:
    """Labels states with a teacher network (no search): observes each state with the teacher's
    ``ObservationSpec`` and runs :func:`network_labels`."""

    def __init__(self, teacher: nn.Module, checkpoint_sha256: str) -> None:
        self.teacher = teacher.eval()
        self.settings = {"labeller": "teacher_network", "teacher_sha256": checkpoint_sha256}

    def __call__(self, batch: ScenarioBatch, t: Tensor) -> Labels:
        from av.observe import observe

        return network_labels(self.teacher, encode(observe(batch, t, self.teacher.spec)))


class PlannerLabeller:
    """Labels states with a planner that can explain its choice (the teacher's search, injected
    from ``closedloop``): observes each state with ``planner.observation_spec``, adds the logged
    futures (``privileged``) and calls ``planner.labels(observation, privileged) -> Labels``.
    ``settings`` (JSON-able, including the teacher checkpoint's hash) keys the label cache."""

    def __init__(self, planner: Any, settings: dict[str, Any]) -> None:
        self.planner, self.settings = planner, settings

    def __call__(self, batch: ScenarioBatch, t: Tensor) -> Labels:
        from av.observe import observe, privileged

        spec = self.planner.observation_spec
        return self.planner.labels(observe(batch, t, spec), privileged(batch, t, spec))
