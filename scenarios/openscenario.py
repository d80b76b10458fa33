"""OpenSCENARIO 1.2 export of a scenario, referencing its OpenDRIVE road network.

What the file holds (positions in the scenario's local frame, as in :mod:`scenarios.opendrive`;
times in seconds from the scenario's start step ``history_steps``, which is simulation time 0):

* Entities: ``ego`` (a car with the scenario's ego size; OpenSCENARIO's vehicle origin is the rear
  axle, like ours; property ``type=ego_vehicle`` as CARLA's ScenarioRunner expects) and one entity
  per agent that is present at or after the start step, ``agent<k>`` with ``k`` the agent's index
  (property ``instance`` = the dataset's instance token). Vehicles are cars, cyclists bicycles,
  pedestrians pedestrians, static objects obstacles; agents' origin is their box centre.
* Init: the ego is placed at its start pose with its start speed and given its route (the
  centreline midpoints of the scenario's route lanes); every agent is placed at its first pose
  from the start step on.
* Story: each agent follows its logged trajectory (``FollowTrajectoryAction``, a polyline with
  the log's times, timing absolute), the logged motion of variants included; vertices that
  linear interpolation reproduces within :data:`TRACK_TOLERANCE` are left out.
* Variant events: a scenario derived by a variant transform declares its provenance as parameters
  (``av_transform``, ``av_parent``, ``av_seed``, ``av_<param>``) and gets one event per transform
  step, at its onset time where the transform has one, whose action is a ``CustomCommandAction``
  of type ``av.variant`` with the step as JSON (simulators that do not know it ignore it; the
  changed motion itself is in the agents' trajectories).
* Stop trigger: the scenario's end.

Output is byte-reproducible (fixed creation date).
"""

from __future__ import annotations

import datetime
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from av.fileio import atomic_write_bytes
from av.types import AgentType, Scenario

OSC_MINOR = 2
"""OpenSCENARIO 1.2 (the newest that every ASAM checker rule of asam-qc-openscenarioxml 1.0 covers)."""
FIXED_DATE = datetime.datetime(2000, 1, 1)
"""Creation date of every export (keeps exports byte-reproducible)."""
EGO = "ego"
TRACK_TOLERANCE = (0.02, 0.01)
"""Written trajectories reproduce every logged step within this (m, rad) by linear interpolation."""
ONSET_PARAMS = ("onset_s", "time_s")
"""Transform parameters that give the time (s after the start step) at which a variant acts."""
_HEIGHT_M = {AgentType.VEHICLE: 1.6, AgentType.PEDESTRIAN: 1.7, AgentType.CYCLIST: 1.5, AgentType.STATIC: 1.0}
_MASS_KG = {AgentType.VEHICLE: 1500.0, AgentType.PEDESTRIAN: 75.0, AgentType.CYCLIST: 90.0, AgentType.STATIC: 50.0}
_PEDESTRIAN_MODEL = "walker.pedestrian.0001"  # a CARLA blueprint name


