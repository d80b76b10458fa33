"""Training samples from scenario stores, and the Lightning data module over them.

A sample is a state of a stored scenario: (scenario, log step ``t``) for ``t`` from the
scenario's ``history_steps`` on, every ``stride`` steps, while at least one logged step follows.
Its inputs are :func:`av.features.encode` of :func:`av.observe.observe` (exactly what the car
sees in simulation), its imitation target the logged ego future at the networks' output steps,
and, for distillation, the labels of an injected labeller. Samples and labels are computed once
and cached on disk under keys derived from everything that produced them (the stores' contents,
the observation spec, the sampling settings, the feature version, and for labels the labeller's
settings with its teacher checkpoint's hash), never under a fixed name.
Samples are split into training and validation by scene: every scenario (and every variant) of a
held-out scene is validation only.

Everything is computed with one Python loop over time steps per chunk of scenarios; each step
observes the whole chunk at once.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from av.batch import ScenarioBatch, collate
from av.errors import AvError
from av.features import FEATURE_NAMES, FEATURE_VERSION, encode
from av.fileio import atomic_write_bytes
from av.nets import TRAJECTORY_DT
from av.types import Scenario
from distill.config import DataConfig
from distill.labels import Labeller

LABEL_NAMES = ("plan", "proposals", "scores")
CACHE_FORMAT = 1


def load_scenarios(stores: Sequence[str]) -> list[Scenario]:
    from scenarios.store import read_store

    return [s for store in stores for s in read_store(store)]


def choose_val_scenes(scenarios: Sequence[Scenario], val_scenes: Sequence[str]) -> tuple[str, ...]:
    """The held-out scene names: ``val_scenes`` (each must exist) or, if empty, the last scene
    name in sorted order (none when there is only one scene)."""
    names = sorted({s.source.scene_name for s in scenarios})
    if val_scenes:
        unknown = sorted(set(val_scenes) - set(names))
        if unknown:
            raise AvError(f"--val-scenes: no scenario of scene {unknown[0]!r} in the stores")
        if set(val_scenes) >= set(names):
            raise AvError("--val-scenes: every scene is held out; nothing is left to train on")
        return tuple(sorted(set(val_scenes)))
    return (names[-1],) if len(names) > 1 else ()


def _states(scenarios: Sequence[Scenario], stride: int, chunk: int
            ) -> Iterator[tuple[ScenarioBatch, Tensor, Tensor]]:
    """``(batch, t [B], keep bool [B])`` for every sampled time of every chunk of scenarios, in a
    fixed order; rows past a scenario's last sample carry a clamped ``t`` and ``keep`` False."""
    for i in range(0, len(scenarios), chunk):
        batch = collate(list(scenarios[i:i + chunk]))
        start = batch.history_steps
        last = batch.step_valid.sum(1) - 1
        j = 0
        while True:
            t = start + j * stride
            keep = t < last
            if not bool(keep.any()):
                break
            yield batch, torch.minimum(t, last - 1), keep
            j += 1


def build_samples(scenarios: Sequence[Scenario], spec, horizon: int, stride: int, chunk: int
                  ) -> tuple[dict[str, Tensor], list[tuple[str, int]]]:
    """Inputs and imitation targets of every sample (see the module docstring).

    Returns tensors keyed by :data:`~av.features.FEATURE_NAMES` plus ``target`` ``[S, H, 3]``
    (the logged ego future at ``TRAJECTORY_DT`` steps, ego frame, m and rad) and
    ``target_valid`` bool ``[S, H]``, and the ``(scenario id, t)`` of each sample.
    """
    from av.observe import observe, prepare_map, privileged

    parts: dict[str, list[Tensor]] = {n: [] for n in (*FEATURE_NAMES, "target", "target_valid")}
    ids: list[tuple[str, int]] = []
    cached: tuple[ScenarioBatch, Any] | None = None
    for batch, t, keep in _states(scenarios, stride, chunk):
        if cached is None or cached[0] is not batch:
            cached = (batch, prepare_map(batch, spec))
            index = future_index(batch.dt, horizon, spec.future_steps)
        obs = observe(batch, t, spec, cache=cached[1])
        feats = encode(obs)
        for name, x in zip(FEATURE_NAMES, feats.as_tuple()):
            parts[name].append(x[keep])
        fut = privileged(batch, t, spec, cache=cached[1])
        parts["target"].append(fut.ego_future[:, index, :3][keep].float())
        parts["target_valid"].append(fut.ego_future_valid[:, index][keep])
        ids.extend((batch.ids[b], int(t[b])) for b in torch.nonzero(keep)[:, 0].tolist())
    if not ids:
        raise AvError("the stores hold no scenario with a step after its history; nothing to train on")
    return {k: torch.cat(v) for k, v in parts.items()}, ids


