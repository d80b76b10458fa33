"""CARLA backend: one scenario at a time on a CARLA 0.9.16 server, behind the simulator protocol.

``carla`` is imported lazily (inside functions), so this module imports without it.

Frames. Our local frame and OpenDRIVE are right-handed (heading counter-clockwise from +x); CARLA
(Unreal) is left-handed: CARLA ``Location(x, -y, z)`` is our ``(x, y)``, CARLA yaw is
``-degrees(our yaw)``, CARLA velocities and angular velocities flip the same way, and a positive
CARLA steer turns right. :func:`to_carla_transform` / :func:`from_carla_transform` are the one
place that says so. A CARLA vehicle's transform is its box centre; ours is the rear axle.

An episode (:class:`CarlaEpisode`) is an object with explicit setup and teardown, used as a
context manager: it connects (host, port, timeout), loads the world (the scenario's exported
OpenDRIVE through ``generate_opendrive_world``, or a named town), switches the server to
synchronous mode with fixed ``dt`` steps, spawns the ego and the agents with a collision and a
lane-invasion sensor on the ego; on exit, also after an error or Ctrl-C, it destroys everything
it spawned and restores the server's settings. Agents replay the log (teleported to their
logged pose every step, physics off; moved below the ground while not in the log) or, in
reactive mode, vehicles drive on CARLA's Traffic Manager from their logged start (pedestrians,
cyclists and static objects still replay the log). The ego is driven by
:func:`track_plan` (pure pursuit + a proportional speed loop) towards the planner's trajectory.

:class:`CarlaSimulator` implements the :class:`~closedloop.sim.base.Simulator` protocol for
batches of one scenario (``reset`` / ``step`` / ``snapshot`` / ``close``); the scenarios are
passed in when it is built (the batch holds tensors, the OpenDRIVE export needs the
:class:`~av.types.Scenario`).
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np
import torch

from av.batch import ScenarioBatch
from av.errors import AvError
from av.observation import Trajectory
from av.types import AgentType, Scenario
from closedloop.sim.base import Snapshot

if TYPE_CHECKING:
    import carla

START_HINT = ("start CARLA 0.9.16 with `./CarlaUE4.sh -RenderOffScreen` (or its container: "
              "`docker run --gpus all --net=host carlasim/carla:0.9.16 bash CarlaUE4.sh -RenderOffScreen`)")
HIDDEN_Z = -100.0
"""Height (m) at which log agents wait while they are not in the log."""
SPAWN_Z = 0.3
"""Height (m) above the (flat) road at which actors are placed."""
AGENT_BLUEPRINTS = {
    AgentType.VEHICLE: "vehicle.audi.a2",
    AgentType.CYCLIST: "vehicle.diamondback.century",
    AgentType.PEDESTRIAN: "walker.pedestrian.0001",
    AgentType.STATIC: "static.prop.trafficcone01",
}


@dataclass(frozen=True)
class CarlaSettings:
    """Settings of the CARLA backend (``--carla-host``, ``--carla-port`` on the CLI)."""

    host: str = field(default="localhost", metadata={"help": "CARLA server host"})
    port: int = field(default=2000, metadata={"help": "CARLA server RPC port"})
    timeout_s: float = field(default=10.0, metadata={"help": "seconds to wait for the server"})
    town: str = field(default="", metadata={"help": "load this CARLA town instead of the scenario's OpenDRIVE"})
    agents: Literal["log", "tm"] = field(
        default="log", metadata={"help": "agents replay the log, or drive on the Traffic Manager (reactive)"})
    ego_blueprint: str = field(default="vehicle.lincoln.mkz_2020", metadata={"help": "CARLA blueprint of the ego"})
    tm_port: int = field(default=8000, metadata={"help": "Traffic Manager port (reactive agents)"})
    seed: int = field(default=0, metadata={"help": "Traffic Manager seed"})
    lookahead_s: float = field(default=0.8, metadata={"help": "ego controller: pure-pursuit look-ahead time, s"})
    min_lookahead_m: float = field(default=2.0, metadata={"help": "ego controller: shortest look-ahead, m"})
    speed_gain: float = field(default=1.0, metadata={"help": "ego controller: speed error to acceleration, 1/s"})
    max_accel: float = field(default=3.0, metadata={"help": "acceleration at full throttle, m/s^2"})
    max_decel: float = field(default=8.0, metadata={"help": "deceleration at full brake, m/s^2"})

    def validate(self) -> "CarlaSettings":
        """Raise :class:`AvError` naming the first bad setting; return ``self``."""
        if not 0 < self.port < 65536 or not 0 < self.tm_port < 65536:
            raise AvError(f"carla: ports must be in 1..65535, got {self.port} and {self.tm_port}")
        if self.agents not in ("log", "tm"):
            raise AvError(f"carla: agents must be 'log' or 'tm', got {self.agents!r}")
        for name in ("timeout_s", "lookahead_s", "min_lookahead_m", "speed_gain", "max_accel", "max_decel"):
            if not getattr(self, name) > 0:
                raise AvError(f"carla: {name} must be > 0, got {getattr(self, name)}")
        return self


# ----------------------------------------------------------------------------------- frames


def to_carla_transform(x: float, y: float, yaw: float, z: float = 0.0) -> "carla.Transform":
    """Our pose (m, m, rad; local frame) as a ``carla.Transform`` (CARLA's left-handed frame)."""
    import carla

    return carla.Transform(carla.Location(x=float(x), y=-float(y), z=float(z)),
                           carla.Rotation(yaw=-math.degrees(float(yaw))))


def from_carla_transform(t: "carla.Transform") -> tuple[float, float, float]:
    """A ``carla.Transform`` as our (x, y, yaw) (yaw wrapped to [-pi, pi))."""
    yaw = -math.radians(t.rotation.yaw)
    return t.location.x, -t.location.y, (yaw + math.pi) % (2 * math.pi) - math.pi


def from_carla_vector(v: "carla.Vector3D") -> tuple[float, float]:
    """A CARLA velocity or acceleration as our (x, y) components."""
    return v.x, -v.y


def to_carla_vector(vx: float, vy: float) -> "carla.Vector3D":
    import carla

    return carla.Vector3D(x=float(vx), y=-float(vy), z=0.0)


# ------------------------------------------------------------------------------- controller


def track_plan(
    pose: np.ndarray, speed: np.ndarray, plan: np.ndarray, since_s: np.ndarray, dt: float,
    wheelbase: np.ndarray, settings: CarlaSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """Steering angle and acceleration that track a plan (batched over ``B``).

    ``pose`` ``[B, 3]`` rear axle (x, y, yaw) and ``speed`` ``[B]`` m/s now; ``plan`` ``[B, H, 3]``
    poses in the local frame at ``dt, 2 dt, ... H dt`` after it was made, ``since_s`` ``[B]``
    seconds since then; ``wheelbase`` ``[B]`` m. Steering: pure pursuit towards the plan's pose
    ``lookahead_s`` ahead (at least ``min_lookahead_m`` away). Acceleration: ``speed_gain``
    times the plan's speed one step ahead minus the speed. Returns (front-wheel angle ``[B]``
    rad, left positive; acceleration ``[B]`` m/s^2).
    """
    B, H, _ = plan.shape
    times = dt * np.arange(1, H + 1)
    if H > 1:  # speed arriving at each plan pose (the first: as at the second)
        seg = np.linalg.norm(np.diff(plan[:, :, :2], axis=1), axis=-1) / dt  # [B, H-1]
        v_plan = np.concatenate([seg[:, :1], seg], axis=1)
    else:
        v_plan = np.linalg.norm(plan[:, :, :2] - pose[:, None, :2], axis=-1) / dt
    k_now = np.clip(np.searchsorted(times, since_s + dt), 0, H - 1)
    v_ref = v_plan[np.arange(B), k_now]
    accel = settings.speed_gain * (v_ref - speed)

    ahead = np.maximum(settings.lookahead_s * np.maximum(speed, 0.0), settings.min_lookahead_m)
    dist = np.linalg.norm(plan[:, :, :2] - pose[:, None, :2], axis=-1)  # [B, H]
    beyond = dist >= ahead[:, None]
    idx = np.where(beyond.any(axis=1), beyond.argmax(axis=1), H - 1)
    target = plan[np.arange(B), idx, :2] - pose[:, :2]
    c, s = np.cos(pose[:, 2]), np.sin(pose[:, 2])
    lx, ly = c * target[:, 0] + s * target[:, 1], -s * target[:, 0] + c * target[:, 1]
    ld2 = np.maximum(lx**2 + ly**2, 1e-6)
    steer = np.arctan(2.0 * wheelbase * ly / ld2)
    return steer, accel


def to_vehicle_control(steer: float, accel: float, max_steer: float, settings: CarlaSettings) -> "carla.VehicleControl":
    """``carla.VehicleControl`` for a front-wheel angle ``steer`` (rad, left positive) on a car
    whose wheels turn at most ``max_steer`` rad, and an acceleration ``accel`` (m/s^2)."""
    import carla

    return carla.VehicleControl(
        throttle=float(np.clip(accel / settings.max_accel, 0.0, 1.0)),
        steer=float(np.clip(-steer / max_steer, -1.0, 1.0)),
        brake=float(np.clip(-accel / settings.max_decel, 0.0, 1.0)),
    )


def log_agent_commands(actor_ids: Sequence[int], states: np.ndarray, valid: np.ndarray) -> list[Any]:
    """Batch commands that put log-replayed agents where the log has them: ``states`` ``[N, 5]``
    box-centre (x, y, yaw, vx, vy) at one step, ``valid`` bool ``[N]``; an agent not in the log
    then (its state is zeros) waits below the ground. ``actor_ids[k]`` is agent ``k``'s actor
    (0: none)."""
    import carla

    out: list[Any] = []
    for k, actor in enumerate(actor_ids):
        if not actor:
            continue
        x, y, yaw, vx, vy = states[k]
        z = SPAWN_Z if valid[k] else HIDDEN_Z
        out.append(carla.command.ApplyTransform(actor, to_carla_transform(x, y, yaw, z)))
        out.append(carla.command.ApplyTargetVelocity(actor, to_carla_vector(vx, vy) if valid[k] else carla.Vector3D()))
    return out


# --------------------------------------------------------------------------------- episode


def connect(settings: CarlaSettings) -> "carla.Client":
    """A client of the server at ``settings.host:port``; raises :class:`AvError` (one line: where,
    and what to start) when no CARLA server answers there within ``timeout_s``."""
    where = f"no CARLA server at {settings.host}:{settings.port}"
    try:
        with socket.create_connection((settings.host, settings.port), timeout=min(settings.timeout_s, 3.0)):
            pass
    except OSError as e:
        raise AvError(f"{where} ({e.strerror or e}); {START_HINT}") from None
    try:
        import carla
    except ImportError:
        raise AvError("the CARLA backend needs the carla client: pip install 'av-closedloop[carla]'") from None
    client = carla.Client(settings.host, settings.port)
    client.set_timeout(settings.timeout_s)
    try:
        client.get_server_version()
    except RuntimeError as e:
        raise AvError(f"{where} answering within {settings.timeout_s} s ({e}); {START_HINT}") from None
    return client


class CarlaEpisode:
    """One scenario on a CARLA server (see the module docstring). Use as a context manager::

        with CarlaEpisode(scenario, settings) as ep:
            ep.tick(control)  # one dt step
    """

    def __init__(self, scenario: Scenario, settings: CarlaSettings) -> None:
        self.scenario = scenario
        self.settings = settings.validate()
        self.client: Any = None
        self.world: Any = None
        self.ego: Any = None
        self.agent_ids: list[int] = []
        self.replayed_ids: list[int] = []  # the agents teleported along the log (0: not)
        self.max_steer = 1.2
        self.collisions: list[tuple[int, int]] = []  # (frame, other actor id)
        self.lane_invasions: list[int] = []  # frames
        self._sensors: list[Any] = []
        self._actors: list[int] = []
        self._original: Any = None
        self._tm: Any = None

    # ------------------------------------------------------------------ setup / teardown
    def __enter__(self) -> "CarlaEpisode":
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _setup(self) -> None:
        import carla

        from scenarios.opendrive import opendrive_text

        s, cfg = self.scenario, self.settings
        self.client = connect(cfg)
        if cfg.town:
            self.world = self.client.load_world(cfg.town)
        else:
            self.world = self.client.generate_opendrive_world(
                opendrive_text(s), carla.OpendriveGenerationParameters(
                    vertex_distance=2.0, max_road_length=50.0, wall_height=0.0, additional_width=0.6,
                    smooth_junctions=True, enable_mesh_visibility=True))
        self._original = self.world.get_settings()
        settings = self.world.get_settings()
        settings.synchronous_mode = True
        settings.fixed_delta_seconds = s.dt
        self.world.apply_settings(settings)
        if cfg.agents == "tm":
            self._tm = self.client.get_trafficmanager(cfg.tm_port)
            self._tm.set_synchronous_mode(True)
            self._tm.set_random_device_seed(cfg.seed)
        self._spawn()
        self.world.tick()

    def _spawn(self) -> None:
        import carla

        s, cfg = self.scenario, self.settings
        library = self.world.get_blueprint_library()
        t0 = s.history_steps
        x, y, yaw = s.ego[t0, :3]
        off = s.ego_vehicle.rear_axle_to_center
        bp = library.find(cfg.ego_blueprint)
        bp.set_attribute("role_name", "ego")
        self.ego = self.world.spawn_actor(
            bp, to_carla_transform(x + off * math.cos(yaw), y + off * math.sin(yaw), yaw, SPAWN_Z))
        self._actors.append(self.ego.id)
        self.max_steer = math.radians(max(w.max_steer_angle for w in self.ego.get_physics_control().wheels))
        self.ego.set_target_velocity(to_carla_vector(*s.ego[t0, 3:5]))
        for name, store in (("sensor.other.collision", "collision"), ("sensor.other.lane_invasion", "lane")):
            sensor = self.world.spawn_actor(library.find(name), carla.Transform(), attach_to=self.ego)
            self._sensors.append(sensor)
            if store == "collision":
                sensor.listen(lambda e: self.collisions.append((e.frame, e.other_actor.id)))
            else:
                sensor.listen(lambda e: self.lane_invasions.append(e.frame))

        batch = []
        present = s.agent_valid[:, t0:].any(axis=1)
        first = np.argmax(s.agent_valid[:, t0:], axis=1) + t0
        for k in range(s.num_agents):
            if not present[k]:
                continue
            kind = AgentType(int(s.agent_types[k]))
            x, y, yaw = s.agents[k, first[k], :3]
            z = SPAWN_Z if first[k] == t0 else HIDDEN_Z
            bp = library.find(AGENT_BLUEPRINTS[kind])
            cmd = carla.command.SpawnActor(bp, to_carla_transform(x, y, yaw, z))
            replay = cfg.agents == "log" or kind != AgentType.VEHICLE
            if replay:
                cmd = cmd.then(carla.command.SetSimulatePhysics(carla.command.FutureActor, False))
            else:
                cmd = cmd.then(carla.command.SetAutopilot(carla.command.FutureActor, True, cfg.tm_port))
            batch.append((k, cmd, replay))
        self.agent_ids = [0] * s.num_agents
        self.replayed_ids = [0] * s.num_agents
        for (k, _, replay), response in zip(batch, self.client.apply_batch_sync([b[1] for b in batch], False)):
            if not response.error:  # an agent CARLA cannot place (overlap) is left out, not fatal
                self.agent_ids[k] = response.actor_id
                self.replayed_ids[k] = response.actor_id if replay else 0
                self._actors.append(response.actor_id)

    def close(self) -> None:
        """Destroy every spawned sensor and actor and restore the server's settings (idempotent;
        never raises: teardown runs inside error handling)."""
        import contextlib

        for sensor in self._sensors:
            with contextlib.suppress(RuntimeError):
                sensor.stop()
                sensor.destroy()
        self._sensors = []
        if self.client is not None and self._actors:
            import carla

            with contextlib.suppress(RuntimeError):
                self.client.apply_batch_sync([carla.command.DestroyActor(a) for a in self._actors], False)
        self._actors = []
        if self._tm is not None:
            with contextlib.suppress(RuntimeError):
                self._tm.set_synchronous_mode(False)
            self._tm = None
        if self.world is not None and self._original is not None:
            with contextlib.suppress(RuntimeError):
                self.world.apply_settings(self._original)
            self._original = None

    # ------------------------------------------------------------------------- stepping
    def tick(self, control: Any, t_next: int) -> None:
        """Apply the ego's ``control``, put replayed agents at log step ``t_next`` (past the log's
        end they stay where they are), advance one step."""
        s = self.scenario
        self.ego.apply_control(control)
        if t_next < s.num_steps:
            self.client.apply_batch(log_agent_commands(self.replayed_ids, s.agents[:, t_next], s.agent_valid[:, t_next]))
        self.world.tick()

    def read(self) -> dict[str, np.ndarray]:
        """The world now: ``ego`` [5] rear-axle state, ``ego_accel`` [2] body frame, ``yaw_rate``
        rad/s, and ``agents`` [N, 5] box-centre states of the spawned agents."""
        t = self.ego.get_transform()
        x, y, yaw = from_carla_transform(t)
        off = self.scenario.ego_vehicle.rear_axle_to_center
        vx, vy = from_carla_vector(self.ego.get_velocity())
        ax, ay = from_carla_vector(self.ego.get_acceleration())
        c, s_ = math.cos(yaw), math.sin(yaw)
        agents = np.zeros((self.scenario.num_agents, 5))
        actors = {a.id: a for a in self.world.get_actors([i for i in self.agent_ids if i])}
        for k, actor_id in enumerate(self.agent_ids):
            actor = actors.get(actor_id)
            if actor is not None:
                agents[k, :3] = from_carla_transform(actor.get_transform())
                agents[k, 3:] = from_carla_vector(actor.get_velocity())
        return {
            "ego": np.array([x - off * c, y - off * s_, yaw, vx, vy]),
            "ego_accel": np.array([c * ax + s_ * ay, -s_ * ax + c * ay]),
            "yaw_rate": np.array(-math.radians(self.ego.get_angular_velocity().z)),
            "agents": agents,
        }


# ------------------------------------------------------------------------------- simulator


@dataclass(frozen=True)
class CarlaState:
    """Where a CARLA run is (the world itself lives on the server): the log step ``t``, the
    snapshot there, the plan being tracked (``plan`` ``[H, 3]`` local frame, made at step
    ``plan_t``), and the sensor event counts so far."""

    t: int
    snapshot: Snapshot
    plan: np.ndarray | None
    plan_t: int
    collisions: int
    lane_invasions: int


class CarlaSimulator:
    """The :class:`~closedloop.sim.base.Simulator` protocol on a CARLA server, for batches of one
    of the ``scenarios`` it was built with. ``settings``: :class:`CarlaSettings` fields."""

    name = "carla"

    def __init__(self, scenarios: Sequence[Scenario], **settings: Any) -> None:
        self.scenarios = {s.id: s for s in scenarios}
        self.settings = CarlaSettings(**settings).validate()
        self.episode: CarlaEpisode | None = None
        self._batch: ScenarioBatch | None = None
        self._t = -1  # the log step of the latest state

    @property
    def agent_mode(self) -> str:
        """``"idm"`` (reactive: the Traffic Manager drives the agents) or ``"log"``."""
        return "idm" if self.settings.agents == "tm" else "log"

    def __enter__(self) -> "CarlaSimulator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.episode is not None:
            self.episode.close()
            self.episode = None

    def reset(self, batch: ScenarioBatch) -> CarlaState:
        if batch.batch_size != 1:
            raise AvError(f"the CARLA backend runs one scenario at a time, got a batch of {batch.batch_size}")
        (sid,) = batch.ids
        if sid not in self.scenarios:
            raise AvError(f"carla: scenario {sid!r} was not given to the simulator")
        self.close()
        self.episode = CarlaEpisode(self.scenarios[sid], self.settings).__enter__()
        self._batch = batch
        t = self._t = int(batch.history_steps[0])
        return CarlaState(t, self._snapshot(t, 0.0), None, t, 0, 0)

    def step(self, state: CarlaState, trajectory: Trajectory | None = None) -> CarlaState:
        ep = self.episode
        if ep is None or state.t != self._t:
            raise AvError("carla: step needs the latest state of a reset episode (CARLA cannot rewind)")
        plan, plan_t = state.plan, state.plan_t
        ego = state.snapshot.ego[0].double().cpu().numpy()
        if trajectory is not None:
            plan, plan_t = _to_local(trajectory.poses[0].double().cpu().numpy(), ego[:3]), state.t
        if plan is None:  # no plan yet: hold still
            control = to_vehicle_control(0.0, -self.settings.max_decel, ep.max_steer, self.settings)
        else:
            steer, accel = track_plan(
                ego[None, :3], np.array([math.hypot(ego[3], ego[4])]), plan[None], np.array([(state.t - plan_t) * ep.scenario.dt]),
                ep.scenario.dt, np.array([ep.scenario.ego_vehicle.wheelbase]), self.settings)
            control = to_vehicle_control(float(steer[0]), float(accel[0]), ep.max_steer, self.settings)
        ep.tick(control, state.t + 1)
        snap = self._snapshot(state.t + 1, float(state.snapshot.ego_yaw_rate[0]))
        self._t = state.t + 1
        return CarlaState(state.t + 1, snap, plan, plan_t, len(ep.collisions), len(ep.lane_invasions))

    def snapshot(self, state: CarlaState) -> Snapshot:
        return state.snapshot

    def _snapshot(self, t: int, prev_yaw_rate: float) -> Snapshot:
        assert self.episode is not None and self._batch is not None
        w = self.episode.read()
        s = self.episode.scenario
        valid = s.agent_valid[:, min(t, s.num_steps - 1)] & np.array([a != 0 for a in self.episode.agent_ids], bool)
        f = torch.float32
        return Snapshot(
            batch=self._batch,
            t=torch.tensor([t]),
            ego=torch.tensor(w["ego"], dtype=f)[None],
            ego_accel=torch.tensor(w["ego_accel"], dtype=f)[None],
            ego_yaw_rate=torch.tensor([float(w["yaw_rate"])], dtype=f),
            ego_yaw_accel=torch.tensor([(float(w["yaw_rate"]) - prev_yaw_rate) / s.dt], dtype=f),
            agents=torch.tensor(np.where(valid[:, None], w["agents"], 0.0), dtype=f)[None],
            agent_valid=torch.tensor(valid)[None],
        )


def _to_local(poses: np.ndarray, ego: np.ndarray) -> np.ndarray:
    """Plan ``poses`` ``[H, 3]`` in the ego frame of ``ego`` (x, y, yaw) -> local frame."""
    c, s = math.cos(ego[2]), math.sin(ego[2])
    x = ego[0] + c * poses[:, 0] - s * poses[:, 1]
    y = ego[1] + s * poses[:, 0] + c * poses[:, 1]
    return np.stack([x, y, poses[:, 2] + ego[2]], axis=1)


__all__ = [
    "CarlaEpisode", "CarlaSettings", "CarlaSimulator", "CarlaState", "connect", "from_carla_transform",
    "from_carla_vector", "log_agent_commands", "to_carla_transform", "to_carla_vector", "to_vehicle_control",
    "track_plan",
]
