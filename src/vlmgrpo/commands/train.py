"""Run GRPO training from a recipe (packaged name or YAML path) with --set overrides."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recipe", help="Packaged recipe name or path to a YAML file (`vlmgrpo recipes` lists them)."
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a config value, e.g. --set optim.lr=1e-5 (repeatable).",
    )
    p.add_argument("--output-dir", help="Run folder (the same as --set train.output_dir=...).")
    p.add_argument("--model", help="Policy id or folder (the same as --set model.name_or_path=...).")
    p.add_argument(
        "--resume", action="store_true", help="Resume from the latest complete checkpoint of the run folder."
    )
    p.add_argument("--resume-from", metavar="CKPT", help="Resume from ckpt-N (a name or a path).")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="Start over in a run folder that holds another run: its files move to "
        "RUN/overwritten/<time>/ (nothing is deleted).",
    )
    p.add_argument("--print-config", action="store_true", help="Print the resolved config and exit.")


def resolve(args: argparse.Namespace):
    from vlmgrpo.config import load_config

    # an `accelerate launch` config applies on top of the recipe; the user's --set wins over both.
    # vlmgrpo.dist imports torch (seconds on a busy CPU): only under accelerate (the variable it
    # always exports), so a misspelled recipe or key fails at once
    accel: list[str] = []
    if "ACCELERATE_MIXED_PRECISION" in os.environ:
        from vlmgrpo.dist import accelerate_overrides

        accel = accelerate_overrides()
    overrides = [*accel, *args.overrides]
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.model:
        overrides.append(f"model.name_or_path={args.model}")
    return load_config(args.recipe, overrides)


def _walk_strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _walk_strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _walk_strings(v)]
    return [value] if isinstance(value, str) else []


def prepare(cfg, resume: bool, overwrite: bool, recipe=None) -> None:
    """Before any model loads: the run folder is usable (not a file), another run's files in it are
    neither mixed in nor lost, and an offline recipe's missing inputs are built."""
    from pathlib import Path

    from vlmgrpo import offline, runlog

    out = Path(cfg.train.output_dir)
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 checks and moves; the others must
        runlog.check_output_dir(out)  # not race it (they would see the files it is moving)
        offline.ensure_inputs(cfg, recipe=recipe)  # waits for rank 0's builds
        return
    inputs = runlog.inputs_inside(out, _walk_strings(cfg.to_dict()))
    moved = runlog.prepare_run_dir(out, resume=resume, overwrite=overwrite, inputs=inputs)
    if moved is not None:
        print(f"--overwrite: the earlier run's files moved to {moved}", flush=True)
    offline.ensure_inputs(cfg, recipe=recipe)  # `recipe`: only its own paths are built, not --model's


# config keys that name a run's inputs on disk: recorded absolute in config.yaml (`absolute_inputs`)
INPUT_PATH_KEYS = (
    "model.name_or_path",
    "data.kwargs.path",
    "data.eval_kwargs.path",
    "extra.adversary.model.name_or_path",
)


def absolute_inputs(cfg) -> list[str]:
    """Make the relative local paths among `INPUT_PATH_KEYS` absolute (only those that exist from
    here), so that the run folder's config.yaml, and a LoRA adapter's base model path, still point
    at the inputs when `vlmgrpo eval`, `export` or `--resume` run from another folder. Returns the
    keys changed."""
    from pathlib import Path

    def child(node, k: str):
        return node.get(k) if isinstance(node, dict) else getattr(node, k, None)

    changed = []
    for key in INPUT_PATH_KEYS:
        *parents, last = key.split(".")
        node = cfg
        for k in parents:
            node = child(node, k) if node is not None else None
        value = child(node, last) if node is not None else None
        # a folder or file that exists from here is a local path, whatever its shape (sources.py)
        if not isinstance(value, str) or not value or not Path(value).expanduser().exists():
            continue
        if Path(value).expanduser().is_absolute():
            continue
        absolute = str(Path(value).expanduser().resolve())
        if isinstance(node, dict):
            node[last] = absolute
        else:
            setattr(node, last, absolute)
        changed.append(key)
    return changed


def run(args: argparse.Namespace) -> int:
    import yaml

    from vlmgrpo.config import list_recipes, recipe_description

    if not args.recipe:
        lines = [f"  {name:<26} {recipe_description(name)}" for name in list_recipes()]
        sys.stderr.write(
            "error: train needs --recipe NAME (a packaged recipe below) or --recipe path/to/recipe.yaml\n"
            + "\n".join(lines)
            + "\n"
        )
        return 2
    cfg = resolve(args)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    resume = args.resume_from or ("latest" if args.resume else None)
    if cfg.build:
        from vlmgrpo.config import load_config

        recipe = load_config(args.recipe)
    else:
        recipe = None
    prepare(cfg, resume=bool(resume), overwrite=args.overwrite, recipe=recipe)
    absolute_inputs(cfg)  # after the builds: an offline recipe's model folder exists by now
    if "adversary" in cfg.extra:  # seed B: policy + adversary (vlmgrpo.adversarial)
        from vlmgrpo.adversarial import train_adversarial as train
    else:
        from vlmgrpo.trainer import train

    out = train(cfg, resume)
    print(f"run folder: {out}")
    return 0
