"""Export of the student network: checkpoint -> ONNX (+ FP16 variant) -> TensorRT engine.

Every exported model file ``M`` has a JSON manifest ``M.json`` beside it (:func:`manifest_path`)
that the vehicle runtime (:mod:`av.runtime`) checks before it runs the model: the file's SHA-256,
the input and output names, shapes (``"batch"``, ``"agents"``, ``"lanes"`` for dynamic axes),
dtypes and units, the feature-encoder version, the observation spec the network was trained on,
the source checkpoint's SHA-256, the opset and the parity figures measured at export.

* :func:`export_onnx`: one self-contained ONNX file (weights embedded; dynamic batch, agent and
  lane counts), simplified with onnxslim where that removes nodes, plus an FP16 variant
  (``student.fp16.onnx``; float16 weights and arithmetic, float32 inputs and outputs). Parity of
  both against eager PyTorch (onnxruntime, CPU) on the observations given, which should be real
  ones and shaped unlike the export example; the FP32 export is refused above
  :data:`PARITY_TOLERANCE_M`.
* :func:`export_tensorrt`: a serialized TensorRT (>= 10) engine built from such an ONNX file with
  the TensorRT Python API, imported only here; precision comes from the ONNX graph (strongly
  typed network): pass the FP16 variant for an FP16 engine.

Files are written atomically (:mod:`av.fileio`); the manifest is written last.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

import av
from av.errors import AvError
from av.features import FEATURE_NAMES, FEATURE_VERSION, Features, encode, feature_shapes
from av.fileio import atomic_write_bytes, atomic_write_json
from av.nets import TRAJECTORY_DT

MANIFEST_FORMAT = "av-exported-planner"
MANIFEST_VERSION = 1
OPSET = 18
OUTPUT_NAME = "trajectory"
#: Largest allowed max-abs difference (m) between onnxruntime and eager PyTorch positions.
PARITY_TOLERANCE_M = 1e-4
#: Batch size of the tracing example; parity is checked at other sizes.
EXAMPLE_BATCH = 2

# Dynamic axes of each input (the student pools agents and lanes with masks, so their counts may
# vary; the route is flattened into a fixed-size layer).
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "ego": {0: "batch"},
    "agents": {0: "batch", 1: "agents"},
    "agent_mask": {0: "batch", 1: "agents"},
    "lanes": {0: "batch", 1: "lanes"},
    "lane_mask": {0: "batch", 1: "lanes"},
    "route": {0: "batch"},
    "route_mask": {0: "batch"},
}
UNITS: dict[str, str] = {
    "ego": "forward, lateral speed m/s; forward accel m/s^2; yaw rate rad/s; length, width, "
           "wheelbase, rear-axle-to-centre m",
    "agents": "per history sample (newest first): box centre x, y m; cos, sin yaw; vx, vy m/s; "
              "valid 0/1; then length, width m; one-hot type",
    "agent_mask": "True = a real agent",
    "lanes": "per point: x, y m; cos, sin heading; then speed limit m/s, limit known 0/1, on route 0/1",
    "lane_mask": "True = a real lane",
    "route": "x, y m; cos, sin heading",
    "route_mask": "True = a real route point",
    OUTPUT_NAME: "rear-axle x, y m and yaw rad, ego frame at plan time, at dt, 2 dt, ... H dt s",
}


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_path(model_path: str | Path) -> Path:
    """``student.onnx`` -> ``student.onnx.json``."""
    p = Path(model_path)
    return p.with_name(p.name + ".json")


def fp16_path(onnx_path: str | Path) -> Path:
    """``student.onnx`` -> ``student.fp16.onnx``."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".fp16" + p.suffix)


