"""Write a self-contained HTML report of a run (headline figures, curves, checkpoint evaluation, sample
gallery); opens from disk.

Everything is inlined (base64 images, PNG curves): no server, no network, one file to share.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", required=True, help="The run folder.")
    p.add_argument("--out", default="", help="The HTML file (default RUN/report.html).")
    p.add_argument(
        "--compare", nargs="+", default=[], metavar="RUN", help="Other runs, drawn in every curve figure."
    )
    p.add_argument("--theme", choices=["plain", "festive"], default="plain", help="Colours (default plain).")
    p.add_argument(
        "--window", type=int, default=10, help="Moving-average window of long curves (default 10)."
    )
    p.add_argument(
        "--max-steps", type=int, default=20, help="Sampled steps shown, evenly spaced (0 = all; default 20)."
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=320,
        help="Longest side of inlined images, px (0 = as is; default 320).",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlmgrpo.errors import DataError
    from vlmgrpo.report.html import write_report

    if args.window < 1:
        raise DataError(f"--window {args.window}: must be at least 1")
    if not Path(args.output_dir).is_dir():
        raise DataError(f"{args.output_dir}: run folder not found")
    path, notes = write_report(
        args.output_dir,
        args.out or None,
        theme=args.theme,
        window=args.window,
        max_steps=args.max_steps,
        image_max_side=args.image_size,
        compare=args.compare,
    )
    for note in notes:
        print(f"missing: {note}")
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({size:.1f} MB); open it in a browser: file://{path.resolve()}")
    return 0
