"""List the packaged recipes, or print one resolved."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="recipe to print (resolved, with its base)")


def run(args: argparse.Namespace) -> int:
    import yaml

    from vlmgrpo.config import list_recipes, load_config

    if args.name:
        print(yaml.safe_dump(load_config(args.name).to_dict(), sort_keys=False))
    else:
        print("\n".join(list_recipes()))
    return 0
