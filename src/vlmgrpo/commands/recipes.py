"""List the packaged recipes (with a line each; offline ones marked), or print one resolved."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="Recipe to print, resolved (with its base).")


def run(args: argparse.Namespace) -> int:
    import yaml

    from vlmgrpo.config import list_recipes, load_config, recipe_description

    if args.name:
        print(yaml.safe_dump(load_config(args.name).to_dict(), sort_keys=False))
    else:
        names = list_recipes()
        width = max(len(n) for n in names) + 2
        for name in names:
            print(f"{name:<{width}}{recipe_description(name)}")
    return 0