def read_manifest(model_path: str | Path) -> dict[str, Any]:
    """The manifest beside ``model_path`` (AvError if missing, unreadable or of another format)."""
    mp = manifest_path(model_path)
    if not mp.is_file():
        raise AvError(f"{model_path}: no manifest {mp.name} beside it (export it with av export)")
    try:
        manifest = json.loads(mp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AvError(f"{mp}: not a valid manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise AvError(f"{mp}: not an av model manifest")
    if manifest.get("schema_version") != MANIFEST_VERSION:
        raise AvError(f"{mp}: manifest schema version {manifest.get('schema_version')}, this av reads "
                      f"{MANIFEST_VERSION}; export the model again")
    return manifest


def verify_file(model_path: str | Path, manifest: dict[str, Any]) -> bytes:
    """The model file's bytes, read once, after checking them against ``manifest``: AvError for a
    SHA-256 that differs from the manifest's or a manifest made for another feature encoder.
    Load the model from these bytes, not from the path again."""
    try:
        data = Path(model_path).read_bytes()
    except OSError as e:
        raise AvError(f"{model_path}: cannot read the model file ({e.strerror or e})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.get("model_sha256"):
        raise AvError(f"{model_path}: SHA-256 {digest[:12]}... does not match its manifest "
                      f"({str(manifest.get('model_sha256'))[:12]}...): the file was changed or replaced")
    if manifest.get("feature_version") != FEATURE_VERSION:
        raise AvError(f"{model_path}: exported for feature version {manifest.get('feature_version')}, "
                      f"this av encodes version {FEATURE_VERSION}; export it again")
    names = [i["name"] for i in manifest.get("inputs", [])]
    if names != list(FEATURE_NAMES):
        raise AvError(f"{model_path}: inputs {names} are not this av's features {list(FEATURE_NAMES)}")
    return data


# ---------------------------------------------------------------------------- ONNX


@dataclass(frozen=True)
class Parity:
    """Max abs differences between a model file and eager PyTorch over ``observations`` inputs:
    positions (m) and yaw (rad), with the input shapes checked."""

    max_abs_error_m: float
    max_abs_error_rad: float
    observations: int
    shapes: tuple[dict[str, list[int]], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs_error_m": self.max_abs_error_m, "max_abs_error_rad": self.max_abs_error_rad,
                "observations": self.observations, "shapes": list(self.shapes)}


def example_features(spec: Any, batch: int = EXAMPLE_BATCH, seed: int = 0) -> Features:
    """Random features of ``spec``'s shapes (all slots valid), to trace a network or time it."""
    g = torch.Generator().manual_seed(seed)
    tensors = []
    for name, shape in feature_shapes(spec).items():
        if name.endswith("_mask"):
            tensors.append(torch.ones(batch, *shape, dtype=torch.bool))
        else:
            tensors.append(torch.randn(batch, *shape, generator=g))
    return Features.from_tuple(tensors)


def trim(features: Features, agents: int, lanes: int) -> Features:
    """The first ``agents`` agent slots and ``lanes`` lane slots of ``features``."""
    f = features
    return Features(ego=f.ego, agents=f.agents[:, :agents], agent_mask=f.agent_mask[:, :agents],
                    lanes=f.lanes[:, :lanes], lane_mask=f.lane_mask[:, :lanes], route=f.route,
                    route_mask=f.route_mask)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' warnings and log lines (their problems surface as exceptions)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxslim")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def to_onnx(net: nn.Module, example: Features, opset: int = OPSET) -> Any:
    """Trace ``net`` (``forward(*features) -> [B, H, 3]``) to an ``onnx.ModelProto`` with the
    :data:`DYNAMIC_AXES`, weights embedded.

    Uses torch's TorchScript-based exporter (``dynamo=False``): for the student (linear layers,
    masked max pooling) it gives the same graph in under a second, where the torch.export-based
    exporter spends 10-40 s on this CPU; the parity check guards the result either way.
    """
    import onnx

    buf = io.BytesIO()
    with _quiet(), torch.no_grad():
        try:
            torch.onnx.export(net.eval(), example.as_tuple(), buf, dynamo=False, input_names=list(FEATURE_NAMES),
                              output_names=[OUTPUT_NAME], dynamic_axes={**DYNAMIC_AXES, OUTPUT_NAME: {0: "batch"}},
                              opset_version=opset, do_constant_folding=True)
        except Exception as e:  # the exporter raises many types; name the cause in one line
            raise AvError(f"ONNX export failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}") from None
    return onnx.load_from_string(buf.getvalue())


def simplify(model: Any) -> tuple[Any, dict[str, Any]]:
    """onnxslim's simplification of ``model`` where it has fewer nodes, else ``model`` itself;
    with a note for the manifest."""
    import onnxslim

    with _quiet():
        slim = onnxslim.slim(model)
    before, after = len(model.graph.node), len(slim.graph.node)
    kept = after < before
    note = {"tool": f"onnxslim {onnxslim.__version__}", "nodes_before": before, "nodes_after": after,
            "applied": kept}
    if not kept:
        note["note"] = "no nodes removed; not applied"
    return (slim if kept else model), note


def to_fp16(model: Any) -> Any:
    """FP16 variant of an FP32 ONNX model: float16 weights and arithmetic, float32 inputs and
    outputs (casts at the edges), so it takes the same inputs."""
    import onnx
    from onnxconverter_common import float16

    # The converter leaves the graph's own casts to float32 (e.g. a bool mask cast to the
    # activations' type) as they are; inside the FP16 graph they must produce float16.
    own = {n.name for n in model.graph.node if n.op_type == "Cast"
           and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)}
    with _quiet():
        half = float16.convert_float_to_float16(model, keep_io_types=True)
    for node in half.graph.node:
        if node.name in own:
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = onnx.TensorProto.FLOAT16
    return half


def ort_session(model: bytes | str | Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads, sequential execution."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise AvError(f"onnxruntime cannot load the model: {str(e).strip().splitlines()[0][:300]}") from None


def ort_inputs(features: Features) -> dict[str, np.ndarray]:
    """The numpy feed of an onnxruntime session (float32 / bool, contiguous)."""
    return {n: np.ascontiguousarray(t.detach().cpu().numpy()) for n, t in zip(FEATURE_NAMES, features.as_tuple())}


def parity(session: Any, net: nn.Module, inputs: Sequence[Features]) -> Parity:
    """Max abs difference between ``session``'s and ``net``'s trajectories over ``inputs``."""
    err_m, err_rad, count, shapes = 0.0, 0.0, 0, []
    with torch.no_grad():
        for f in inputs:
            want = net(*f.as_tuple()).numpy()
            got = session.run([OUTPUT_NAME], ort_inputs(f))[0]
            if not np.isfinite(got).all():
                raise AvError("exported model produced non-finite trajectories in the parity check")
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            err_m = max(err_m, float(diff[..., :2].max(initial=0.0)))
            err_rad = max(err_rad, float(diff[..., 2].max(initial=0.0)))
            count += f.batch_size
            shapes.append({n: list(t.shape) for n, t in zip(FEATURE_NAMES, f.as_tuple())})
    return Parity(err_m, err_rad, count, tuple(shapes))


def observed_features(scenarios: Sequence[Any], spec: Any, steps: int = 3, seed: int = 0) -> Features:
    """Features of real observations for the parity check: ``steps`` log steps per scenario
    (drawn with ``seed`` between each scenario's history end and its last step), observed from
    the log with ``spec`` (:func:`av.observe.observe`). Returns ``[len(scenarios) * steps, ...]``."""
    from av.batch import collate
    from av.observe import observe

    if not scenarios:
        raise AvError("parity check: no scenarios to observe")
    batch = collate(list(scenarios))
    last = batch.step_valid.long().cumsum(1).argmax(1)  # [B] last valid step
    first = torch.minimum(batch.history_steps, last)
    g = torch.Generator().manual_seed(seed)
    parts = []
    for _ in range(steps):
        u = torch.rand(batch.batch_size, generator=g)
        t = first + (u * (last - first + 1).double()).long().clamp_max(last - first)
        parts.append(encode(observe(batch, t, spec)))
    return Features.from_tuple([torch.cat(ts) for ts in zip(*(p.as_tuple() for p in parts))])


def parity_inputs(features: Features) -> list[Features]:
    """Parity cases from real features ``[B, ...]``: all of them at full size, and a different
    batch with fewer agent and lane slots (shapes unlike the tracing example)."""
    B, N, L = features.batch_size, features.agents.shape[1], features.lanes.shape[1]
    cases = [features]
    part = Features.from_tuple([t[: max(1, B // 2 + 1)] for t in features.as_tuple()])
    cases.append(trim(part, max(1, N // 2 + 1), max(1, L // 2 + 1)))
    return cases


def _io_entries(model: Any) -> tuple[list[dict], list[dict]]:
    """Input and output descriptions (name, shape with axis names, dtype, units)."""
    import onnx

    def dims(value: Any) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    def dtype(value: Any) -> str:
        return str(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))

    inputs = [{"name": v.name, "shape": dims(v), "dtype": dtype(v), "units": UNITS[v.name]} for v in model.graph.input]
    outputs = [{"name": v.name, "shape": dims(v), "dtype": dtype(v), "units": UNITS[v.name]} for v in model.graph.output]
    return inputs, outputs


def export_onnx(net: nn.Module, out: str | Path, real: Features, source: str | Path | None = None,
                opset: int = OPSET, fp16: bool = True) -> dict[str, Any]:
    """Export the student ``net`` to ``out`` (+ ``out``'s FP16 variant) with manifests; returns
    the manifest of ``out``.

    ``real``: features ``[B, ...]`` of real observations for the parity check (``B`` should differ
    from :data:`EXAMPLE_BATCH`). ``source``: the checkpoint the network came from (its hash is
    recorded). Raises :class:`AvError` if the export fails or the FP32 parity exceeds
    :data:`PARITY_TOLERANCE_M`; nothing is written then.
    """
    import onnx

    out = Path(out)
    if out.is_dir() or out.suffix != ".onnx":
        raise AvError(f"{out}: the output must be a .onnx file path")
    if getattr(net, "kind", None) != "student":
        raise AvError(f"only the student network is exported, got {getattr(net, 'kind', type(net).__name__)!r}")
    real.validate()
    example = example_features(net.spec)
    model = to_onnx(net, example, opset)
    model, slim_note = simplify(model)
    model.producer_name, model.producer_version = "av", av.__version__
    data = model.SerializeToString()
    cases = parity_inputs(real)
    fp32 = parity(ort_session(data), net, cases)
    if not fp32.max_abs_error_m <= PARITY_TOLERANCE_M:
        raise AvError(f"ONNX parity {fp32.max_abs_error_m:.2e} m exceeds {PARITY_TOLERANCE_M:.0e} m; not written")
    inputs, outputs = _io_entries(model)
    common = {
        "format": MANIFEST_FORMAT, "schema_version": MANIFEST_VERSION, "kind": "onnx",
        "av_version": av.__version__, "feature_version": FEATURE_VERSION,
        "observation_spec": net.spec.to_dict(), "network": {"kind": net.kind, "config": asdict(net.config)},
        "trajectory_dt": TRAJECTORY_DT, "opset": opset,
        "onnx_version": onnx.__version__, "torch_version": torch.__version__,
        "inputs": inputs, "outputs": outputs,
        "source_checkpoint": None if source is None else {"file": Path(source).name, "sha256": sha256_file(source)},
        "simplify": slim_note,
    }
    files: list[tuple[Path, bytes | dict]] = []
    variant = None
    if fp16:
        half = to_fp16(model).SerializeToString()
        p16 = parity(ort_session(half), net, cases)
        variant = {"file": fp16_path(out).name, "sha256": hashlib.sha256(half).hexdigest(), "parity": p16.to_dict()}
        files += [(fp16_path(out), half), (manifest_path(fp16_path(out)), {
            **common, "precision": "fp16", "model_file": fp16_path(out).name, "model_sha256": variant["sha256"],
            "parity": p16.to_dict(), "fp32_variant": {"file": out.name, "sha256": hashlib.sha256(data).hexdigest()}})]
    manifest = {**common, "precision": "fp32", "model_file": out.name, "model_sha256": hashlib.sha256(data).hexdigest(),
                "parity": fp32.to_dict(), "parity_tolerance_m": PARITY_TOLERANCE_M, "fp16_variant": variant}
    _write_all([*files, (out, data), (manifest_path(out), manifest)])
    return manifest


def _write_all(files: Sequence[tuple[Path, bytes | dict]]) -> None:
    """Write each (path, bytes or JSON value) atomically, in order (manifests after their model)."""
    for path, value in files:
        try:
            if isinstance(value, bytes):
                atomic_write_bytes(path, value)
            else:
                atomic_write_json(path, value)
        except OSError as e:
            raise AvError(f"{path}: cannot write ({e.strerror or e})") from None


# ---------------------------------------------------------------------------- TensorRT


def import_tensorrt() -> Any:
    """The ``tensorrt`` module (>= 10) with a CUDA GPU present, else one-line AvError saying what
    is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise AvError("TensorRT is not installed (pip install 'av-closedloop[tensorrt]'; needs an "
                      "NVIDIA GPU and driver)") from None
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise AvError(f"TensorRT {trt.__version__} is too old; av needs TensorRT >= 10")
    if not torch.cuda.is_available():
        raise AvError("no CUDA GPU is available (TensorRT engines are built and run on an NVIDIA GPU)")
    return trt


def _profile_shapes(entry: dict[str, Any], spec: dict[str, Any], max_batch: int) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) shapes of one input: batch 1..max_batch (opt 1), agents/lanes 1..spec size."""
    full = {"batch": (1, 1, max_batch), "agents": (1, spec["num_agents"], spec["num_agents"]),
            "lanes": (1, spec["num_lanes"], spec["num_lanes"])}
    dims = [full[d] if isinstance(d, str) else (d, d, d) for d in entry["shape"]]
    return tuple(tuple(d[k] for d in dims) for k in range(3))


def export_tensorrt(onnx_path: str | Path, out: str | Path, fp16: bool = False, max_batch: int = 256,
                    workspace_mb: int = 1024) -> dict[str, Any]:
    """Build a serialized TensorRT engine from the exported ONNX model ``onnx_path`` (its FP16
    variant with ``fp16``) and write it with a manifest to ``out``; returns the manifest.

    The network is strongly typed (precision from the ONNX graph), one optimisation profile
    covers batch 1..``max_batch`` and 1..spec agents and lanes. The engine's parity against
    onnxruntime and its batch-1 latency (p50, p99 over 1000 calls) are measured and recorded.
    """
    trt = import_tensorrt()
    onnx_path, out = Path(onnx_path), Path(out)
    base = read_manifest(onnx_path)
    onnx_data = verify_file(onnx_path, base)
    if fp16 and base.get("precision") != "fp16":
        variant = base.get("fp16_variant")
        if not variant:
            raise AvError(f"{onnx_path}: exported without an FP16 variant; export again with FP16 on")
        onnx_path = onnx_path.with_name(variant["file"])
        base = read_manifest(onnx_path)
        onnx_data = verify_file(onnx_path, base)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise AvError(f"{onnx_path}: TensorRT cannot parse the model ({errors[:300]})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if not fp16 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # FP32 means FP32 (TF32 would cost ~1e-3 m of parity)
    profile = builder.create_optimization_profile()
    for entry in base["inputs"]:
        profile.set_shape(entry["name"], *_profile_shapes(entry, base["observation_spec"], max_batch))
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise AvError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    data = bytes(engine)
    build_s = time.perf_counter() - t0
    _write_all([(out, data)])
    manifest = {**{k: v for k, v in base.items() if k not in ("fp16_variant", "parity_tolerance_m")},
                "kind": "tensorrt", "model_file": out.name, "model_sha256": hashlib.sha256(data).hexdigest(),
                "tensorrt_version": trt.__version__, "gpu": torch.cuda.get_device_name(0),
                "max_batch": max_batch, "build_s": round(build_s, 2),
                "source_onnx": {"file": onnx_path.name, "sha256": base["model_sha256"]}}
    _write_all([(manifest_path(out), manifest)])
    # Measure the engine through the runtime that will load it (parity vs onnxruntime, latency).
    from av.runtime import load_model

    engine_model, onnx_model = load_model(out), load_model(onnx_path)
    from av.observe import ObservationSpec

    spec = ObservationSpec.from_dict(base["observation_spec"])
    cases = [example_features(spec, b, seed=b) for b in (1, 7, max_batch)]
    err = 0.0
    for f in cases:
        a, b = engine_model(f).double(), onnx_model(f).double()
        err = max(err, float((a[..., :2] - b[..., :2]).abs().max()))
    manifest["parity_vs_onnxruntime"] = {"max_abs_error_m": err, "batches": [1, 7, max_batch]}
    manifest["latency"] = time_model(engine_model, cases[0])
    _write_all([(manifest_path(out), manifest)])
    return manifest


def time_model(call: Any, inputs: Any, calls: int = 1000, warmup: int = 50) -> dict[str, float]:
    """Latency of ``call(inputs)`` (ms, p50 and p99 over ``calls`` after ``warmup``)."""
    for _ in range(warmup):
        call(inputs)
    times = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        call(inputs)
        times[i] = time.perf_counter() - t0
    return {"p50_ms": float(np.percentile(times, 50) * 1e3), "p99_ms": float(np.percentile(times, 99) * 1e3)}



def _throughput(call: Any, features: Features, calls: int = 20) -> float:
    """Planning problems per second of ``call(features)`` (one warm-up call)."""
    call(features)
    t0 = time.perf_counter()
    for _ in range(calls):
        call(features)
    return features.batch_size * calls / (time.perf_counter() - t0)


def bench_student(student: nn.Module, teacher: nn.Module, onnx_path: str | Path, observation: Any,
                  engine_path: str | Path | None = None, calls: int = 1000, batch: int = 256,
                  seed: int = 0) -> dict[str, Any]:
    """Latency per planning call at batch 1 (ms, p50 and p99 over ``calls``) of the student in
    eager PyTorch, onnxruntime (1 thread) and, with ``engine_path``, TensorRT, on prepared
    features; the teacher network's eager latency beside it; throughput (problems/s) at
    ``batch``; and the whole vehicle-runtime call on ``observation`` (one problem: encoding,
    onnxruntime, decision; ``runtime_*``). Torch runs single-threaded like onnxruntime."""
    from av.runtime import VehiclePlanner, load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one, many = example_features(student.spec, 1, seed), example_features(student.spec, batch, seed + 1)
        t_one = example_features(teacher.spec, 1, seed)
        with torch.inference_mode():
            def eager(f: Features) -> Tensor:
                return student(*f.as_tuple())

            def eager_teacher(f: Features) -> Any:
                return teacher(*f.as_tuple())

            torch_lat = time_model(eager, one, calls)
            teacher_lat = time_model(eager_teacher, t_one, max(50, calls // 10), warmup=5)
            ort = load_model(onnx_path, threads=1)
            ort_lat = time_model(ort, one, calls)
            runtime_lat = time_model(VehiclePlanner(onnx_path, deadline_ms=None).decide, observation, calls)
            out: dict[str, Any] = {
                "torch_p50_ms": torch_lat["p50_ms"], "torch_p99_ms": torch_lat["p99_ms"],
                "onnxruntime_p50_ms": ort_lat["p50_ms"], "onnxruntime_p99_ms": ort_lat["p99_ms"],
                "teacher_p50_ms": teacher_lat["p50_ms"], "teacher_p99_ms": teacher_lat["p99_ms"],
                "teacher_to_onnxruntime_p50": teacher_lat["p50_ms"] / ort_lat["p50_ms"],
                "runtime_p50_ms": runtime_lat["p50_ms"], "runtime_p99_ms": runtime_lat["p99_ms"],
                "throughput_batch": batch,
                "torch_throughput_per_s": _throughput(eager, many),
                "onnxruntime_throughput_per_s": _throughput(ort, many),
            }
            if engine_path is not None:
                trt_model = load_model(engine_path)
                trt_lat = time_model(trt_model, one, calls)
                out.update(tensorrt_p50_ms=trt_lat["p50_ms"], tensorrt_p99_ms=trt_lat["p99_ms"],
                           tensorrt_throughput_per_s=_throughput(trt_model, many))
    finally:
        torch.set_num_threads(threads)
    out.update(student_params=sum(p.numel() for p in student.parameters()),
               teacher_params=sum(p.numel() for p in teacher.parameters()), calls=calls, threads=1)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}
