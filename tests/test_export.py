"""Export of the student: checkpoint -> ONNX (+ FP16) with manifest, parity with eager PyTorch on
real observations, the TensorRT command where TensorRT is absent, and ``av bench student``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from av.cli.main import main
from av.export import (PARITY_TOLERANCE_M, fp16_path, manifest_path, observed_features, ort_inputs, ort_session,
                       parity_inputs, sha256_file)
from av.features import FEATURE_NAMES, FEATURE_VERSION
from av.nets import StudentNet, TeacherNet, load_network
from av.nets.checkpoint import network_hparams
from av.observe import ObservationSpec


def save_checkpoint(net: torch.nn.Module, path: Path) -> Path:
    """``net`` in the checkpoint layout of :mod:`av.nets` (what Lightning writes)."""
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"network": network_hparams(net)}}, path)
    return path


@pytest.fixture(scope="module")
def student_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded untrained student whose output layer is scaled down, so that it drives near
    constant velocity with network-made deviations (closed-loop scores neither 0 nor trivial)."""
    torch.manual_seed(0)
    net = StudentNet(ObservationSpec()).eval()
    with torch.no_grad():
        net.head[-1].weight.mul_(0.05)
        net.head[-1].bias.mul_(0.05)
    return save_checkpoint(net, tmp_path_factory.mktemp("ckpt") / "student.ckpt")


