"""``av export``: the student from a checkpoint to ONNX (+ FP16 variant), and ONNX to a TensorRT
engine; each model file gets a JSON manifest beside it (see :mod:`av.export`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from av.export import OPSET

    p = sub.add_parser("export", help="export the student to ONNX and TensorRT (with manifests)")
    s = p.add_subparsers(dest="export_command", metavar="COMMAND", required=True)

    o = s.add_parser("onnx", help="student checkpoint -> one self-contained ONNX file (+ FP16 variant)",
                     description="Writes OUT, OUT's FP16 variant (NAME.fp16.onnx) and a manifest OUT.json "
                     "beside each, after checking parity with eager PyTorch on real observations.")
    o.add_argument("--checkpoint", required=True, type=Path, metavar="CKPT", help="student checkpoint (RUN/student.ckpt)")
    o.add_argument("--out", required=True, type=Path, metavar="OUT", help="ONNX file to write (student.onnx)")
    o.add_argument("--store", type=Path, default=None, metavar="STORE",
                   help="scenario store whose drives give the parity observations "
                   "(default: the shared nuScenes-mini drives)")
    o.add_argument("--dataroot", type=Path, default=None, metavar="DIR",
                   help="nuScenes dataroot for the parity observations instead of a store")
    o.add_argument("--steps-per-scenario", type=int, default=3,
                   help="log steps observed per scenario for the parity check (default: 3)")
    o.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default: {OPSET})")
    o.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True,
                   help="also write the FP16 variant (default: on)")
    o.add_argument("--seed", type=int, default=0, help="seed of the observed log steps (default: 0)")
    o.set_defaults(func=_onnx)

    t = s.add_parser("tensorrt", help="exported ONNX -> serialized TensorRT engine (needs TensorRT >= 10 and a GPU)")
    t.add_argument("--onnx", required=True, type=Path, metavar="ONNX", help="ONNX file from av export onnx")
    t.add_argument("--out", required=True, type=Path, metavar="OUT", help="engine file to write (student.engine)")
    t.add_argument("--fp16", action="store_true", help="build from the FP16 variant (precision comes from the graph)")
    t.add_argument("--max-batch", type=int, default=256, help="largest batch of the engine's profile (default: 256)")
    t.add_argument("--workspace-mb", type=int, default=1024, help="builder workspace, MiB (default: 1024)")
    t.set_defaults(func=_tensorrt)


def _scenarios(args: argparse.Namespace) -> list:
    from av.data.nuscenes import ImportConfig, load_nuscenes
    from av.errors import AvError
    from av.paths import nuscenes_mini_dir

    if args.store is not None:
        from scenarios.store import read_store

        return list(read_store(args.store))
    root = args.dataroot or nuscenes_mini_dir()
    if root is None:
        raise AvError("parity check needs real observations: pass --store or --dataroot "
                      "(no shared nuScenes-mini data found)")
    return list(load_nuscenes(root, ImportConfig()))


def _onnx(args: argparse.Namespace) -> int:
    from av.errors import AvError
    from av.export import export_onnx, observed_features
    from av.nets import load_network

    if args.steps_per_scenario < 1:
        raise AvError(f"--steps-per-scenario must be >= 1, got {args.steps_per_scenario}")
    net = load_network(args.checkpoint)
    if net.kind != "student":
        raise AvError(f"{args.checkpoint}: holds a {net.kind} network; only the student is exported")
    real = observed_features(_scenarios(args), net.spec, args.steps_per_scenario, args.seed)
    manifest = export_onnx(net, args.out, real, source=args.checkpoint, opset=args.opset, fp16=args.fp16)
    summary = {"model": str(args.out), "sha256": manifest["model_sha256"], "opset": manifest["opset"],
               "parity": {k: manifest["parity"][k] for k in ("max_abs_error_m", "max_abs_error_rad", "observations")}}
    if manifest["fp16_variant"]:
        p16 = manifest["fp16_variant"]["parity"]
        summary["fp16"] = {"model": manifest["fp16_variant"]["file"],
                           "parity": {k: p16[k] for k in ("max_abs_error_m", "max_abs_error_rad")}}
    print(json.dumps(summary))
    return 0


def _tensorrt(args: argparse.Namespace) -> int:
    from av.errors import AvError
    from av.export import export_tensorrt

    if args.max_batch < 1 or args.workspace_mb < 1:
        raise AvError("--max-batch and --workspace-mb must be >= 1")
    manifest = export_tensorrt(args.onnx, args.out, fp16=args.fp16, max_batch=args.max_batch,
                               workspace_mb=args.workspace_mb)
    print(json.dumps({k: manifest[k] for k in ("model_file", "model_sha256", "precision", "tensorrt_version",
                                               "gpu", "parity_vs_onnxruntime", "latency")}))
    return 0