def future_index(dt: float, horizon: int, future_steps: int) -> Tensor:
    """Indices into the logged future (``dt`` apart) of the output steps ``TRAJECTORY_DT`` apart."""
    ratio = TRAJECTORY_DT / dt
    if abs(ratio - round(ratio)) > 1e-6:
        raise AvError(f"scenario step {dt} s does not divide the output step {TRAJECTORY_DT} s")
    index = torch.arange(1, horizon + 1) * int(round(ratio)) - 1
    if int(index[-1]) >= future_steps:
        raise AvError(f"the observation spec's future_steps ({future_steps}) is shorter than the "
                      f"network horizon ({horizon} x {TRAJECTORY_DT} s)")
    return index


def compute_labels(scenarios: Sequence[Scenario], labeller: Labeller, horizon: int, stride: int, chunk: int
                   ) -> dict[str, Tensor]:
    """The labeller's ``plan``, ``proposals`` and ``scores`` for every sample, in the order of
    :func:`build_samples`."""
    parts: dict[str, list[Tensor]] = {n: [] for n in LABEL_NAMES}
    for batch, t, keep in _states(scenarios, stride, chunk):
        labels = labeller(batch, t)
        try:
            labels.validate(batch.batch_size, horizon)
        except ValueError as e:
            raise AvError(f"labeller {labeller.settings.get('labeller', '?')}: {e}") from None
        for name in LABEL_NAMES:
            parts[name].append(getattr(labels, name)[keep].float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def store_fingerprint(stores: Sequence[str]) -> str:
    """SHA-256 over the files (names and bytes) of the given scenario stores."""
    h = hashlib.sha256()
    for store in stores:
        root = Path(store)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        if not files:
            raise AvError(f"{store}: no such scenario store")
        for p in files:
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def sample_cache_key(stores: Sequence[str], spec, horizon: int, stride: int, chunk: int) -> str:
    """SHA-256 key of cached samples: the stores' contents, the observation spec, the horizon,
    the sampling stride and chunk (which fix the order), the feature and cache versions."""
    payload = {
        "format": CACHE_FORMAT, "feature_version": FEATURE_VERSION, "stores": store_fingerprint(stores),
        "spec": spec.to_dict(), "horizon": horizon, "dt": TRAJECTORY_DT, "stride": stride, "chunk": chunk,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def label_cache_key(labeller_settings: dict[str, Any], sample_key: str) -> str:
    """SHA-256 key of cached labels: the labeller's settings (with its teacher checkpoint's hash)
    and the key of the samples they label. Anything that changes the labels changes the key."""
    payload = {"format": CACHE_FORMAT, "labeller": labeller_settings, "samples": sample_key}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def read_cached(path: Path, key: str) -> dict[str, Any] | None:
    """The entry cached at ``path`` if it exists, loads (``weights_only``) and carries ``key``."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged cache entry is recomputed
        return None
    return data if isinstance(data, dict) and data.get("key") == key else None


def write_cached(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Write ``entry`` with its ``key`` to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save({"key": key, **entry}, buf)
    atomic_write_bytes(path, buf.getvalue())


class SampleSet(Dataset):
    """Rows of a dict of equally long tensors; an item is a dict of per-sample tensors."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.tensors = tensors
        self.length = len(next(iter(tensors.values())))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


class EpochShuffle(Sampler[int]):
    """A shuffle that depends only on ``(seed, epoch)``, so a resumed run visits the samples in
    the same order as an uninterrupted one (Lightning calls ``set_epoch``)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())


@dataclass
class Split:
    """Which scenes train and which validate (written to the run directory)."""

    train_scenes: list[str] = field(default_factory=list)
    val_scenes: list[str] = field(default_factory=list)
    train_samples: int = 0
    val_samples: int = 0


class ScenarioDataModule(pl.LightningDataModule):
    """Samples of the scenario stores (see the module docstring) for a network of ``spec`` and
    ``horizon``, cached under :func:`sample_cache_key`; with a ``labeller``, every sample also
    carries the labeller's ``plan``, ``proposals`` and ``scores`` (cached under
    :func:`label_cache_key`). Cache entries load with ``weights_only=True``."""

    def __init__(self, config: DataConfig, spec, horizon: int, labeller: Labeller | None = None) -> None:
        super().__init__()
        self.config = config.validate()
        self.spec, self.horizon, self.labeller = spec, horizon, labeller
        self.split = Split()
        self.train_set: SampleSet | None = None
        self.val_set: SampleSet | None = None
        self.label_cache_path: Path | None = None

    def _samples(self, scenarios: Sequence[Scenario]) -> tuple[dict[str, Tensor], list[tuple[str, int]], str]:
        """Samples of the stores (cached), their ``(scenario id, t)`` and their cache key."""
        cfg = self.config
        key = sample_cache_key(cfg.stores, self.spec, self.horizon, cfg.stride, cfg.chunk)
        path = cfg.cache_dir() / f"samples-{key[:32]}.pt"
        entry = read_cached(path, key)
        if entry is None:
            tensors, ids = build_samples(scenarios, self.spec, self.horizon, cfg.stride, cfg.chunk)
            entry = {"tensors": tensors, "scenario_ids": [i for i, _ in ids], "steps": [t for _, t in ids]}
            write_cached(path, key, entry)
        return entry["tensors"], list(zip(entry["scenario_ids"], entry["steps"])), key

    def _labels(self, scenarios: Sequence[Scenario], sample_key: str, count: int) -> dict[str, Tensor]:
        cfg = self.config
        key = label_cache_key(self.labeller.settings, sample_key)
        path = cfg.cache_dir() / f"labels-{key[:32]}.pt"
        self.label_cache_path = path
        entry = read_cached(path, key)
        if entry is None or any(len(entry[n]) != count for n in LABEL_NAMES):
            entry = compute_labels(scenarios, self.labeller, self.horizon, cfg.stride, cfg.chunk)
            write_cached(path, key, entry)
        return {n: entry[n] for n in LABEL_NAMES}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        cfg = self.config
        scenarios = load_scenarios(cfg.stores)
        if not scenarios:
            raise AvError(f"{', '.join(cfg.stores)}: the stores hold no scenarios")
        val_scenes = choose_val_scenes(scenarios, cfg.val_scenes)
        tensors, ids, sample_key = self._samples(scenarios)
        tensors = dict(tensors)
        if self.labeller is not None:
            tensors.update(self._labels(scenarios, sample_key, len(ids)))
        scene_of = {s.id: s.source.scene_name for s in scenarios}
        is_val = torch.tensor([scene_of[sid] in val_scenes for sid, _ in ids], dtype=torch.bool)
        self.train_set = SampleSet({k: v[~is_val] for k, v in tensors.items()})
        self.val_set = SampleSet({k: v[is_val] for k, v in tensors.items()})
        self.split = Split(train_scenes=sorted(set(scene_of.values()) - set(val_scenes)),
                           val_scenes=list(val_scenes), train_samples=len(self.train_set),
                           val_samples=len(self.val_set))

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        return DataLoader(self.train_set, batch_size=self.config.batch_size,
                          sampler=EpochShuffle(len(self.train_set), self.config.seed))

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        return DataLoader(self.val_set, batch_size=max(self.config.batch_size, 256))

    def split_summary(self) -> dict[str, Any]:
        return asdict(self.split)
