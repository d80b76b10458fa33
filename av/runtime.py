"""The vehicle runtime: run an exported student beside runtime monitors, with a safe fallback.

:func:`load_model` opens an exported model, an ONNX file (onnxruntime, CPU) or a TensorRT engine
(TensorRT, imported only then), after checking it against the manifest beside it (see
:mod:`av.export`): the file's SHA-256, the feature-encoder version and the input and output
names, shapes and dtypes the loaded model reports. A changed, replaced or foreign file is
refused with one :class:`~av.errors.AvError` line.

:class:`VehiclePlanner` is the planning call of the car: observation -> features
(:func:`av.features.encode`) -> model -> each monitor judges the plan. Each batch row drives the
model's plan, unless its output is not finite or a monitor vetoes it, or the whole call overran
its deadline; then the row drives the fallback (by default :func:`av.fallback.comfortable_stop`)
and :class:`Decision` says why. It is also a planner for the simulator (``plan``), so the
exported student is evaluated in closed loop exactly like the PyTorch one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch
from torch import Tensor

from av.errors import AvError
from av.export import OUTPUT_NAME, import_tensorrt, ort_inputs, ort_session, read_manifest, verify_file
from av.fallback import ComfortableStopPlanner
from av.features import FEATURE_NAMES, Features, encode
from av.monitor import Monitor, Verdict
from av.observation import Observation, Privileged, Trajectory
from av.observe import ObservationSpec

#: Default deadline of one planning call (ms): the budget of a 10 Hz planning cycle (SR-LAT-01).
DEADLINE_MS = 100.0

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(bool)": "bool", "tensor(float16)": "float16"}


def _shape_matches(want: Sequence[int | str], got: Sequence[Any], concrete: bool = False) -> bool:
    """Static dims equal; a named (dynamic) dim of the manifest must be dynamic in the model
    (``concrete``: ``got`` is a tensor's shape, any size fits a named dim)."""
    if len(want) != len(got):
        return False

    def fits(w: int | str, g: Any) -> bool:
        if isinstance(w, str):
            return concrete or not isinstance(g, int) or g < 0
        return w == g

    return all(fits(w, g) for w, g in zip(want, got, strict=True))


def _check_io(path: Path, manifest: dict[str, Any], found: dict[str, tuple[list[Any], str]]) -> None:
    """Refuse a model whose inputs/outputs (name -> (shape, dtype)) differ from its manifest."""
    for entry in [*manifest["inputs"], *manifest["outputs"]]:
        name = entry["name"]
        if name not in found:
            raise AvError(f"{path}: the model has no tensor {name!r} that its manifest lists")
        shape, dtype = found[name]
        if dtype != entry["dtype"] or not _shape_matches(entry["shape"], shape):
            raise AvError(f"{path}: tensor {name!r} is {dtype} {list(shape)} in the model but "
                          f"{entry['dtype']} {entry['shape']} in its manifest")
    extra = set(found) - {e["name"] for e in [*manifest["inputs"], *manifest["outputs"]]}
    if extra:
        raise AvError(f"{path}: the model has tensors its manifest does not list: {sorted(extra)}")


def check_features(features: Features, manifest: dict[str, Any]) -> None:
    """Refuse features whose fixed dims differ from the model's (AvError naming the input)."""
    for entry, t in zip(manifest["inputs"], features.as_tuple(), strict=True):
        if not _shape_matches(entry["shape"], list(t.shape), concrete=True):
            raise AvError(f"observation gives {entry['name']} {list(t.shape)}, the model takes {entry['shape']}: "
                          "observe with the model's observation_spec")


class ExportedModel(Protocol):
    """An exported student: ``features -> trajectory [B, H, 3]`` float32 CPU tensor."""

    path: Path
    manifest: dict[str, Any]

    def __call__(self, features: Features) -> Tensor:
        ...


class OnnxModel:
    """An exported ONNX student (the verified bytes of ``path``) on onnxruntime's CPU provider
    (``threads`` intra-op threads)."""

    def __init__(self, path: Path, data: bytes, manifest: dict[str, Any], threads: int = 1) -> None:
        self.path, self.manifest = path, manifest
        self.session = ort_session(data, threads)
        found = {v.name: (list(v.shape), _ORT_DTYPES.get(v.type, v.type))
                 for v in [*self.session.get_inputs(), *self.session.get_outputs()]}
        _check_io(path, manifest, found)

    def __call__(self, features: Features) -> Tensor:
        check_features(features, self.manifest)
        return torch.from_numpy(self.session.run([OUTPUT_NAME], ort_inputs(features))[0])


class TensorRTModel:
    """A serialized TensorRT engine (the verified bytes of ``path``) run on the current CUDA
    device and stream."""

    def __init__(self, path: Path, data: bytes, manifest: dict[str, Any]) -> None:
        trt = import_tensorrt()
        self.path, self.manifest = path, manifest
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise AvError(f"{path}: TensorRT cannot load this engine (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        np_types = {trt.DataType.FLOAT: "float32", trt.DataType.BOOL: "bool", trt.DataType.HALF: "float16"}
        found = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            found[name] = (list(self.engine.get_tensor_shape(name)), np_types.get(self.engine.get_tensor_dtype(name), "?"))
        _check_io(path, manifest, found)

    def __call__(self, features: Features) -> Tensor:
        check_features(features, self.manifest)
        stream = torch.cuda.current_stream()
        inputs = [t.to("cuda").contiguous() for t in features.as_tuple()]
        for name, t in zip(FEATURE_NAMES, inputs, strict=True):
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        out = torch.empty(tuple(self.context.get_tensor_shape(OUTPUT_NAME)), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.path}: TensorRT execution failed")
        return out.cpu()


def load_model(path: str | Path, threads: int = 1) -> ExportedModel:
    """The exported model at ``path`` after checking it against its manifest (see module doc)."""
    path = Path(path)
    manifest = read_manifest(path)
    data = verify_file(path, manifest)
    if manifest.get("kind") == "onnx":
        return OnnxModel(path, data, manifest, threads)
    if manifest.get("kind") == "tensorrt":
        return TensorRTModel(path, data, manifest)
    raise AvError(f"{path}: manifest names an unknown model kind {manifest.get('kind')!r}")


@dataclass(frozen=True)
class Decision:
    """The outcome of one planning call over ``B`` problems.

    * ``trajectory``: what to drive, ``[B, H, 3]`` ego frame at ``dt`` steps, on the
      observation's device.
    * ``model_plan``: the model's own plan ``[B, H, 3]`` (as produced, NaN included).
    * ``fallback`` bool ``[B]``: the row drives the fallback; ``reasons``: ``B`` strings, empty
      where the model's plan is driven, else why not (``"; "``-joined).
    * ``verdicts``: each monitor's :class:`Verdict` of the model's plan (its non-finite rows
      replaced by the fallback, so monitors only see numbers), by monitor name.
    * ``latency_ms``: wall time of the call up to the decision.
    """

    trajectory: Trajectory
    model_plan: Tensor
    fallback: Tensor
    reasons: tuple[str, ...]
    verdicts: dict[str, Verdict]
    latency_ms: float


class VehiclePlanner:
    """The exported student as the car runs it (see the module doc).

    ``model_path``: an ``.onnx`` file or TensorRT engine exported by :mod:`av.export` (manifest
    beside it). ``monitors``: :class:`~av.monitor.Monitor` values, judged on every call.
    ``deadline_ms``: a call that takes longer drives the fallback in every row (``None``: no
    deadline, e.g. in simulation, where wall time is not the car's time). ``fallback``: a planner
    whose plans have the model's ``dt`` and horizon (default: a comfortable stop along the route).
    ``observation_spec`` is the spec the network was trained on; observe with it.
    """

    privileged = False

    def __init__(self, model_path: str | Path, monitors: Sequence[Monitor] = (),
                 deadline_ms: float | None = DEADLINE_MS, threads: int = 1, fallback: Any = None,
                 name: str = "onnx") -> None:
        if deadline_ms is not None and not deadline_ms > 0:
            raise AvError(f"deadline_ms must be > 0 (or None), got {deadline_ms}")
        if threads < 1:
            raise AvError(f"threads must be >= 1, got {threads}")
        for m in monitors:
            if not isinstance(m, Monitor):
                raise AvError(f"{m!r} is not a runtime monitor (needs name and judge())")
        self.name = name
        self.model: ExportedModel = load_model(model_path, threads)
        self.manifest = self.model.manifest
        self.observation_spec = ObservationSpec.from_dict(self.manifest["observation_spec"])
        self.dt = float(self.manifest["trajectory_dt"])
        self.horizon_steps = int(self.manifest["outputs"][0]["shape"][1])
        self.monitors = tuple(monitors)
        self.deadline_ms = deadline_ms
        self.fallback = fallback or ComfortableStopPlanner(horizon_steps=self.horizon_steps, dt=self.dt)

    def decide(self, observation: Observation) -> Decision:
        """Plan, judge, and pick each row's trajectory (see :class:`Decision`)."""
        t0 = time.perf_counter()
        device = observation.ego_dims.device
        raw = self.model(encode(observation)).to(device)  # [B, H, 3] float32
        B = raw.shape[0]
        why: list[list[str]] = [[] for _ in range(B)]
        finite = torch.isfinite(raw).flatten(1).all(1)  # [B]
        for i in torch.nonzero(~finite).flatten().tolist():
            why[i].append("model output is not finite")
        safe = self._fallback(observation) if not bool(finite.all()) else None
        judged = raw if safe is None else torch.where(finite[:, None, None], raw, safe)
        plan = Trajectory(poses=judged, dt=self.dt)
        verdicts = {}
        for m in self.monitors:
            v = m.judge(observation, plan)
            verdicts[m.name] = v
            for i in torch.nonzero(v.veto).flatten().tolist():
                why[i].append(f"{m.name} vetoed: {v.reasons[i]}" if v.reasons[i] else f"{m.name} vetoed")
        latency_ms = (time.perf_counter() - t0) * 1e3
        if self.deadline_ms is not None and latency_ms > self.deadline_ms:
            for w in why:
                w.append(f"planning call took {latency_ms:.2f} ms, over its {self.deadline_ms:g} ms deadline")
        use = torch.tensor([bool(w) for w in why], dtype=torch.bool, device=device)
        if bool(use.any()):
            safe = self._fallback(observation) if safe is None else safe
            driven = torch.where(use[:, None, None], safe, judged)
        else:
            driven = judged
        return Decision(trajectory=Trajectory(poses=driven, dt=self.dt), model_plan=raw, fallback=use,
                        reasons=tuple("; ".join(w) for w in why), verdicts=verdicts, latency_ms=latency_ms)

    def _fallback(self, observation: Observation) -> Tensor:
        traj = self.fallback.plan(observation)
        if abs(traj.dt - self.dt) > 1e-9 or traj.poses.shape[1] != self.horizon_steps:
            raise AvError(f"fallback plans {traj.poses.shape[1]} steps of {traj.dt} s; the model plans "
                          f"{self.horizon_steps} of {self.dt} s")
        return traj.poses.to(device=observation.ego_dims.device, dtype=torch.float32)

    def plan(self, observation: Observation, privileged: Privileged | None = None) -> Trajectory:
        """The planner protocol: the trajectory :meth:`decide` drives (``[B, H, 3]``, ego frame)."""
        return self.decide(observation).trajectory
