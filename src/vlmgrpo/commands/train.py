"""Run GRPO training from a recipe (packaged name or YAML path) with --set overrides."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default="demo", help="packaged recipe name or path to a YAML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=1e-5 (repeatable)",
    )
    p.add_argument("--output-dir", help="run folder (= --set train.output_dir=...)")
    p.add_argument("--model", help="policy id or folder (= --set model.name_or_path=...)")
    p.add_argument("--resume", action="store_true", help="resume from the latest complete checkpoint")
    p.add_argument("--resume-from", metavar="CKPT", help="resume from ckpt-N (name or path)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def resolve(args: argparse.Namespace):
    from vlmgrpo.config import load_config
    from vlmgrpo.dist import accelerate_overrides

    # an `accelerate launch` config applies on top of the recipe; the user's --set wins over both
    overrides = [*accelerate_overrides(), *args.overrides]
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.model:
        overrides.append(f"model.name_or_path={args.model}")
    return load_config(args.recipe, overrides)


def run(args: argparse.Namespace) -> int:
    import yaml

    cfg = resolve(args)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    if "adversary" in cfg.extra:  # seed B: policy + adversary (vlmgrpo.adversarial)
        from vlmgrpo.adversarial import train_adversarial as train
    else:
        from vlmgrpo.trainer import train

    resume = args.resume_from or ("latest" if args.resume else None)
    out = train(cfg, resume)
    print(f"run folder: {out}")
    return 0
