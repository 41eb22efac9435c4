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
import warnings

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("vlmgrpo.commands.train", "Run GRPO training from a recipe."),
    "demo": (
        "vlmgrpo.commands.demo",
        "Run an embedded offline demo (cycle, geometry, area, img2code), end to end.",
    ),
    "recipes": ("vlmgrpo.commands.recipes", "List or show the packaged recipes."),
    "tiny-model": ("vlmgrpo.commands.tiny", "Build a tiny random-init model of a real architecture."),
    "eval": ("vlmgrpo.commands.eval", "Evaluate the base model and every checkpoint of a run."),
    "plot": ("vlmgrpo.commands.plot", "Plot a run's curves (and compare runs)."),
    "report": ("vlmgrpo.commands.report", "Write a self-contained HTML report of a run."),
    "data": ("vlmgrpo.commands.data", "Build datasets (charxiv, img2code, ...)."),
    "serve-generator": (
        "vlmgrpo.commands.serve",
        "Serve a local text-to-image generator to all ranks over HTTP.",
    ),
    "export": ("vlmgrpo.commands.export", "Write a checkpoint as a plain Hugging Face folder (LoRA merged)."),
}


HELP = "Show this help message and exit."  # argparse's own line ends without a full stop


def _quiet_libraries(verbose: bool) -> None:
    """transformers' and matplotlib's own chatter (load reports, generation-config notes, font
    cache lines) buries the one line a user needs; -v brings it back."""
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("transformers", "matplotlib", "PIL", "huggingface_hub", "urllib3", "httpx", "filelock"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # their deprecation notes (FutureWarning etc.) are for this package's maintainers, not its users
    for lib in ("transformers", "peft", "matplotlib", "huggingface_hub"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=rf"{lib}(\.|$)")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=rf"{lib}(\.|$)")
        warnings.filterwarnings("ignore", category=UserWarning, module=rf"{lib}(\.|$)")
    if "transformers" in sys.modules:  # imported already: its verbosity was read at import
        sys.modules["transformers"].logging.set_verbosity_error()


def _first_paragraph(doc: str) -> str:
    """A module docstring's first paragraph, joined into one line (argparse rewraps it): its first
    line alone cut sentences that wrap, e.g. `vlmgrpo demo --help` ended in "on a task's own"."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def build_parser() -> argparse.ArgumentParser:
    from vlmgrpo import __version__

    parser = argparse.ArgumentParser(
        prog="vlmgrpo", description="GRPO post-training for vision-language models.", add_help=False
    )
    parser.add_argument("-h", "--help", action="help", help=HELP)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="Debug logging, transformers' own messages included."
    )
    parser.add_argument(
        "--version", action="version", version=f"vlmgrpo {__version__}", help="Print the version and exit."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("vlmgrpo.commands"):
                continue  # a command not built yet in this checkout
            raise
        p = sub.add_parser(
            name,
            help=help_text,
            description=_first_paragraph(mod.__doc__ or help_text),
            add_help=False,
        )
        p.add_argument("-h", "--help", action="help", help=HELP)
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
    _quiet_libraries(args.verbose)
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
    except BrokenPipeError:  # `vlmgrpo recipes NAME | head`: the reader left; no traceback
        # the interpreter flushes stdout at exit, which would raise again: point it at /dev/null
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it


if __name__ == "__main__":
    sys.exit(main())
