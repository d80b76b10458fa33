"""The teacher: test-time search over network and rule proposals, with privileged predictions.

Each planning call gathers candidate plans -- the teacher network's most confident proposals
(when a checkpoint is given) and the PDM-style rule proposals (IDM at several speeds and lateral
offsets, :class:`~closedloop.planners.pdm_closed.PDMClosedPlanner`) -- drives every candidate
forward for ``search_steps`` x 0.1 s with the simulator's own tracking controller and bicycle
model (:func:`~closedloop.planners.common.simulate_proposals`, batched over scenarios x candidates), and scores them with the PDM-style scorer
(:func:`~closedloop.planners.pdm_closed.score_proposals`: at-fault collisions and drivable area
as multipliers, progress, time-to-collision and comfort weighted 5 : 5 : 2). The best candidate
is the plan. More proposals or a longer horizon cost more compute; since every score depends only
on its own candidate (progress is measured against the rule proposals, always searched), a
teacher given a superset of proposals never chooses a worse-scoring plan.

It is privileged: other agents move as the log says (``Privileged.agents_future``) where they
still follow the log (non-reactive simulation, logged states), and at constant velocity where
they do not (reactive agents that left their logged motion); see :class:`TeacherSettings`.

:meth:`TeacherPlanner.labels` gives the search's candidates and scores as distillation targets;
:func:`make_labeller` wraps it into the labeller that distillation (:mod:`distill.data`) injects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from av.errors import AvError
from av.features import encode
from av.geometry import wrap_angle
from av.nets import TRAJECTORY_DT, load_network
from av.observe import ObservationSpec
from av.observation import Observation, Privileged, Trajectory
from av.settings import build_settings, settings_dict
from av.vehicle import VehicleLimits
from closedloop.planners.common import AgentsOnPath, agents_on_path, build_path, simulate_proposals
from closedloop.planners.pdm_closed import (
    AgentPrediction,
    PDMClosedPlanner,
    PDMConfig,
    PDMSettings,
    constant_velocity,
    score_proposals,
    select,
)
from distill.labels import Labels, PlannerLabeller

#: The search's time step (s): the simulator's 10 Hz.
STEP = 0.1
#: An agent "still follows the log" when its observed state, moved on for one step, lies within
#: this distance (m) of its logged state one step later.
LOG_CONSISTENCY_M = 0.5


@dataclass(frozen=True)
class TeacherSettings:
    """Settings of the ``teacher`` planner (SI units)."""

    checkpoint: str = field(default="", metadata={
        "help": "teacher network checkpoint (av train teacher: RUN/teacher.ckpt); empty: rule proposals only"})
    network_proposals: int = field(default=6, metadata={
        "help": "the network's most confident proposals searched (capped at its K)"})
    speed_fractions: tuple[float, ...] = field(default=PDMConfig.speed_fractions, metadata={
        "help": "rule proposals: target speeds as fractions of the speed limit"})
    lateral_offsets: tuple[float, ...] = field(default=PDMConfig.lateral_offsets, metadata={
        "help": "rule proposals: lateral offsets from the route, m (left positive)"})
    search_steps: int = field(default=40, metadata={"help": "0.1 s steps each proposal is simulated and scored"})
    prediction: Literal["auto", "log", "constant_velocity"] = field(default="auto", metadata={
        "help": "other agents: logged futures where they still follow the log (auto), always, or never"})

    def validate(self) -> "TeacherSettings":
        if self.network_proposals < 0:
            raise AvError(f"teacher: network_proposals must be >= 0, got {self.network_proposals}")
        if not 1 <= self.search_steps <= 80:
            raise AvError(f"teacher: search_steps must be in 1..80 (0.1 s steps), got {self.search_steps}")
        if not self.speed_fractions or not self.lateral_offsets:
            raise AvError("teacher: speed_fractions and lateral_offsets must not be empty")
        if self.prediction not in ("auto", "log", "constant_velocity"):
            raise AvError(f"teacher: prediction must be auto, log or constant_velocity, got {self.prediction!r}")
        return self


def load_teacher_network(path: str | Path) -> nn.Module:
    """The teacher network of checkpoint ``path`` (AvError for a missing, corrupt or non-teacher file)."""
    net = load_network(path)
    if net.kind != "teacher":
        raise AvError(f"{path}: a {net.kind} checkpoint, not a teacher (av train teacher writes RUN/teacher.ckpt)")
    return net


def upsample(poses: Tensor, dt: float, steps: int) -> Tensor:
    """Poses ``[..., H, 3]`` at ``dt, 2 dt, ...`` -> ``[..., steps, 3]`` at ``STEP, 2 STEP, ...``,
    linear in time from the origin (the pose at time 0); the last pose is held beyond ``H dt``."""
    H = poses.shape[-2]
    full = torch.cat([torch.zeros_like(poses[..., :1, :]), poses], -2)  # times 0, dt, ...
    pos = (torch.arange(1, steps + 1, dtype=poses.dtype, device=poses.device) * (STEP / dt)).clamp_max(H)
    i = pos.floor().long().clamp_max(H - 1)
    frac = (pos - i)[:, None]
    a, b = full[..., i, :], full[..., i + 1, :]
    xy = a[..., :2] + frac * (b[..., :2] - a[..., :2])
    yaw = wrap_angle(a[..., 2] + frac[:, 0] * wrap_angle(b[..., 2] - a[..., 2]))
    return torch.cat([xy, yaw[..., None]], -1)


def prediction(agents: AgentsOnPath, privileged: Privileged | None, mode: str, steps: int
               ) -> AgentPrediction | None:
    """How the observed ``agents`` move over ``steps`` x :data:`STEP` s (``None``: constant velocity).

    ``auto``: an agent follows its logged future where its observed state, moved on one step,
    is within :data:`LOG_CONSISTENCY_M` of the log one step later (it is being replayed), at
    constant velocity otherwise; ``log``: always the logged future.
    """
    if mode == "constant_velocity" or privileged is None:
        return None
    fut, valid = privileged.agents_future[:, :, :steps], privileged.agents_future_valid[:, :, :steps]
    if fut.shape[2] < steps:
        raise AvError(f"teacher: privileged futures hold {fut.shape[2]} steps, the search needs {steps}")
    fut = fut.to(agents.state.dtype)
    if mode == "log":
        return AgentPrediction(fut, valid)
    now = agents.state
    cv = constant_velocity(now, agents.valid, steps, STEP)
    moved = now[..., :2] + STEP * now[..., 3:5]
    follows = valid[:, :, 0] & ((moved - fut[:, :, 0, :2]).norm(dim=-1) < LOG_CONSISTENCY_M)  # [B, N]
    pick = follows[:, :, None]
    return AgentPrediction(torch.where(pick[..., None], fut, cv.state), torch.where(pick, valid, cv.valid))


class TeacherPlanner:
    """Test-time search over network and rule proposals (see the module doc).

    ``plan`` returns the best candidate as 80 poses 0.1 s apart (8 s); ``search`` exposes every
    candidate and its score for labelling.
    """

    name = "teacher"
    privileged = True

    def __init__(self, settings: TeacherSettings = TeacherSettings()) -> None:
        self.settings = settings.validate()
        self.network = load_teacher_network(settings.checkpoint) if settings.checkpoint else None
        self.observation_spec = self.network.spec if self.network is not None else ObservationSpec()
        grid = replace(PDMConfig(), speed_fractions=tuple(settings.speed_fractions),
                       lateral_offsets=tuple(settings.lateral_offsets), score_steps=settings.search_steps)
        self.rules = PDMClosedPlanner(PDMSettings(proposals=grid))
        self.limits = VehicleLimits()

    @property
    def checkpoint_sha256(self) -> str | None:
        """SHA-256 of the network checkpoint file (``None`` without a network)."""
        if not self.settings.checkpoint:
            return None
        return hashlib.sha256(Path(self.settings.checkpoint).read_bytes()).hexdigest()

    def plan(self, observation: Observation, privileged: Privileged | None = None) -> Trajectory:
        """``B`` observations -> the best candidate, :class:`Trajectory` ``[B, 80, 3]`` (ego frame)."""
        proposals, _, best = self.search(observation, privileged)
        return Trajectory(poses=proposals[torch.arange(len(best), device=best.device), best], dt=STEP)

    def labels(self, observation: Observation, privileged: Privileged | None = None) -> Labels:
        """The search as distillation targets: every candidate and the chosen plan at the
        student's output steps (``av.nets.TRAJECTORY_DT`` apart, 8 s), scores in [0, 1]."""
        proposals, scores, best = self.search(observation, privileged)
        stride = int(round(TRAJECTORY_DT / STEP))
        sub = proposals[:, :, stride - 1 :: stride].float()  # [B, K, 16, 3]
        plan = sub[torch.arange(len(best), device=best.device), best]
        return Labels(plan=plan, proposals=sub, scores=scores.float())

    @torch.no_grad()
    def search(self, observation: Observation, privileged: Privileged | None = None
               ) -> tuple[Tensor, Tensor, Tensor]:
        """Candidates ``[B, K, 80, 3]`` (ego frame, 0.1 s apart), their scores ``[B, K]`` in
        [0, 1] and the index ``[B]`` of the best. The rule proposals come first, then the
        network's in decreasing confidence."""
        obs, cfg = observation, self.rules.config
        if abs(obs.dt - STEP) > 1e-6:
            raise AvError(f"teacher: observations {obs.dt} s apart; the search runs at {STEP} s")
        rule_poses, _ = self.rules.proposals(obs, score=False)  # [B, Kr, 80, 3]
        H = rule_poses.shape[2]
        candidates = [rule_poses]
        if self.network is not None and self.settings.network_proposals > 0:
            candidates.append(upsample(self._network_proposals(obs), TRAJECTORY_DT, H))
        poses = torch.cat(candidates, 1)
        B, K = poses.shape[:2]
        S = cfg.score_steps
        sim = simulate_proposals(obs, poses[:, :, :S], STEP, self.limits)
        path = build_path(obs, self.rules.params)
        agents = agents_on_path(obs, path)
        s, d, _ = path.project(sim.pose[..., :2].reshape(B, K * S, 2))
        s, d = s.reshape(B, K, S), d.reshape(B, K, S)
        steps = S + max(int(round(h / STEP)) for h in cfg.ttc_horizons)
        future = prediction(agents, privileged, self.settings.prediction, steps)
        reference = torch.arange(K, device=poses.device) < rule_poses.shape[1]
        scores = score_proposals(obs, path, agents, sim, s, d[..., -1], cfg, STEP, future, reference)
        return poses, scores.total, select(scores)

    def _network_proposals(self, obs: Observation) -> Tensor:
        """The network's ``network_proposals`` most confident proposals ``[B, k, H, 3]``."""
        net = self.network
        dev = obs.ego_dims.device
        if next(net.parameters()).device != dev:
            net.to(dev)
        trajectories, logits = net(*encode(obs).as_tuple())
        k = min(self.settings.network_proposals, logits.shape[1])
        order = logits.topk(k, dim=1).indices  # [B, k], most confident first
        picked = trajectories.gather(1, order[..., None, None].expand(-1, -1, *trajectories.shape[2:]))
        return picked.to(obs.ego_dims.dtype)


def make_labeller(checkpoint: str | Path = "", **settings: Any) -> PlannerLabeller:
    """The teacher's search as a distillation labeller, ``labeller(batch, t) -> Labels`` on
    logged states (:class:`distill.labels.PlannerLabeller`: :func:`av.observe.observe` and
    :func:`av.observe.privileged` with the teacher's observation spec, then
    :meth:`TeacherPlanner.labels`). ``settings`` are :class:`TeacherSettings` keys; the labeller's
    ``settings`` (the label-cache key) hold the checkpoint's SHA-256, not its path."""
    teacher = TeacherPlanner(build_settings(TeacherSettings, {**settings, "checkpoint": str(checkpoint)}))
    search = {k: v for k, v in settings_dict(teacher.settings).items() if k != "checkpoint"}
    return PlannerLabeller(teacher, {"labeller": "teacher_search", "teacher_sha256": teacher.checkpoint_sha256,
                                     "settings": search})
