"""``av bench``: throughput and memory figures, printed as ONE JSON object on stdout.

``av bench sim`` times the builtin simulator's step (reactive IDM agents, ego-agent and
agent-agent collision checks) on synthetic batches (a straight four-lane road, random agents at
random speeds, no data needed) beside a bare vectorised NumPy kernel of the same bicycle update
and box-overlap test, in the same process. With ``--store`` it also times the real scenario
windows of a store, all agents, tiled to each batch size, counting valid agents beside the
padded slots (``"sim_store"``). Progress goes to stderr.

It also times a full closed-loop evaluation (simulator + IDM planner + every metric) of
``--eval-scenarios`` 15 s scenarios (synthetic drives from ``av data synth``, repeated) under the
``"eval"`` key. ``av bench variants`` times variant generation + validation; ``av bench all``
prints every figure in one object. ``av bench student`` times the student (eager, onnxruntime,
TensorRT where given, the whole vehicle-runtime call) beside the teacher network.

The JSON is built as a dict by functions such as :func:`bench_sim`; other benchmarks add their
own top-level keys to the same object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from av.batch import ScenarioBatch, collate
from av.errors import AvError
from av.types import AgentType, MapData, Scenario, Source, VehicleParams

DT = 0.1
HISTORY = 10
LANE_WIDTH = 3.5
LANES = 4
ROAD = (-50.0, 600.0)


def _road_map() -> MapData:
    """Four parallel lanes along +x (y = 0, 3.5, 7, 10.5), 1 m point spacing, one drivable box."""
    xs = np.arange(ROAD[0], ROAD[1] + 0.5, 1.0)
    lanes = [np.stack([xs, np.full_like(xs, k * LANE_WIDTH), np.zeros_like(xs)], 1) for k in range(LANES)]
    h = LANE_WIDTH / 2

    def box(y0: float, y1: float) -> np.ndarray:
        return np.array([[ROAD[0], y0], [ROAD[1], y0], [ROAD[1], y1], [ROAD[0], y1]])

    def offsets(n: Sequence[int]) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(n)]).astype(np.int64)

    return MapData(
        lane_ids=tuple(f"lane-{k}" for k in range(LANES)),
        lane_is_connector=np.zeros(LANES, bool),
        lane_speed_limit=np.full(LANES, 15.0),
        lane_point_offsets=offsets([len(xs)] * LANES),
        lane_points=np.concatenate(lanes),
        lane_successor_offsets=np.zeros(LANES + 1, np.int64),
        lane_successors=np.zeros(0, np.int64),
        lane_polygon_offsets=offsets([4] * LANES),
        lane_polygon_points=np.concatenate([box(k * LANE_WIDTH - h, k * LANE_WIDTH + h) for k in range(LANES)]),
        drivable_ring_offsets=offsets([4]),
        drivable_ring_points=box(-h, (LANES - 1) * LANE_WIDTH + h),
    )


def synthetic_scenarios(batch: int, agents: int, steps: int, seed: int = 0) -> list[Scenario]:
    """``batch`` scenarios of ``HISTORY + steps + 1`` steps on the four-lane road: the ego in lane 0
    at 10 m/s, ``agents`` vehicles in random lanes at random positions and constant speeds."""
    rng = np.random.default_rng(seed)
    T = HISTORY + steps + 1
    t = np.arange(T) * DT
    road_map = _road_map()
    out = []
    for b in range(batch):
        ego = np.zeros((T, 5))
        ego[:, 0], ego[:, 3] = 50.0 + 10.0 * t, 10.0
        lane = rng.integers(0, LANES, agents)
        x0 = rng.uniform(0.0, 300.0, agents)
        v = rng.uniform(5.0, 15.0, agents)
        states = np.zeros((agents, T, 5))
        states[..., 0] = x0[:, None] + v[:, None] * t
        states[..., 1] = (lane * LANE_WIDTH)[:, None]
        states[..., 3] = v[:, None]
        sizes = np.stack([rng.uniform(4.0, 5.0, agents), rng.uniform(1.8, 2.0, agents)], 1)
        out.append(Scenario(
            id=f"bench-{b}", source=Source("synthetic", f"bench-{b}", f"bench-{b}", "straight-road"),
            dt=DT, timestamps=t, history_steps=HISTORY, ego=ego, ego_vehicle=VehicleParams(),
            agent_ids=tuple(f"a{i}" for i in range(agents)),
            agent_types=np.full(agents, int(AgentType.VEHICLE), np.int8), agent_sizes=sizes,
            agents=states, agent_valid=np.ones((agents, T), bool), map=road_map, route=np.array([0]),
        ))
    return out


# ---------------------------------------------------------------------------- NumPy reference kernel
def numpy_kernel_step(pose: np.ndarray, speed: np.ndarray, steer: np.ndarray, accel: np.ndarray,
                      wheelbase: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One bicycle step (exact arc, no reversing) of ``[B, M]`` bodies, then the overlap test of
    every pair (bounding-circle broad phase, separating axes on the survivors).

    ``pose`` ``[B, M, 3]`` rear axle = box centre here; ``speed``, ``steer``, ``accel``,
    ``wheelbase`` ``[B, M]``; ``sizes`` ``[B, M, 2]``. Returns the new pose and bool ``[B, M]``
    "overlaps something".
    """
    v_end = np.maximum(speed + accel * DT, 0.0)
    dist = 0.5 * (speed + v_end) * DT
    half = 0.5 * dist * np.tan(steer) / wheelbase
    chord = dist * np.sinc(half / np.pi)
    heading = pose[..., 2] + half
    new = np.stack([pose[..., 0] + chord * np.cos(heading), pose[..., 1] + chord * np.sin(heading),
                    pose[..., 2] + 2 * half], -1)
    B, M, _ = new.shape
    radius = 0.5 * np.hypot(sizes[..., 0], sizes[..., 1])
    dx = new[:, :, None, 0] - new[:, None, :, 0]
    dy = new[:, :, None, 1] - new[:, None, :, 1]
    near = dx * dx + dy * dy <= (radius[:, :, None] + radius[:, None, :]) ** 2
    near &= np.triu(np.ones((M, M), bool), 1)
    b, i, j = np.nonzero(near)
    c, s = np.cos(new[..., 2]), np.sin(new[..., 2])
    ca, sa, cb, sb = c[b, i], s[b, i], c[b, j], s[b, j]
    hla, hwa = 0.5 * sizes[b, i, 0], 0.5 * sizes[b, i, 1]
    hlb, hwb = 0.5 * sizes[b, j, 0], 0.5 * sizes[b, j, 1]
    ddx, ddy = new[b, j, 0] - new[b, i, 0], new[b, j, 1] - new[b, i, 1]
    cd, sd = np.abs(ca * cb + sa * sb), np.abs(sa * cb - ca * sb)
    sep = np.abs(ddx * ca + ddy * sa) > hla + hlb * cd + hwb * sd
    sep |= np.abs(ddy * ca - ddx * sa) > hwa + hlb * sd + hwb * cd
    sep |= np.abs(ddx * cb + ddy * sb) > hlb + hla * cd + hwa * sd
    sep |= np.abs(ddy * cb - ddx * sb) > hwb + hla * sd + hwa * cd
    hit = np.zeros((B, M), bool)
    hit[b[~sep], i[~sep]] = True
    hit[b[~sep], j[~sep]] = True
    return new, hit


