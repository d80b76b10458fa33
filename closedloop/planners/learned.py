"""The student as a simulator planner: its network on car-visible inputs only.

``av closedloop eval --planner student --checkpoint RUN/student.ckpt`` (or
``--planner-arg checkpoint=...``) loads the student network with :func:`av.nets.load_network`
(tensors and plain values only, never pickled code), observes with the network's saved
``ObservationSpec``, encodes with :func:`av.features.encode` (the code used in training and
export) and returns the network's trajectory. The teacher is :mod:`closedloop.planners.teacher`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from av.errors import AvError
from av.features import encode
from av.nets import TRAJECTORY_DT, load_network
from av.observation import Observation, Privileged, Trajectory


@dataclass(frozen=True)
class StudentSettings:
    """Settings of the ``student`` planner."""

    checkpoint: str = field(default="", metadata={"help": "student checkpoint (av distill: RUN/student.ckpt)"})

    def validate(self) -> "StudentSettings":
        if not self.checkpoint:
            raise AvError("student: no checkpoint; pass --checkpoint RUN/student.ckpt")
        return self


class StudentPlanner:
    """The student network over a batch: ``Observation`` -> :class:`Trajectory` ``[B, H, 3]``
    (ego frame, ``av.nets.TRAJECTORY_DT`` s apart)."""

    name = "student"
    privileged = False

    def __init__(self, settings: StudentSettings) -> None:
        self.settings = settings.validate()
        net = load_network(settings.checkpoint)
        if net.kind != "student":
            raise AvError(f"{settings.checkpoint}: a {net.kind} checkpoint, not a student "
                          "(av distill writes RUN/student.ckpt)")
        self.network = net
        self.observation_spec = net.spec

    @torch.no_grad()
    def plan(self, observation: Observation, privileged: Privileged | None = None) -> Trajectory:
        dev = observation.ego_dims.device
        if next(self.network.parameters()).device != dev:
            self.network.to(dev)
        poses = self.network(*encode(observation).as_tuple())
        return Trajectory(poses=poses.to(observation.ego_dims.dtype), dt=TRAJECTORY_DT)
