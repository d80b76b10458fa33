"""Lightning systems: the teacher trained by imitation, the student trained by distillation.

Both wrap a plain network (``self.net``: :class:`~av.nets.TeacherNet` /
:class:`~av.nets.StudentNet`) and save only plain-typed hyperparameters, with the network's
description under ``"network"`` (see :mod:`av.nets`), so checkpoints load with
``weights_only=True`` and :func:`av.nets.load_network` rebuilds the network without Lightning.
A batch is a dict of the feature tensors (:data:`av.features.FEATURE_NAMES`), ``target``
``[B, H, 3]`` / ``target_valid`` ``[B, H]`` (the logged future) and, for distillation, the labels
``plan`` ``[B, H, 3]``, ``proposals`` ``[B, K, H, 3]``, ``scores`` ``[B, K]``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from av.features import FEATURE_NAMES, Features
from av.nets import StudentNet, TeacherNet, network_hparams
from av.nets.common import mlp
from distill.config import DistillLossConfig, OptimConfig
from distill.labels import network_labels

YAW_WEIGHT = 5.0  # m per rad: yaw errors weigh like this many metres of position error


def pose_error(pred: Tensor, target: Tensor) -> Tensor:
    """Per-pose error ``[...]`` (m): xy distance plus ``YAW_WEIGHT`` x |wrapped yaw difference|
    between poses ``[..., 3]``."""
    d_yaw = torch.atan2(torch.sin(pred[..., 2] - target[..., 2]), torch.cos(pred[..., 2] - target[..., 2]))
    return (pred[..., :2] - target[..., :2]).norm(dim=-1) + YAW_WEIGHT * d_yaw.abs()


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the last axis where ``mask`` (0 where none)."""
    m = mask.to(x.dtype)
    return (x * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def _features(batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
    return tuple(batch[n] for n in FEATURE_NAMES)


class TeacherSystem(pl.LightningModule):
    """Imitation of the logged ego future: winner-takes-all regression (the proposal closest to
    the log is pulled towards it) plus cross-entropy of the confidences towards that proposal,
    weighted by ``confidence_weight``."""

    def __init__(self, net: TeacherNet, optim: OptimConfig = OptimConfig(), confidence_weight: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.optim = optim
        self.confidence_weight = confidence_weight
        self.save_hyperparameters({"network": network_hparams(net), "optim": asdict(optim),
                                   "confidence_weight": confidence_weight})

    def _loss(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        trajectories, logits = self.net(*_features(batch))
        target, valid = batch["target"], batch["target_valid"]
        err = masked_mean(pose_error(trajectories, target[:, None]), valid[:, None])  # [B, K]
        best = err.argmin(-1)
        wta = err.gather(1, best[:, None]).mean()
        conf = F.cross_entropy(logits, best)
        loss = wta + self.confidence_weight * conf
        top = logits.argmax(-1)
        b = torch.arange(len(top), device=top.device)
        xy = (trajectories[b, top, :, :2] - target[..., :2]).norm(dim=-1)
        n = len(best)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=n)
        self.log(f"{stage}/min_ade", masked_mean(
            (trajectories[b, best, :, :2] - target[..., :2]).norm(dim=-1), valid).mean(), batch_size=n)
        self.log(f"{stage}/top1_ade", masked_mean(xy, valid).mean(), prog_bar=stage == "val", batch_size=n)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._loss(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._loss(batch, "val")

    def configure_optimizers(self) -> dict[str, Any]:
        return _optimizer(self, list(self.net.parameters()), self.optim)


class ScoreHead(nn.Module):
    """Predicts the labeller's score of a proposal ``[B, K, H, 3]`` from the student's scene
    embedding ``[B, D]``: logits ``[B, K]``. Training only; not part of the exported student."""

    def __init__(self, embedding: int, horizon: int, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = mlp([embedding + 3 * horizon, hidden, hidden, 1], final_relu=False)

    def forward(self, embedding: Tensor, proposals: Tensor) -> Tensor:
        B, K = proposals.shape[:2]
        scaled = torch.cat([proposals[..., :2] / 30.0, proposals[..., 2:]], -1).flatten(2)
        x = torch.cat([embedding[:, None].expand(B, K, -1), scaled], -1)
        return self.mlp(x)[..., 0]


class DistillationSystem(pl.LightningModule):
    """``(frozen teacher, student, loss)``: the student learns the labeller's plans and scores.

    Labels come with the batch (computed by the injected labeller and cached by the data
    module); a batch without them is labelled online by the frozen ``teacher`` network
    (:func:`~distill.labels.network_labels`). The teacher is neither trained, nor saved in the
    checkpoint, nor part of the hyperparameters.
    """

    def __init__(self, student: StudentNet, loss: DistillLossConfig = DistillLossConfig(),
                 optim: OptimConfig = OptimConfig(), teacher: TeacherNet | None = None) -> None:
        super().__init__()
        self.net = student
        self.loss_config, self.optim = loss, optim
        self.score_head = ScoreHead(student.embedding_size, student.config.horizon)
        if teacher is not None:
            teacher.requires_grad_(False).eval()
        object.__setattr__(self, "teacher", teacher)  # not a submodule: not saved, not trained
        self.save_hyperparameters({"network": network_hparams(student), "loss": asdict(loss),
                                   "optim": asdict(optim)})

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def _labels(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        if "plan" in batch:
            return batch["plan"], batch["proposals"], batch["scores"]
        if self.teacher is None:
            raise ValueError("distillation batch has no labels and the system has no teacher")
        labels = network_labels(self.teacher, Features.from_tuple(_features(batch)))
        return labels.plan, labels.proposals, labels.scores

    def _loss(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        feats = _features(batch)
        plan, proposals, scores = self._labels(batch)
        emb, context = self.net.encode(*feats)
        traj = self.net.decode(emb, context)
        plan_loss = pose_error(traj, plan).mean()
        known = torch.isfinite(scores)
        logits = self.score_head(emb, torch.nan_to_num(proposals))
        bce = F.binary_cross_entropy_with_logits(logits, torch.where(known, scores, 0.0).clamp(0, 1), reduction="none")
        score_loss = (bce * known).sum() / known.sum().clamp_min(1)
        cfg = self.loss_config
        loss = cfg.plan_weight * plan_loss + cfg.score_weight * score_loss
        log_ade = masked_mean((traj[..., :2] - batch["target"][..., :2]).norm(dim=-1), batch["target_valid"]).mean()
        if cfg.log_weight:
            loss = loss + cfg.log_weight * masked_mean(pose_error(traj, batch["target"]), batch["target_valid"]).mean()
        n = len(traj)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=n)
        self.log(f"{stage}/plan_ade", (traj[..., :2] - plan[..., :2]).norm(dim=-1).mean(),
                 prog_bar=stage == "val", batch_size=n)
        self.log(f"{stage}/score_bce", score_loss, batch_size=n)
        self.log(f"{stage}/log_ade", log_ade, batch_size=n)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._loss(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._loss(batch, "val")

    def configure_optimizers(self) -> dict[str, Any]:
        return _optimizer(self, [*self.net.parameters(), *self.score_head.parameters()], self.optim)


def _optimizer(system: pl.LightningModule, params: list[nn.Parameter], optim: OptimConfig) -> dict[str, Any]:
    """AdamW with a cosine learning-rate decay over the run's epochs."""
    opt = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    epochs = max(int(system.trainer.max_epochs or 1), 1)
    return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)}