def _time_numpy_kernel(batch: ScenarioBatch, steps: int) -> float:
    """Seconds per step of :func:`numpy_kernel_step` on the ego + agents of ``batch``."""
    start = int(batch.history_steps[0])
    agents = batch.agents[:, :, start].numpy().astype(np.float64)
    ego = batch.ego[:, start].numpy().astype(np.float64)
    pose = np.concatenate([ego[:, None, :3], agents[..., :3]], 1)
    speed = np.concatenate([ego[:, None, 3], np.hypot(agents[..., 3], agents[..., 4])], 1)
    sizes = np.concatenate([batch.ego_dims[:, None, :2].numpy(), batch.agent_sizes.numpy()], 1).astype(np.float64)
    steer = np.zeros_like(speed)
    accel = np.zeros_like(speed)
    wheelbase = np.full_like(speed, 2.7)
    numpy_kernel_step(pose, speed, steer, accel, wheelbase, sizes)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        pose, _ = numpy_kernel_step(pose, speed, steer, accel, wheelbase, sizes)
    return (time.perf_counter() - t0) / steps


def tensor_bytes(value: Any, seen: set[int] | None = None) -> int:
    """Bytes of every distinct tensor storage reachable from ``value`` (dataclasses, tuples, lists)."""
    seen = set() if seen is None else seen
    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        key = storage.data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return storage.nbytes()
    if is_dataclass(value) and not isinstance(value, type):
        return sum(tensor_bytes(getattr(value, f.name), seen) for f in fields(value))
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v, seen) for v in value)
    return 0


