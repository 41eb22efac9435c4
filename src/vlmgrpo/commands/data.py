"""Build datasets: `vlmgrpo data charxiv ...`, `vlmgrpo data img2code ...`, ...

Each builder module has `add_cli_arguments(parser)` and `run_cli(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib

BUILDERS = {
    "charxiv": ("vlmgrpo.data.charxiv", "seed A's CharXiv train/test split from a local copy"),
    "img2code": ("vlmgrpo.data.img2code", "matplotlib figures with reference code (sample, base64, split)"),
    "charts": ("vlmgrpo.data.charts", "offline synthetic chart-reasoning benchmark (CharXiv schema)"),
    "area": ("vlmgrpo.data.area", "a fixed shape-area evaluation set"),
    "geometry-synthetic": (
        "vlmgrpo.data.geometry_synthetic",
        "offline Geometry3K-layout diagrams (lengths, angles, areas) with exact answers",
    ),
}


class _DefaultsShown(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help, except for the uninformative None / False."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if text and action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="builder", metavar="DATASET", required=True)
    for name, (module, help_text) in BUILDERS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                continue  # not built yet in this checkout
            raise
        if not hasattr(mod, "add_cli_arguments"):
            continue
        # a description and each option's default in `vlmgrpo data NAME --help` (the sizes were
        # documented only in docs/)
        sp = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=_DefaultsShown,
        )
        mod.add_cli_arguments(sp)
        sp.set_defaults(_builder_run=mod.run_cli)


def run(args: argparse.Namespace) -> int:
    return int(args._builder_run(args) or 0)
