"""Datasets: a registry of builders `build(kwargs, split, seed) -> Sequence[dict] | StreamingDataset`.

A sample is a dict with `id` (str), `images` (list of RGB PIL images, loaded through
`vlmgrpo.data.images.load_image`) and any task fields (`answer`, `description`, `choices`, ...).
Every field reaches the rewards through `RewardRecord.sample` and the prompt template.
A streaming dataset has `sample(rng) -> dict` instead of indexing (a fresh image every step).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vlmgrpo.data.images import load_image
from vlmgrpo.errors import DataError
from vlmgrpo.registry import Registry

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class StreamingDataset(Protocol):
    def sample(self, rng: np.random.Generator) -> dict[str, Any]: ...


DATASETS: Registry = Registry("dataset")
DATASETS.register("scenes", "vlmgrpo.data.scenes:build")
DATASETS.register("charxiv", "vlmgrpo.data.charxiv:build")
DATASETS.register("geometry3k", "vlmgrpo.data.geometry3k:build")
DATASETS.register("area", "vlmgrpo.data.area:build")
DATASETS.register("img2code", "vlmgrpo.data.img2code:build")
DATASETS.register("charts", "vlmgrpo.data.charts:build")
# Hugging Face datasets: a Hub id, a local folder or a parquet/jsonl/csv file (data/hf.py)
DATASETS.register("hf", "vlmgrpo.data.hf:build")


class LazyImageDataset(Sequence):
    """Samples whose images load on access; `paths[i]` is a list of image paths for sample i."""

    def __init__(self, rows: list[dict[str, Any]], max_side: int = 0) -> None:
        self.rows = rows
        self.max_side = max_side

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        row = dict(self.rows[i])
        row["images"] = [load_image(p, self.max_side) for p in row.pop("image_paths")]
        return row


@DATASETS.register("folder")
def build_folder(kwargs: dict[str, Any], split: str, seed: int) -> LazyImageDataset:
    """Any folder of images (`kwargs.path`, or `kwargs.<split>_path`) as an unlabelled set."""
    path = Path(kwargs.get(f"{split}_path") or kwargs.get("path") or "")
    if not path.is_dir():
        raise DataError(f"{path}: image folder not found (data.kwargs.path)")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DataError(f"{path}: no images ({', '.join(sorted(IMAGE_EXTS))}) in this folder")
    rows = [{"id": p.stem, "image_paths": [p], "image_path": str(p)} for p in files]
    return LazyImageDataset(rows, int(kwargs.get("max_side", 0)))


def build_dataset(name: str, kwargs: dict[str, Any], split: str, seed: int):
    return DATASETS.get(name)(kwargs, split, seed)