def _peak_rss_mib() -> float:
    """The process's peak resident memory so far, MiB (Linux ``ru_maxrss`` is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _constant_velocity_plan(batch: ScenarioBatch, t: torch.Tensor, horizon: int, chunk: int = 128) -> Any:
    """The constant-velocity planner's trajectory for every scenario of ``batch`` at steps ``t``
    ``[B]``, observed ``chunk`` scenarios at a time: preparing an observation's map takes memory in
    proportion to its batch, and the memory figure is the simulator's."""
    from dataclasses import replace

    from av.observation import Trajectory
    from av.observe import ObservationSpec, observe
    from closedloop.planner import make_planner

    planner, spec = make_planner("constant_velocity", horizon_steps=horizon), ObservationSpec()
    plans = []
    for lo in range(0, batch.batch_size, chunk):
        part = replace(batch, **{f.name: getattr(batch, f.name)[lo:lo + chunk] for f in fields(batch) if f.name != "dt"})
        plans.append(planner.plan(observe(part, t[lo:lo + chunk], spec)))
    return Trajectory(poses=torch.cat([p.poses for p in plans]), dt=plans[0].dt)


def _time_sim(batch: ScenarioBatch, steps: int) -> tuple[float, Any, tuple[float, float], float, float]:
    """Seconds per ``step`` of the builtin simulator (IDM agents, all collision checks), tracking a
    constant-velocity plan set once; returns the time, the state reached, the wall and process
    CPU seconds of the ``reset``, the mean number of valid agents per timed step (over the whole batch) and the
    process CPU seconds per step (all threads; steadier than wall time on a shared machine)."""
    from closedloop.sim import BuiltinSimulator

    sim = BuiltinSimulator(agents="idm")
    t0, c0 = time.perf_counter(), time.process_time()
    state = sim.reset(batch)
    reset_s, reset_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    state = sim.set_plan(state, _constant_velocity_plan(batch, state.t, steps + 10))
    state = sim.step(state)  # warm-up
    valid = torch.zeros((), dtype=torch.long)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps - 1):
        state = sim.step(state)
        valid += state.agent_valid.sum()
    cpu = (time.process_time() - c0) / (steps - 1)
    return (time.perf_counter() - t0) / (steps - 1), state, (reset_s, reset_cpu_s), float(valid) / (steps - 1), cpu


