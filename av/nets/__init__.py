"""Planner networks: the teacher and the student (plain ``nn.Module``s, usable without Lightning).

**Inputs.** Both take the tensors of :class:`av.features.Features` as positional arguments, in
:data:`av.features.FEATURE_NAMES` order: ``ego [B, 8]`` float32, ``agents [B, N, Da]`` float32,
``agent_mask [B, N]`` bool, ``lanes [B, L, Dl]`` float32, ``lane_mask [B, L]`` bool,
``route [B, R, 4]`` float32, ``route_mask [B, R]`` bool (ego frame at plan time, SI units; ``Da``,
``Dl``, ``R`` follow from the network's ``ObservationSpec``: :func:`av.features.feature_shapes`).
Build them with ``av.features.encode(observation).as_tuple()``. ``N`` and ``L`` may be any size
>= 1 (masked max pooling / attention masks: the student's output does not change when padding
slots are added, removed or filled with anything).

**Outputs.** ``StudentNet.forward(*features) -> Tensor [B, H, 3]``: rear-axle x, y (m) and yaw
(rad) in the ego frame at plan time, at ``TRAJECTORY_DT`` = 0.5 s steps (times 0.5, 1.0, ...,
H x 0.5 s; default ``H`` = 16, 8 s): wrap as ``Trajectory(poses, dt=TRAJECTORY_DT)``. It is the
only output, so the student exports to ONNX as is (opset 17, dynamic batch/agents/lanes).
``TeacherNet.forward(*features) -> (trajectories [B, K, H, 3], logits [B, K])``: K proposals in
the same frame and steps, and unnormalised confidences (softmax over K).

**Checkpoints.** A Lightning checkpoint file (``RUN/teacher.ckpt``, ``RUN/student.ckpt``) that
loads with ``torch.load(path, weights_only=True)``. ``ckpt["hyper_parameters"]["network"]`` is a
plain dict ``{"kind": "teacher" | "student", "config": {...}, "spec": ObservationSpec.to_dict(),
"feature_version": int}``; the network's weights are the ``ckpt["state_dict"]`` entries under the
prefix ``"net."``. :func:`load_network` rebuilds the module (eval mode, CPU) from such a file and
refuses a corrupt file, an unknown kind or another feature version with one clear
:class:`~av.errors.AvError`; :func:`parameter_count` counts parameters.
"""

from av.nets.checkpoint import build_network, load_network, network_hparams, parameter_count
from av.nets.common import TRAJECTORY_DT
from av.nets.student import StudentConfig, StudentNet
from av.nets.teacher import TEACHER_PRESETS, TeacherConfig, TeacherNet

__all__ = [
    "TRAJECTORY_DT", "TEACHER_PRESETS", "StudentConfig", "StudentNet", "TeacherConfig", "TeacherNet",
    "build_network", "load_network", "network_hparams", "parameter_count",
]