def simplify_track(t: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Indices of the vertices of a logged track worth writing: first and last, and enough in
    between that linear interpolation in time between them reproduces every step within
    :data:`TRACK_TOLERANCE` (m, rad). ``t`` float ``[S]`` s, ``poses`` float ``[S, 3]``
    (x, y, yaw); returns int ``[K]`` ascending. (nuScenes boxes are 2 Hz key frames interpolated
    to 10 Hz, so most steps add nothing.)"""
    tol_m, tol_rad = TRACK_TOLERANCE
    unwrapped = np.concatenate([poses[:, :2], np.unwrap(poses[:, 2:3], axis=0)], axis=1)
    keep = {0, len(t) - 1}
    pending = [(0, len(t) - 1)]
    while pending:
        a, b = pending.pop()
        if b - a < 2:
            continue
        w = ((t[a + 1 : b] - t[a]) / (t[b] - t[a]))[:, None]
        err = np.abs(unwrapped[a] + w * (unwrapped[b] - unwrapped[a]) - unwrapped[a + 1 : b])
        bad = np.maximum(np.hypot(err[:, 0], err[:, 1]) / tol_m, err[:, 2] / tol_rad)
        if bad.max() <= 1.0:
            continue
        mid = a + 1 + int(np.argmax(bad))
        keep.add(mid)
        pending += [(a, mid), (mid, b)]
    return np.array(sorted(keep))


def agent_name(k: int) -> str:
    """Entity name of agent ``k`` (its index in the scenario)."""
    return f"agent{k:03d}"


def build_openscenario(scenario: Scenario, road_file: str) -> ET.Element:
    """The ``<OpenSCENARIO>`` element of ``scenario`` (see the module docstring); ``road_file``
    is the OpenDRIVE path written into ``RoadNetwork/LogicFile`` (relative to the .xosc)."""
    from scenariogeneration import xosc

    t0 = scenario.history_steps
    times = scenario.timestamps - scenario.timestamps[t0]
    entities = xosc.Entities()
    init = xosc.Init()
    story_act = xosc.Act("log", _time_trigger(xosc, "log start", 0.0))

    v = scenario.ego_vehicle
    ego = xosc.Vehicle(
        "ego_vehicle", xosc.VehicleCategory.car,
        xosc.BoundingBox(v.width, v.length, 1.6, v.rear_axle_to_center, 0.0, 0.8),
        xosc.Axle(0.7, 0.6, v.width * 0.9, v.wheelbase, 0.3), xosc.Axle(0.0, 0.6, v.width * 0.9, 0.0, 0.3),
        max_speed=50.0, max_acceleration=4.0, max_deceleration=10.0)
    ego.add_property("type", "ego_vehicle")
    entities.add_scenario_object(EGO, ego)
    x, y, yaw, vx, vy = scenario.ego[t0]
    init.add_init_action(EGO, xosc.TeleportAction(_pose(xosc, x, y, yaw)))
    init.add_init_action(EGO, xosc.AbsoluteSpeedAction(
        float(math.hypot(vx, vy)), xosc.TransitionDynamics(xosc.DynamicsShapes.step, xosc.DynamicsDimension.time, 0.0)))
    if scenario.route.size:
        route = xosc.Route("ego route")
        for lane in scenario.route:
            pts = scenario.map.lane(int(lane))
            route.add_waypoint(_pose(xosc, *pts[len(pts) // 2]), xosc.RouteStrategy.shortest)
        if len(scenario.route) == 1:  # a route needs two waypoints: the lane's end
            route.add_waypoint(_pose(xosc, *scenario.map.lane(int(scenario.route[0]))[-1]), xosc.RouteStrategy.shortest)
        init.add_init_action(EGO, xosc.AssignRouteAction(route))

    for k in range(scenario.num_agents):
        steps = np.flatnonzero(scenario.agent_valid[k, t0:]) + t0
        if steps.size == 0:
            continue
        name = agent_name(k)
        entities.add_scenario_object(name, _agent_object(xosc, scenario, k))
        track = scenario.agents[k, steps]
        init.add_init_action(name, xosc.TeleportAction(_pose(xosc, *track[0, :3])))
        if steps.size < 2:
            continue
        keep = simplify_track(times[steps], track[:, :3])
        trajectory = xosc.Trajectory(f"{name} log", False)
        trajectory.add_shape(xosc.Polyline([float(t) for t in times[steps][keep]],
                                           [_pose(xosc, *row[:3]) for row in track[keep]]))
        event = xosc.Event(f"{name} follows its log", xosc.Priority.override)
        event.add_action("follow log", xosc.FollowTrajectoryAction(
            trajectory, xosc.FollowingMode.position, xosc.ReferenceContext.absolute, 1.0, 0.0))
        event.add_trigger(_time_trigger(xosc, f"{name} start", 0.0))
        story_act.add_maneuver_group(_group(xosc, name, name, event))

    parameters = xosc.ParameterDeclarations()
    if scenario.provenance is not None:
        _declare_provenance(xosc, parameters, scenario)
        story_act.add_maneuver_group(_variant_group(xosc, scenario))

    story = xosc.Story("av scenario")
    story.add_act(story_act)
    board = xosc.StoryBoard(init, _time_trigger(xosc, "end", float(times[-1]), "stop"))
    board.add_story(story)
    description = (f"{scenario.id}: {scenario.source.dataset} {scenario.source.scene_name} "
                   f"({scenario.source.location}), local frame = map frame - {tuple(scenario.source.origin)} m")
    sce = xosc.Scenario(
        description, "av", parameters, entities, board, xosc.RoadNetwork(road_file), xosc.Catalog(),
        osc_minor_version=OSC_MINOR, creation_date=FIXED_DATE)
    return sce.get_element()


def _pose(xosc: Any, x: float, y: float, yaw: float) -> Any:
    return xosc.WorldPosition(float(x), float(y), 0.0, float(yaw) % (2 * math.pi), 0.0, 0.0)


def _time_trigger(xosc: Any, name: str, t: float, kind: str = "start") -> Any:
    cond = xosc.ValueTrigger(name, 0.0, xosc.ConditionEdge.none,
                             xosc.SimulationTimeCondition(float(t), xosc.Rule.greaterThan), kind)
    group = xosc.ConditionGroup(kind)
    group.add_condition(cond)
    trigger = xosc.Trigger(kind)
    trigger.add_conditiongroup(group)
    return trigger


def _group(xosc: Any, name: str, actor: str, *events: Any) -> Any:
    maneuver = xosc.Maneuver(name)
    for e in events:
        maneuver.add_event(e)
    group = xosc.ManeuverGroup(name)
    group.add_actor(actor)
    group.add_maneuver(maneuver)
    return group


def _agent_object(xosc: Any, scenario: Scenario, k: int) -> Any:
    kind = AgentType(int(scenario.agent_types[k]))
    length, width = (float(a) for a in scenario.agent_sizes[k])
    box = xosc.BoundingBox(width, length, _HEIGHT_M[kind], 0.0, 0.0, _HEIGHT_M[kind] / 2)
    if kind == AgentType.PEDESTRIAN:
        obj = xosc.Pedestrian("pedestrian", _MASS_KG[kind], xosc.PedestrianCategory.pedestrian, box,
                              model=_PEDESTRIAN_MODEL)
    elif kind == AgentType.STATIC:
        obj = xosc.MiscObject("static object", _MASS_KG[kind], xosc.MiscObjectCategory.obstacle, box)
    else:
        category = xosc.VehicleCategory.bicycle if kind == AgentType.CYCLIST else xosc.VehicleCategory.car
        axle = 0.35 * length
        obj = xosc.Vehicle(
            kind.name.lower(), category, box,
            xosc.Axle(0.6, 0.6, width * 0.9, axle, 0.3), xosc.Axle(0.0, 0.6, width * 0.9, -axle, 0.3),
            max_speed=50.0, max_acceleration=6.0, max_deceleration=10.0)
    obj.add_property("instance", scenario.agent_ids[k])
    return obj


def _steps(scenario: Scenario) -> list[dict[str, Any]]:
    """The provenance's transform steps: ``[{"transform": name, "params": {...}}, ...]``."""
    p = scenario.provenance
    assert p is not None
    if p.transform == "chain":
        return [dict(s) for s in p.params.get("steps", [])]
    return [{"transform": p.transform, "params": dict(p.params)}]


def _declare_provenance(xosc: Any, parameters: Any, scenario: Scenario) -> None:
    p = scenario.provenance
    assert p is not None
    string, integer = xosc.ParameterType.string, xosc.ParameterType.int
    parameters.add_parameter(xosc.Parameter("av_transform", string, p.transform))
    parameters.add_parameter(xosc.Parameter("av_parent", string, p.parent_id))
    parameters.add_parameter(xosc.Parameter("av_seed", integer, str(int(p.seed))))
    for i, step in enumerate(_steps(scenario)):
        prefix = "av_" if p.transform != "chain" else f"av_step{i}_"
        for key, value in sorted(step.get("params", {}).items()):
            kind = xosc.ParameterType.double if isinstance(value, float) else string
            parameters.add_parameter(xosc.Parameter(
                prefix + key, kind, repr(value) if kind == xosc.ParameterType.double else json.dumps(value)))


def _variant_group(xosc: Any, scenario: Scenario) -> Any:
    events = []
    for i, step in enumerate(_steps(scenario)):
        params = step.get("params", {})
        onset = next((float(params[k]) for k in ONSET_PARAMS if k in params), 0.0)
        event = xosc.Event(f"variant {i}: {step['transform']}", xosc.Priority.parallel)
        event.add_action(f"variant {i}", xosc.UserDefinedAction(xosc.CustomCommandAction(
            "av.variant", json.dumps(step, sort_keys=True, default=str))))
        event.add_trigger(_time_trigger(xosc, f"variant {i} onset", max(onset, 0.0)))
        events.append(event)
    return _group(xosc, "variant", EGO, *events)


def openscenario_text(scenario: Scenario, road_file: str) -> str:
    """``scenario`` as OpenSCENARIO XML text referencing the OpenDRIVE file ``road_file``."""
    element = build_openscenario(scenario, road_file)
    ET.indent(element)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(element, encoding="unicode") + "\n"


def write_openscenario(scenario: Scenario, path: Path) -> tuple[Path, Path]:
    """Write ``path`` (.xosc) and, beside it with the same stem, the ``.xodr`` it references
    (atomically each). Returns ``(xosc path, xodr path)``."""
    from scenarios.opendrive import write_opendrive

    path = Path(path)
    road = path.with_suffix(".xodr")
    write_opendrive(scenario, road)
    atomic_write_bytes(path, openscenario_text(scenario, road.name).encode())
    return path, road