def bench_sim(batches: Sequence[int] = (1, 64, 1024), agents: int = 32, steps: int = 50, seed: int = 0) -> dict:
    """Agent-steps per second of the simulator and of the NumPy kernel per batch size, and the
    bytes held by a simulation state at the largest batch (``{"sim": [...], "memory": {...}}``)."""
    if steps < 2 or agents < 1 or not batches or min(batches) < 1:
        raise AvError("bench sim: need --steps >= 2, --agents >= 1 and batch sizes >= 1")
    rows, state_bytes = [], {}
    for B in batches:
        print(f"bench sim: B={B} N={agents}: building {B} scenarios", file=sys.stderr)
        batch = collate(synthetic_scenarios(B, agents, steps, seed))
        per_step, state, reset, _, cpu = _time_sim(batch, steps)
        kernel = _time_numpy_kernel(batch, steps)
        sim_rate, kernel_rate = B * agents / per_step, B * agents / kernel
        print(f"  sim {per_step * 1e3:.2f} ms/step, numpy kernel {kernel * 1e3:.2f} ms/step", file=sys.stderr)
        rows.append({
            "batch": B, "agents": agents, "steps": steps,
            "sim_ms_per_step": round(per_step * 1e3, 3),
            "agent_steps_per_s": round(sim_rate),
            "kernel_agent_steps_per_s": round(kernel_rate),
            "ratio": round(kernel_rate / sim_rate, 3),
            "sim_cpu_ms_per_step": round(cpu * 1e3, 3),
            "reset_s": round(reset[0], 3),
            "reset_cpu_s": round(reset[1], 3),
            "peak_rss_mib": round(_peak_rss_mib()),
        })
        state_bytes[B] = tensor_bytes(state)
    largest = max(batches)
    memory = {f"state_bytes_b{largest}": state_bytes[largest]}
    if 1024 in state_bytes:
        memory["state_bytes_b1024"] = state_bytes[1024]
    return {"sim": rows, "memory": memory, "torch_threads": torch.get_num_threads()}


def bench_sim_store(store: Path, batches: Sequence[int] = (1, 64, 1024), steps: int = 50) -> dict:
    """The simulator on the real scenario windows of ``store`` with all their agents, tiled (in
    store order, repeated) to each batch size: ``{"sim_store": [...]}``, one row per batch size.

    Each row counts the VALID agents (``valid_agents``: mean per scenario over the timed steps)
    beside the padded slots (``agents``), and gives ``valid_agent_steps_per_s`` (the figure that
    counts), ``padded_agent_steps_per_s``, the process CPU time per step ``sim_cpu_ms_per_step``
    (all threads), the ``reset`` wall and CPU times ``reset_s``, ``reset_cpu_s`` and ``peak_rss_mib``,
    the process's peak resident memory once the row is done (rows run in the order given, so
    give the batch sizes ascending to read each row's own peak).
    """
    from closedloop.bench import tile
    from scenarios.store import read_store

    if steps < 2 or not batches or min(batches) < 1:
        raise AvError("bench sim: need --steps >= 2 and batch sizes >= 1")
    windows = read_store(store)
    if not windows:
        raise AvError(f"bench sim: store {store} holds no scenarios")
    rows = []
    for B in batches:
        print(f"bench sim: B={B}: {len(windows)} real windows from {store}, tiled", file=sys.stderr)
        batch = collate(tile(windows, B))
        per_step, state, reset, valid, cpu = _time_sim(batch, steps)
        del state
        N = batch.agents.shape[1]
        print(f"  sim {per_step * 1e3:.2f} ms/step, {valid / B:.1f} valid of {N} agents, reset {reset[0]:.2f} s",
              file=sys.stderr)
        rows.append({
            "batch": B, "windows": len(windows), "agents": N, "valid_agents": round(valid / B, 1), "steps": steps,
            "sim_ms_per_step": round(per_step * 1e3, 3),
            "sim_cpu_ms_per_step": round(cpu * 1e3, 3),
            "valid_agent_steps_per_s": round(valid / per_step),
            "padded_agent_steps_per_s": round(B * N / per_step),
            "reset_s": round(reset[0], 3),
            "reset_cpu_s": round(reset[1], 3),
            "peak_rss_mib": round(_peak_rss_mib()),
        })
        del batch
    return {"sim_store": rows, "store": str(store)}


def machine() -> dict[str, Any]:
    """The machine a figure was measured on: CPU cores (all, and usable by this process), torch
    intra-op threads and the 1/5/15-minute load averages at this moment."""
    import os

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cores": os.cpu_count(), "usable_cores": usable, "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in load]}


