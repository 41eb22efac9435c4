"""Per-step artifacts of a cycle run, as seed A wrote them.

- `write_step_page(out_dir, original, completions, regenerated, scores)`: one page (PDF + PNG) with
  the original image first, then every regenerated image sorted by similarity, best first, each
  titled with its rank and score and captioned with the start of its description. Failed
  generations (None image or NaN score) come last, drawn as grey "failed" tiles.
- `write_step_json(run_dir, kind, step, payload)`: `RUN/training_logs/step-N.json` or
  `RUN/eval_logs/step-N.json`, any JSON-able payload (numpy values and NaN are converted; NaN and
  infinities become null), written atomically so a killed run leaves no torn file.

matplotlib is drawn through its object API (`Figure` + Agg canvas), never `pyplot`, so it is safe
from a training loop on a headless machine and leaks no global figures.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

LOG_FOLDERS = {"training": "training_logs", "train": "training_logs", "eval": "eval_logs"}


def _score(value: float | None) -> float:
    """NaN for a missing score, so that it sorts last."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def sort_by_score(scores: Sequence[float | None], images: Sequence[Image.Image | None]) -> list[int]:
    """Indices best first; missing images or scores (None/NaN) last, in their original order."""
    vals = [_score(s) for s in scores]

    def key(i: int) -> tuple[int, float, int]:
        bad = images[i] is None or math.isnan(vals[i])
        return (1, 0.0, i) if bad else (0, -vals[i], i)

    return sorted(range(len(vals)), key=key)


def write_step_page(
    out_dir: str | Path,
    original: Image.Image,
    completions: Sequence[str],
    regenerated: Sequence[Image.Image | None],
    scores: Sequence[float | None],
    name: str = "page",
    title: str = "",
    ncols: int = 4,
    caption_chars: int = 240,
) -> tuple[Path, Path]:
    """Draw the page and save `out_dir/{name}.pdf` and `out_dir/{name}.png`; returns both paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not (len(completions) == len(regenerated) == len(scores)):
        raise ValueError(
            f"{len(completions)} completions, {len(regenerated)} images and {len(scores)} scores: need one each"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = sort_by_score(scores, regenerated)
    n = len(order) + 1
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.2 * ncols, 4.4 * nrows + 1.2))
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title, fontsize=11)
    ax = fig.add_subplot(nrows, ncols, 1)
    ax.imshow(original.convert("RGB"))
    ax.set_title("original", fontsize=10, fontweight="bold")
    ax.set_axis_off()
    for rank, i in enumerate(order, start=1):
        ax = fig.add_subplot(nrows, ncols, rank + 1)
        img, s = regenerated[i], _score(scores[i])
        if img is None or math.isnan(s):
            ax.imshow(Image.new("RGB", (64, 64), (200, 200, 200)))
            ax.set_title(f"sample {i}: failed", fontsize=9)
        else:
            ax.imshow(img.convert("RGB"))
            ax.set_title(f"#{rank} (sample {i})  {s:.3f}", fontsize=9)
        text = " ".join(str(completions[i]).split())
        if len(text) > caption_chars:
            text = text[: caption_chars - 3] + "..."
        ax.text(
            0.0,
            -0.03,
            textwrap.fill(text, 46),
            transform=ax.transAxes,
            fontsize=6,
            va="top",
            ha="left",
            wrap=False,
        )
        ax.set_axis_off()
    fig.subplots_adjust(
        left=0.02, right=0.98, top=0.93 if title else 0.96, bottom=0.02, hspace=0.55, wspace=0.1
    )
    pdf, png = out / f"{name}.pdf", out / f"{name}.png"
    with warnings.catch_warnings():  # a policy's control characters are not a reason for a warning each
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        fig.savefig(pdf, bbox_inches="tight")  # tight: the captions below the last row stay on the page
        fig.savefig(png, dpi=80, bbox_inches="tight")
    return pdf, png


def _jsonable(value: Any) -> Any:
    """numpy / torch scalars and arrays -> Python; NaN/inf -> None; paths -> str; images -> None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str | int | bool) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Image.Image):
        return None  # images are saved as files next to the JSON, not inlined
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return _jsonable(value.tolist())
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return str(value)


def write_step_json(run_dir: str | Path, kind: str, step: int, payload: dict[str, Any]) -> Path:
    """Write `payload` to `RUN/{training,eval}_logs/step-{step:06d}.json` (kind "training"/"train"
    or "eval") atomically; returns the path."""
    if kind not in LOG_FOLDERS:
        raise ValueError(f"kind {kind!r}: expected one of {sorted(LOG_FOLDERS)}")
    folder = Path(run_dir) / LOG_FOLDERS[kind]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{int(step):06d}.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"step": int(step), **_jsonable(payload)}, indent=1, allow_nan=False))
    tmp.replace(path)
    return path