@pytest.fixture(scope="module")
def exported(student_ckpt: Path, real_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The student exported through the real CLI, parity on the real drives."""
    out = tmp_path_factory.mktemp("export") / "student.onnx"
    assert main(["export", "onnx", "--checkpoint", str(student_ckpt), "--out", str(out),
                 "--store", str(real_store)]) == 0
    return out


def test_export_writes_one_self_contained_model_and_its_manifest(exported: Path, student_ckpt: Path) -> None:
    manifest = json.loads(manifest_path(exported).read_text())
    assert manifest["model_sha256"] == sha256_file(exported)
    assert manifest["source_checkpoint"]["sha256"] == sha256_file(student_ckpt)
    assert manifest["feature_version"] == FEATURE_VERSION and manifest["kind"] == "onnx"
    assert [i["name"] for i in manifest["inputs"]] == list(FEATURE_NAMES)
    assert all(i["units"] and i["dtype"] in ("float32", "bool") for i in manifest["inputs"])
    assert manifest["outputs"][0]["shape"] == ["batch", 16, 3]
    assert manifest["inputs"][1]["shape"][:2] == ["batch", "agents"]
    assert manifest["inputs"][3]["shape"][:2] == ["batch", "lanes"]
    assert ObservationSpec.from_dict(manifest["observation_spec"]) == ObservationSpec()
    assert "applied" in manifest["simplify"]
    # Weights embedded: every initializer carries its data in the file, no external data.
    model = onnx.load(str(exported), load_external_data=False)
    assert model.opset_import[0].version == manifest["opset"]
    assert model.graph.initializer and not any(t.data_location == onnx.TensorProto.EXTERNAL
                                               for t in model.graph.initializer)
    assert not [p for p in exported.parent.iterdir() if p.suffix not in (".onnx", ".json")]
    # Parity measured on the real drives, at shapes unlike the export example (batch 2, 32 agents).
    parity = manifest["parity"]
    assert parity["max_abs_error_m"] <= PARITY_TOLERANCE_M
    assert parity["observations"] > 8 and {s["agents"][0] for s in parity["shapes"]} - {2}
    assert len({s["agents"][1] for s in parity["shapes"]}) == 2
    half = manifest["fp16_variant"]
    assert half["sha256"] == sha256_file(fp16_path(exported))
    assert 0.0 < half["parity"]["max_abs_error_m"] < 0.1


def test_onnxruntime_matches_eager_pytorch_on_real_observations(
        exported: Path, student_ckpt: Path, real_scenarios: list) -> None:
    """Independent of the export's own figure: other log steps, other batch and slot counts."""
    net = load_network(student_ckpt)
    real = observed_features(real_scenarios[:5], net.spec, steps=1, seed=11)
    session = ort_session(exported)
    for f in parity_inputs(real):
        got = session.run(None, ort_inputs(f))[0]
        with torch.no_grad():
            want = net(*f.as_tuple()).numpy()
        assert got.shape == want.shape and np.abs(got - want).max() <= PARITY_TOLERANCE_M


def test_only_a_student_checkpoint_exports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    teacher = save_checkpoint(TeacherNet(ObservationSpec()).eval(), tmp_path / "teacher.ckpt")
    assert main(["export", "onnx", "--checkpoint", str(teacher), "--out", str(tmp_path / "t.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("av: error:") and "student" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "t.onnx").exists()
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    assert main(["export", "onnx", "--checkpoint", str(tmp_path / "bad.ckpt"), "--out", str(tmp_path / "t.onnx")]) == 2


def _tensorrt_missing() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


def test_tensorrt_export_without_tensorrt_says_what_is_missing(
        exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = _tensorrt_missing()
    if missing is None:
        pytest.skip("TensorRT and a GPU are present: the engine test covers this machine")
    assert main(["export", "tensorrt", "--onnx", str(exported), "--out", str(tmp_path / "s.engine")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("av: error:")
    assert ("TensorRT is not installed" in err) if missing.startswith("TensorRT") else ("no CUDA GPU" in err)
    assert not (tmp_path / "s.engine").exists()


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_tensorrt_engine_matches_onnxruntime(exported: Path, tmp_path: Path, fp16: bool) -> None:
    missing = _tensorrt_missing()
    if missing is not None:
        pytest.skip(missing)
    from av.runtime import load_model

    engine = tmp_path / "student.engine"
    args = ["export", "tensorrt", "--onnx", str(exported), "--out", str(engine)] + (["--fp16"] if fp16 else [])
    assert main(args) == 0
    manifest = json.loads(manifest_path(engine).read_text())
    assert manifest["model_sha256"] == sha256_file(engine) and manifest["kind"] == "tensorrt"
    assert manifest["parity_vs_onnxruntime"]["max_abs_error_m"] <= (0.1 if fp16 else 1e-3)
    assert manifest["latency"]["p99_ms"] > 0
    load_model(engine)


def test_bench_student_prints_one_json_object(exported: Path, student_ckpt: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "student", "--checkpoint", str(student_ckpt), "--onnx", str(exported),
                 "--calls", "20", "--batch", "8"]) == 0
    figures = json.loads(capsys.readouterr().out)
    for key in ("torch_p99_ms", "onnxruntime_p50_ms", "onnxruntime_p99_ms", "teacher_p99_ms", "runtime_p99_ms",
                "onnxruntime_throughput_per_s"):
        assert figures[key] > 0
    assert figures["onnxruntime_p50_ms"] <= figures["onnxruntime_p99_ms"]
    assert figures["student_params"] < figures["teacher_params"]


def test_exported_student_drives_like_the_pytorch_one_in_closed_loop(
        exported: Path, student_ckpt: Path, real_store: Path, tmp_path: Path) -> None:
    """``av closedloop eval`` of the PyTorch student and the ONNX export on the real drives:
    mean CLS within 0.005 (non-reactive agents, CPU)."""
    out = tmp_path / "run"
    assert main(["closedloop", "eval", "--planner", "student,onnx", "--store", str(real_store), "--out", str(out),
                 "--planner-arg", f"student:checkpoint={student_ckpt}", "--planner-arg", f"onnx:model={exported}",
                 "--worst", "0", "--no-report", "--no-progress"]) == 0
    rows = {r["planner"]: r for r in json.loads((out / "summary.json").read_text())["rows"]}
    assert rows["student"]["scenarios"] == rows["onnx"]["scenarios"] >= 8
    assert 0.0 < rows["student"]["cls"] < 1.0
    assert abs(rows["onnx"]["cls"] - rows["student"]["cls"]) <= 0.005
