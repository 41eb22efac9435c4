"""Write a self-contained HTML report of a run (curves, pass@k, sample gallery); opens from disk.

Everything is inlined (base64 images, PNG curves): no server, no network, one file to share.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", required=True, help="the run folder")
    p.add_argument("--out", default="", help="the HTML file (default RUN/report.html)")
    p.add_argument(
        "--compare", nargs="+", default=[], metavar="RUN", help="other runs to overlay on the curves"
    )
    p.add_argument("--theme", choices=["festive", "plain"], default="festive")
    p.add_argument("--window", type=int, default=10, help="moving-average window of the curves")
    p.add_argument("--max-steps", type=int, default=20, help="sampled steps shown, evenly spaced (0 = all)")
    p.add_argument(
        "--image-size", type=int, default=320, help="longest side of inlined images, px (0 = as is)"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlmgrpo.errors import DataError
    from vlmgrpo.report.html import write_report

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
