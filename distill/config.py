"""The settings of teacher training and distillation, as frozen dataclasses (the CLI is generated
from them). This module imports no Lightning, so building the command line stays fast."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from av.errors import AvError


@dataclass(frozen=True)
class DataConfig:
    """Where samples come from and how they are batched.

    ``stores``: scenario store directories (logged drives, variants, synthetic drives);
    ``val_scenes``: scene names held out for validation (empty: the last scene name in sorted
    order); ``stride``: log steps between samples of one scenario; ``batch_size``: samples per
    training step; ``chunk``: scenarios observed at once; ``seed``: shuffling seed;
    ``cache``: directory of cached samples and labels (default ``$AV_CACHE`` or
    ``~/.cache/av``).
    """

    stores: tuple[str, ...]
    val_scenes: tuple[str, ...] = ()
    stride: int = field(default=2, metadata={"help": "log steps between samples of a scenario"})
    batch_size: int = field(default=64, metadata={"help": "samples per training step"})
    chunk: int = field(default=32, metadata={"help": "scenarios observed at once while building samples"})
    seed: int = 0
    cache: str | None = field(default=None, metadata={
        "help": "directory of cached samples and labels ($AV_CACHE or ~/.cache/av)"})

    def validate(self) -> "DataConfig":
        if not self.stores:
            raise AvError("--store: give at least one scenario store")
        for name in ("stride", "batch_size", "chunk"):
            if getattr(self, name) < 1:
                raise AvError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        return self

    def cache_dir(self) -> Path:
        if self.cache:
            return Path(self.cache)
        root = os.environ.get("AV_CACHE")
        return Path(root) if root else Path.home() / ".cache" / "av"


@dataclass(frozen=True)
class OptimConfig:
    """AdamW learning rate (decayed with a cosine over the epochs) and weight decay."""

    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})


@dataclass(frozen=True)
class DistillLossConfig:
    """Weights of the distillation loss: ``plan_weight`` x regression to the labeller's plan
    (mean pose error, m) + ``score_weight`` x binary cross-entropy of the student's predicted
    scores of the labeller's proposals against the labeller's scores (Hydra-MDP-style
    multi-target distillation) + ``log_weight`` x regression to the logged future.

    The defaults are the best of the held-out runs in the README (teacher/student section): the
    teacher's chosen plans switch between proposals from one state to the next, so the logged
    drive regularises the speed the student learns, and the teacher's plans and scores teach it
    where to deviate from it."""

    plan_weight: float = field(default=0.3, metadata={"help": "weight of the regression to the teacher's plan"})
    score_weight: float = field(default=1.0, metadata={"help": "weight of the distillation of the teacher's scores"})
    log_weight: float = field(default=1.0, metadata={"help": "weight of the regression to the logged future"})


@dataclass(frozen=True)
class TrainerConfig:
    """Lightning trainer settings (passed through) and run control.

    ``devices``: "auto", a count or a comma-separated list of ids; ``seed``: seeds everything
    (runs are deterministic); ``resume``: continue from ``RUN/checkpoints/<name>/last.ckpt``;
    ``progress``: progress bars; ``tensorboard``: TensorBoard logs besides CSV.
    """

    max_epochs: int = field(default=20, metadata={"help": "training epochs"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation and shuffling (deterministic runs)"})
    accelerator: str = field(default="auto", metadata={"help": "Lightning accelerator: auto, cpu, gpu, ..."})
    devices: str = field(default="auto", metadata={"help": "Lightning devices: auto, a count, or ids like 0,1"})
    num_nodes: int = field(default=1, metadata={"help": "machines for distributed training"})
    strategy: str = field(default="auto", metadata={"help": "Lightning strategy: auto, ddp, ..."})
    resume: bool = field(default=False, metadata={"help": "continue from RUN/checkpoints/<name>/last.ckpt"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})
    tensorboard: bool = field(default=False, metadata={"help": "TensorBoard logs besides CSV"})

    def validate(self) -> "TrainerConfig":
        if self.max_epochs < 1:
            raise AvError(f"--max-epochs must be >= 1, got {self.max_epochs}")
        if self.num_nodes < 1:
            raise AvError(f"--num-nodes must be >= 1, got {self.num_nodes}")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise AvError("--tensorboard needs the tensorboard package (pip install tensorboard)")
        return self

    def lightning_devices(self) -> int | str | list[int]:
        d = self.devices.strip()
        if d == "auto" or d == "-1":
            return d
        try:
            return [int(x) for x in d.split(",") if x] if "," in d else int(d)
        except ValueError:
            raise AvError(f"--devices: expected auto, a count or ids like 0,1; got {d!r}") from None
