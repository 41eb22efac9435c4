"""Build a tiny randomly initialised model of a real architecture (offline), saved in HF format."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--arch",
        default="qwen2_5_vl",
        choices=["qwen2_5_vl", "qwen3_vl", "qwen2"],
        help="The architecture (qwen2: a text-only causal LM).",
    )
    p.add_argument("--out", required=True, help="Output folder (created; must not be a file).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")


def run(args: argparse.Namespace) -> int:
    from vlmgrpo.runlog import check_output_dir

    check_output_dir(args.out, "--out")  # before torch and transformers load
    from vlmgrpo.models import tiny

    if args.arch == "qwen2":
        path = tiny.build_tiny_text_lm(args.out, seed=args.seed)
    else:
        path = tiny.build_tiny_vlm(args.out, arch=args.arch, seed=args.seed)
    print(f"saved {args.arch} to {path}")
    return 0
