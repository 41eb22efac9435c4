"""The `vlmgrpo` command: this file only registers subcommands.

Each subcommand lives in a module with `add_arguments(parser)` and `run(args) -> int`; modules
import their heavy dependencies inside `run`, so `vlmgrpo --help` stays fast. A `VlmgrpoError`
prints as one line (`error: ...`) with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("vlmgrpo.commands.train", "run GRPO training from a recipe"),
    "demo": ("vlmgrpo.commands.demo", "the embedded offline cycle-consistency demo, end to end"),
    "recipes": ("vlmgrpo.commands.recipes", "list or show the packaged recipes"),
    "tiny-model": ("vlmgrpo.commands.tiny", "build a tiny random-init model of a real architecture"),
    "eval": ("vlmgrpo.commands.eval", "evaluate the base model and every checkpoint of a run"),
    "plot": ("vlmgrpo.commands.plot", "plot a run's curves (and compare runs)"),
    "report": ("vlmgrpo.commands.report", "write a self-contained HTML report of a run"),
    "data": ("vlmgrpo.commands.data", "build datasets (charxiv, img2code, ...)"),
    "serve-generator": (
        "vlmgrpo.commands.serve",
        "serve a local text-to-image generator to all ranks over HTTP",
    ),
    "export": ("vlmgrpo.commands.export", "Write a checkpoint as a plain Hugging Face folder (LoRA merged)."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmgrpo", description="GRPO post-training for vision-language models"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("vlmgrpo.commands"):
                continue  # a command not built yet in this checkout
            raise
        p = sub.add_parser(
            name, help=help_text, description=(mod.__doc__ or help_text).strip().splitlines()[0]
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    from vlmgrpo.errors import VlmgrpoError

    try:
        return int(args._run(args) or 0)
    except VlmgrpoError as e:
        # under torchrun another rank's progress bar may hold the line: start a fresh one, in one write
        fresh = "\n" if os.environ.get("RANK", "0") != "0" else ""
        sys.stderr.write(f"{fresh}error: {e}\n")
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
