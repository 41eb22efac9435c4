"""Plot a run's curves (training, eval, checkpoint evaluation, reward components, warm start) as PNG
and PDF.

Reads only the run folder (config.yaml, metrics.jsonl, ckpt_tests/); writes
RUN/plots/<name>.{png,pdf}. With --compare, every figure draws every run, one colour per run.
Missing pieces are listed, not fatal.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", required=True, help="The run folder.")
    p.add_argument(
        "--compare", nargs="+", default=[], metavar="RUN", help="Other run folders, drawn in every figure."
    )
    p.add_argument(
        "--window",
        type=int,
        default=10,
        help="Trailing moving-average window, used on series of at least 3 windows (default 10).",
    )
    p.add_argument("--theme", choices=["plain", "festive"], default="plain", help="Colours (default plain).")
    p.add_argument("--out", default="", help="Where the files go (default RUN/plots).")
    p.add_argument("--formats", default="png,pdf", help="Comma-separated file formats (default png,pdf).")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlmgrpo.errors import DataError
    from vlmgrpo.report.plots import plot_run

    if args.window < 1:
        raise DataError(f"--window {args.window}: must be at least 1")
    if not Path(args.output_dir).is_dir():
        raise DataError(f"{args.output_dir}: run folder not found")
    formats = [f.strip().lower() for f in args.formats.split(",") if f.strip()]
    files, notes = plot_run(args.output_dir, args.compare, args.theme, args.window, args.out or None, formats)
    for note in notes:
        print(f"missing: {note}")
    if not files:
        print("nothing to plot")
        return 1
    print(f"wrote {len(files)} file(s) to {files[0].parent}: {', '.join(sorted({f.stem for f in files}))}")
    return 0
