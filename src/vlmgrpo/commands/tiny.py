"""Build a tiny randomly initialised model of a real architecture (offline), saved in HF format."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl", "qwen2"])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from vlmgrpo.models import tiny

    if args.arch == "qwen2":
        path = tiny.build_tiny_text_lm(args.out, seed=args.seed)
    else:
        path = tiny.build_tiny_vlm(args.out, arch=args.arch, seed=args.seed)
    print(f"saved {args.arch} to {path}")
    return 0
