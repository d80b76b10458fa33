"""Running a Lightning system on a data module into a run directory, the Lightning way.

``RUN/checkpoints/<name>/last.ckpt`` is written after every epoch (resume from it with
``resume=True``: the run continues exactly as it would have without the interruption),
``RUN/logs/<name>/metrics.csv`` holds the logged metrics (and TensorBoard event files where the
``tensorboard`` package is installed and asked for), and at the end the last checkpoint is
copied atomically to ``RUN/<name>.ckpt``. Devices, nodes, strategy and accelerator are passed to
Lightning unchanged, so DDP on GPUs or a cluster needs no code change.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger

from av.errors import AvError
from av.fileio import atomic_write_bytes
from av.nets.checkpoint import read_checkpoint
from distill.config import TrainerConfig

GRADIENT_CLIP = 1.0  # max global gradient norm


def fit(system: pl.LightningModule, data: pl.LightningDataModule, out: str | Path, name: str,
        config: TrainerConfig, callbacks: Sequence[Callback] = ()) -> tuple[Path, float]:
    """Train ``system`` on ``data`` into ``out`` (see the module docstring), with extra Lightning
    ``callbacks``; returns the final checkpoint ``out/<name>.ckpt`` and the training wall time
    in seconds."""
    config.validate()
    out = Path(out)
    ckpt_dir = out / "checkpoints" / name
    last = ckpt_dir / "last.ckpt"
    resume_from = None
    if config.resume:
        if last.exists():
            read_checkpoint(last)  # a corrupt checkpoint is one clear error, not a traceback
            resume_from = last
    elif last.exists():
        raise AvError(f"{out}: already holds a training run; pass --resume to continue it or choose another --out")
    pl.seed_everything(config.seed, workers=True, verbose=False)
    loggers: list[Logger] = [CSVLogger(out, name="logs", version=name)]
    if config.tensorboard:
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(out, name="tensorboard", version=name))
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename=name + "-{epoch}", save_last=True, save_top_k=1,
                                 every_n_epochs=1, enable_version_counter=False)
    data.setup("fit")
    has_val = len(getattr(data, "val_set", None) or []) > 0
    trainer = pl.Trainer(
        max_epochs=config.max_epochs, accelerator=config.accelerator, devices=config.lightning_devices(),
        num_nodes=config.num_nodes, strategy=config.strategy, deterministic=True, logger=loggers,
        callbacks=[checkpoint, *callbacks], enable_progress_bar=config.progress, enable_model_summary=config.progress,
        default_root_dir=out, log_every_n_steps=10, limit_val_batches=1.0 if has_val else 0,
        num_sanity_val_steps=0, gradient_clip_val=GRADIENT_CLIP,
    )
    start = time.perf_counter()
    trainer.fit(system, datamodule=data, ckpt_path=resume_from, weights_only=True)
    elapsed = time.perf_counter() - start
    final = out / f"{name}.ckpt"
    if trainer.is_global_zero:
        if not last.exists():
            raise AvError(f"{last}: training wrote no checkpoint")
        atomic_write_bytes(final, last.read_bytes())
    return final, elapsed