def _emit(figures: dict[str, Any], before: dict[str, Any]) -> None:
    """Print ``figures`` as one JSON object with the machine before and after the measurements."""
    print(json.dumps({**figures, "machine": {"before": before, "after": machine()}}))


def _sim(args: argparse.Namespace) -> int:
    try:
        batches = [int(b) for b in str(args.batches).split(",") if b.strip()]
    except ValueError:
        raise AvError(f"--batches: expected comma-separated integers, got {args.batches!r}") from None
    if args.threads is not None:
        if args.threads < 1:
            raise AvError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    before = machine()
    figures = bench_sim(batches, args.agents, args.steps, args.seed)
    if args.store is not None:
        figures.update(bench_sim_store(args.store, batches, args.steps))
    if args.eval_scenarios > 0:
        figures["eval"] = _bench_eval(args.eval_scenarios, args.seed)
    _emit(figures, before)
    return 0


def _synthetic_drives(drives: int, seed: int) -> list[Scenario]:
    """Drives written by ``av data synth`` to a temporary dataroot and read back by the adapter."""
    import tempfile
    from pathlib import Path

    from av.data.nuscenes import ImportConfig, load_nuscenes
    from av.data.synth import SynthConfig, write_synthetic_dataroot

    with tempfile.TemporaryDirectory() as tmp:
        cfg = SynthConfig(drives=drives, seed=seed)
        root = write_synthetic_dataroot(Path(tmp) / "root", cfg)
        return list(load_nuscenes(root, ImportConfig(version=cfg.version)))


def _bench_eval(n: int, seed: int) -> dict:
    from closedloop.bench import bench_eval, tile

    print(f"bench eval: {n} scenarios (synthetic drives, repeated), IDM planner", file=sys.stderr)
    return bench_eval(tile(_synthetic_drives(12, seed), n), planner="idm", agents="log")


def _variants(args: argparse.Namespace) -> int:
    before = machine()
    _emit({"variants": _bench_variants(args.seed)}, before)
    return 0


def _bench_variants(seed: int) -> dict:
    from scenarios.variants import bench_variants

    print("bench variants: generating and validating variants of synthetic drives", file=sys.stderr)
    return bench_variants(_synthetic_drives(6, seed), per_scenario=8, seed=seed)


def _all(args: argparse.Namespace) -> int:
    """Every figure, each section with the machine's load when it started."""
    before = machine()
    figures = bench_sim((1, 64, 1024), 32, 50, args.seed)
    figures["sim_machine"] = before
    if args.store is not None:
        figures["sim_store_machine"] = machine()
        figures.update(bench_sim_store(args.store, (1, 64, 1024), 50))
    figures["eval_machine"] = machine()
    figures["eval"] = _bench_eval(1000, args.seed)
    figures["variants_machine"] = machine()
    figures["variants"] = _bench_variants(args.seed)
    _emit(figures, before)
    return 0


def _student(args: argparse.Namespace) -> int:
    """``av bench student``: latency and throughput of the student (eager, onnxruntime, TensorRT)
    beside the teacher network; untrained default networks where no checkpoint is given (the
    timing does not depend on the weights)."""
    import tempfile

    from av.export import bench_student, example_features, export_onnx
    from av.nets import StudentNet, TeacherNet, load_network
    from av.observe import ObservationSpec, observe

    if args.calls < 10 or args.batch < 1:
        raise AvError("bench student: need --calls >= 10 and --batch >= 1")
    torch.manual_seed(args.seed)
    student = load_network(args.checkpoint) if args.checkpoint else StudentNet(ObservationSpec()).eval()
    teacher = load_network(args.teacher) if args.teacher else TeacherNet(ObservationSpec()).eval()
    if student.kind != "student" or teacher.kind != "teacher":
        raise AvError("bench student: --checkpoint must hold a student and --teacher a teacher")
    with tempfile.TemporaryDirectory() as tmp:
        onnx = args.onnx
        if onnx is None:
            print("bench student: exporting the student to ONNX", file=sys.stderr)
            onnx = Path(tmp) / "student.onnx"
            export_onnx(student, onnx, example_features(student.spec, 5, args.seed + 7), fp16=False)
        batch = collate(synthetic_scenarios(1, 32, 10, args.seed))
        observation = observe(batch, batch.history_steps, student.spec)
        before = machine()
        _emit(bench_student(student, teacher, onnx, observation, args.engine, args.calls, args.batch, args.seed),
              before)
    return 0


