"""Rebuilding networks from their saved hyperparameters and from checkpoint files.

A network's hyperparameters are a plain dict (``kind``, ``config``, ``spec``, ``feature_version``)
so that checkpoints load with ``torch.load(..., weights_only=True)``; see :mod:`av.nets`.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from av.errors import AvError
from av.features import FEATURE_VERSION

STATE_PREFIX = "net."


def network_hparams(net: nn.Module) -> dict[str, Any]:
    """The plain-dict description of ``net`` (a TeacherNet or StudentNet) that rebuilds it."""
    return {"kind": net.kind, "config": asdict(net.config), "spec": net.spec.to_dict(),
            "feature_version": FEATURE_VERSION}


def build_network(hparams: dict[str, Any]) -> nn.Module:
    """A freshly initialised network from :func:`network_hparams` output (AvError if unusable)."""
    from av.nets.student import StudentConfig, StudentNet
    from av.nets.teacher import TeacherConfig, TeacherNet
    from av.observe import ObservationSpec

    kinds = {"teacher": (TeacherNet, TeacherConfig), "student": (StudentNet, StudentConfig)}
    try:
        cls, cfg_cls = kinds[hparams["kind"]]
        version = hparams["feature_version"]
        spec = ObservationSpec.from_dict(hparams["spec"])
        config = cfg_cls(**hparams["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise AvError(f"network hyperparameters are not usable ({type(e).__name__}: {e})") from None
    if version != FEATURE_VERSION:
        raise AvError(f"network was trained on feature version {version}, this av encodes version "
                      f"{FEATURE_VERSION}; retrain it")
    return cls(spec, config)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict at ``path``, loaded with ``weights_only=True`` onto the CPU; a missing,
    truncated or otherwise unreadable file raises one-line :class:`AvError`."""
    path = Path(path)
    if not path.is_file():
        raise AvError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AvError(f"{path}: not a readable checkpoint ({reason[:200]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise AvError(f"{path}: not a model checkpoint (no state_dict)")
    return ckpt


def load_network(path: str | Path) -> nn.Module:
    """The network saved in the checkpoint at ``path`` (CPU, eval mode; see :mod:`av.nets`)."""
    ckpt = read_checkpoint(path)
    hp = ckpt.get("hyper_parameters", {}).get("network")
    if not isinstance(hp, dict):
        raise AvError(f"{path}: checkpoint carries no network hyperparameters")
    net = build_network(hp)
    state = {k[len(STATE_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(STATE_PREFIX)}
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise AvError(f"{path}: weights do not match the saved network ({str(e).splitlines()[0]})") from None
    return net.eval()


def parameter_count(net: nn.Module) -> int:
    """Number of parameters (frozen ones included)."""
    return sum(p.numel() for p in net.parameters())
