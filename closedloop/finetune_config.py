"""The settings of closed-loop fine-tuning (:mod:`closedloop.finetune`), apart from it so that the
command line is built without importing Lightning."""

from __future__ import annotations

from dataclasses import dataclass, field

from av.errors import AvError
from closedloop.distributed import RayBackend


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of a closed-loop fine-tuning run (``av closedloop train``)."""

    iterations: int = field(default=3, metadata={"help": "DAgger iterations"})
    agents: str = field(default="log,idm", metadata={"help": "background agents of the rollouts: log, idm or both"})
    beta: float = field(default=1.0, metadata={
        "help": "probability the teacher drives a scenario in iteration 1 (DAgger: 1, the teacher's states first)"})
    beta_decay: float = field(default=0.5, metadata={"help": "beta is multiplied by this every iteration"})
    label_stride: int = field(default=10, metadata={"help": "simulated steps (0.1 s) between relabelled states"})
    plan_every: int = field(default=2, metadata={"help": "planner calls every k steps in the training rollouts"})
    eval_plan_every: int = field(default=1, metadata={"help": "planner calls every k steps in the evaluations"})
    shard_size: int = field(default=8, metadata={"help": "scenarios per shard (one Ray task)"})
    epochs: int = field(default=10, metadata={"help": "fine-tuning epochs per iteration"})
    batch_size: int = field(default=64, metadata={"help": "states per training step"})
    lr: float = field(default=3e-4, metadata={"help": "fine-tuning learning rate (AdamW)"})
    log_weight: float = field(default=1.0, metadata={
        "help": "weight of the regression to the logged future in the fine-tuning loss (distillation's --log-weight); "
                "it keeps the student near the human drive where the teacher's search labels are poor"})
    logged_states: bool = field(default=True, metadata={
        "help": "the logged states of the training drives, relabelled by the teacher (the distillation data), "
                "join the aggregate, so the student keeps what it learned on them"})
    from_best: bool = field(default=True, metadata={
        "help": "each iteration fine-tunes the best student so far (CLS on the training drives and hard "
                "variants, iteration 0 included) rather than the last one"})
    fail_below: float = field(default=0.9, metadata={
        "help": "a drive with CLS below this (either mode) is a failure: it gets variants (hard examples)"})
    hardest: int = field(default=4, metadata={"help": "failed drives that get variants, per iteration"})
    per_failure: int = field(default=2, metadata={"help": "variants mined around each failed drive"})
    gifs: int = field(default=4, metadata={
        "help": "failures fixed (failed at iteration 0, pass at the last) drawn as GIFs in the report"})
    heldout_scenes: str = field(default="", metadata={
        "help": "scene names held out, comma-separated (default: the last scene name in sorted order)"})
    teacher_search_steps: int = field(default=40, metadata={"help": "teacher: 0.1 s steps each proposal is simulated"})
    seed: int = field(default=0, metadata={"help": "seed of everything (per iteration)"})
    ray: str = field(default="", metadata={
        "help": "run shards as Ray tasks: 'local' starts a local cluster, or a Ray address; empty: in-process"})
    ray_cpus: int = field(default=2, metadata={"help": "CPUs of the local Ray cluster"})
    max_retries: int = field(default=3, metadata={"help": "reruns of a Ray task whose worker died"})
    accelerator: str = field(default="cpu", metadata={"help": "Lightning accelerator of the fine-tuning: cpu, gpu, ..."})
    devices: str = field(default="1", metadata={"help": "Lightning devices of the fine-tuning: a count or ids like 0,1"})
    num_nodes: int = field(default=1, metadata={"help": "machines of the fine-tuning (Lightning DDP)"})
    strategy: str = field(default="auto", metadata={"help": "Lightning strategy of the fine-tuning: auto, ddp, ..."})
    progress: bool = field(default=True, metadata={"help": "progress lines and bars"})

    def validate(self) -> "FinetuneConfig":
        for name in ("iterations", "label_stride", "plan_every", "eval_plan_every", "shard_size", "epochs",
                     "batch_size"):
            if getattr(self, name) < 1:
                raise AvError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.beta <= 1.0 or not 0.0 <= self.beta_decay <= 1.0:
            raise AvError(f"--beta and --beta-decay must be in [0, 1], got {self.beta}, {self.beta_decay}")
        if not self.agent_modes() or set(self.agent_modes()) - {"log", "idm"}:
            raise AvError(f"--agents must be log, idm or log,idm; got {self.agents!r}")
        if self.hardest < 0 or self.per_failure < 0 or self.gifs < 0:
            raise AvError("--hardest, --per-failure and --gifs must be >= 0")
        return self

    def agent_modes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.strip() for a in self.agents.split(",") if a.strip()))

    def beta_at(self, iteration: int) -> float:
        """Probability the teacher drives a scenario in ``iteration`` (>= 1)."""
        return self.beta * self.beta_decay ** (iteration - 1)

    def backend(self) -> RayBackend | None:
        return RayBackend(self.ray, self.ray_cpus, self.max_retries) if self.ray else None