def _closedloop(args: argparse.Namespace) -> int:
    from closedloop.distributed import bench_rollouts

    if args.scenarios < 1 or args.steps < 1:
        raise AvError("bench closedloop: need --scenarios >= 1 and --steps >= 1")
    before = machine()
    _emit(bench_rollouts(synthetic_scenarios(args.scenarios, 16, args.steps, args.seed), args.planner), before)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput and memory benchmarks (JSON on stdout)")
    cmds = p.add_subparsers(dest="bench_command", metavar="COMMAND", required=True)
    s = cmds.add_parser("sim", help="builtin simulator step throughput vs a NumPy kernel")
    s.add_argument("--batches", default="1,64,1024", help="comma-separated batch sizes (default: 1,64,1024)")
    s.add_argument("--agents", type=int, default=32, help="agents per scenario (default: 32)")
    s.add_argument("--steps", type=int, default=50, help="timed steps per batch size (default: 50)")
    s.add_argument("--seed", type=int, default=0, help="seed of the synthetic scenarios (default: 0)")
    s.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 compares like with like against the "
                        "single-threaded NumPy kernel and is steadier on a busy machine)")
    s.add_argument("--store", type=Path, default=None,
                   help="scenario store (e.g. from `av data import`): also time its real windows, all agents, "
                        "tiled to each batch size (\"sim_store\" rows: valid agents, reset time, peak memory)")
    s.add_argument("--eval-scenarios", type=int, default=1000,
                   help="scenarios of the full closed-loop evaluation timing, 0 to skip (default: 1000)")
    s.set_defaults(func=_sim)
    v = cmds.add_parser("variants", help="variants generated and validated per second")
    v.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    v.set_defaults(func=_variants)
    st = cmds.add_parser("student", help="student latency (eager, onnxruntime, TensorRT) beside the teacher's")
    st.add_argument("--checkpoint", type=Path, default=None, help="student checkpoint (default: untrained default net)")
    st.add_argument("--teacher", type=Path, default=None, help="teacher checkpoint (default: untrained default net)")
    st.add_argument("--onnx", type=Path, default=None, help="exported student (default: export --checkpoint to a temp dir)")
    st.add_argument("--engine", type=Path, default=None, help="TensorRT engine to time as well (needs a GPU)")
    st.add_argument("--calls", type=int, default=1000, help="timed calls per latency figure (default: 1000)")
    st.add_argument("--batch", type=int, default=256, help="batch of the throughput figures (default: 256)")
    st.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    st.set_defaults(func=_student)
    cl = cmds.add_parser("closedloop", help="rollout throughput (scenario-seconds per second): in-process vs 1 and 2 Ray workers")
    cl.add_argument("--scenarios", type=int, default=32, help="synthetic scenarios (default: 32)")
    cl.add_argument("--steps", type=int, default=100, help="simulated 0.1 s steps per scenario (default: 100)")
    cl.add_argument("--planner", default="idm", help="planner driving the rollouts (default: idm)")
    cl.add_argument("--seed", type=int, default=0, help="seed of the synthetic scenarios (default: 0)")
    cl.set_defaults(func=_closedloop)
    a = cmds.add_parser("all", help="every benchmark, one JSON object")
    a.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    a.add_argument("--store", type=Path, default=None, help="scenario store: add the real-window rows of `bench sim --store`")
    a.set_defaults(func=_all)
