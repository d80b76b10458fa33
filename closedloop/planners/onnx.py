"""The exported student as a simulator planner: :class:`av.runtime.VehiclePlanner` on an ONNX file
or TensorRT engine, so the exported model is evaluated in closed loop exactly like the PyTorch one:
``av closedloop eval --planner onnx --planner-arg model=student.onnx``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from av.errors import AvError
from av.runtime import VehiclePlanner


@dataclass(frozen=True)
class OnnxPlannerSettings:
    """Settings of the ``onnx`` planner."""

    model: Path | None = field(default=None, metadata={
        "help": "exported model (.onnx, or a TensorRT engine) with its manifest beside it (av export onnx)"})
    threads: int = field(default=1, metadata={"help": "onnxruntime intra-op threads"})
    deadline_ms: float | None = field(default=None, metadata={
        "help": "planning-call deadline, ms (None: none; simulated time is not wall time)"})

    def validate(self) -> "OnnxPlannerSettings":
        if self.model is None:
            raise AvError("onnx: set the exported model, e.g. --planner-arg model=student.onnx")
        if self.threads < 1:
            raise AvError(f"onnx: threads must be >= 1, got {self.threads}")
        if self.deadline_ms is not None and not self.deadline_ms > 0:
            raise AvError(f"onnx: deadline_ms must be > 0, got {self.deadline_ms}")
        return self


def onnx_planner(settings: OnnxPlannerSettings) -> VehiclePlanner:
    """The ``onnx`` planner (no monitors: the closed-loop driver runs those)."""
    s = settings.validate()
    return VehiclePlanner(s.model, deadline_ms=s.deadline_ms, threads=s.threads, name="onnx")
