"""Geometry3K: diagram + question + answer, for GRPO with verifiable rewards (seed C).

Three sources, one sample format:

- the Hugging Face dataset `hiyouga/geometry3k` by id (`data.kwargs.hf_id`, the default when no
  `path` is given), through the `datasets` package when it is installed and the hub is reachable;
- a local folder of its parquet files (`data.kwargs.path`): `<split>-*.parquet`, `<split>.parquet`
  or `data/<split>-*.parquet`, columns `images` (a list of {"bytes", "path"} dicts as in HF
  parquet, or raw bytes), `problem` (starting with "<image>"), `answer`, and `choices` when present;
  reading parquet needs `pyarrow`;
- the original InterGPS layout (`data.kwargs.path`): `<split>/<id>/data.json` + `img_diagram.png`,
  where the answer is a choice letter; it becomes the choice's value (`answer_letter` keeps it).

Splits: train / validation / test (the trainer asks for "test" for its held-out set; "val" and
"eval" mean validation; `data.kwargs.split` forces one). Rows with no answer or no image are
dropped, as the seed did. Images decode lazily, one sample at a time, through
`vlmgrpo.data.images.load_image` (one-line errors on bad bytes), thumbnailed to
`data.kwargs.max_side` when it is set (0 = as stored; the processor resizes anyway).

A sample: `id`, `images` [PIL RGB], `problem` (as stored), `question` (problem without "<image>",
what prompt templates use), `answer`, `choices` (list of str, or None), `choices_text`
("A. 3\\nB. 5 ..." or ""), and `answer_letter` and `diagram_logic_form` (a list of str, [] when
absent) for the InterGPS layout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmgrpo.data.images import load_image
from vlmgrpo.errors import DataError

log = logging.getLogger(__name__)

HF_ID = "hiyouga/geometry3k"
SPLITS = {
    "train": "train",
    "validation": "validation",
    "val": "validation",
    "eval": "validation",
    "test": "test",
}
INTERGPS_DIRS = {"train": ("train",), "validation": ("val", "validation"), "test": ("test",)}


def canonical_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"geometry3k: unknown split '{split}' (train, validation, test)")
    return SPLITS[split]


def _image_source(entry: Any, base: Path | None) -> Any:
    """One stored image as something `load_image` opens (bytes, path, PIL), or None if empty."""
    if entry is None:
        return None
    if isinstance(entry, dict):
        data, path = entry.get("bytes"), entry.get("path")
        if data:
            return bytes(data)
        if path:
            p = Path(path)
            return p if p.is_absolute() or base is None else base / p
        return None
    if isinstance(entry, bytes | bytearray | memoryview):
        return bytes(entry) or None
    return entry  # a PIL image (datasets decodes) or a path


def _choices_text(choices: list[str] | None) -> str:
    if not choices:
        return ""
    return "\n".join(f"{string.ascii_uppercase[i]}. {c}" for i, c in enumerate(choices))


def make_row(
    rid: str, images: list[Any], problem: str, answer: Any, choices: Any = None, **extra: Any
) -> dict[str, Any] | None:
    """A stored row (images not decoded yet), or None when it has no answer or no image."""
    images = [im for im in images if im is not None]
    answer = "" if answer is None else str(answer).strip()
    if not answer or not images:
        return None
    choice_list = [str(c) for c in choices] if choices is not None and len(choices) else None
    problem = str(problem or "")
    return {
        "id": rid,
        "image_sources": images,
        "problem": problem,
        # the image goes where the chat template puts it; the text must not carry a stray marker
        "question": problem.replace("<image>", "").strip(),
        "answer": answer,
        "choices": choice_list,
        "choices_text": _choices_text(choice_list),
        **extra,
    }


class Geometry3KDataset(Sequence):
    """Map-style dataset over stored rows; images decode on access."""

    def __init__(self, rows: list[dict[str, Any]], split: str, max_side: int = 0, dropped: int = 0) -> None:
        self.rows, self.split, self.max_side, self.dropped = rows, split, max_side, dropped

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        row = dict(self.rows[i])
        sources = row.pop("image_sources")
        row["images"] = [load_image(s, self.max_side, name=f"{row['id']} image") for s in sources]
        return row


# ------------------------------------------------------------------------------------ parquet


def parquet_files(root: Path, split: str) -> list[Path]:
    """`root`'s parquet files for `split` (HF repo layout or flat), or `root` itself if a file."""
    if root.is_file():
        return [root]
    names = [split] + (["val"] if split == "validation" else [])
    found: list[Path] = []
    for d in (root, root / "data"):
        for name in names:
            found += sorted(d.glob(f"{name}-*.parquet")) + sorted(d.glob(f"{name}.parquet"))
    return sorted(set(found))


def read_parquet_rows(files: list[Path]) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{files[0]}: reading parquet needs pyarrow (pip install pyarrow), or use the InterGPS "
            "folder layout"
        ) from None
    rows: list[dict[str, Any]] = []
    for f in files:
        try:
            rows += pq.read_table(f).to_pylist()
        except Exception as e:  # pyarrow raises many types for a bad file; the user needs one line
            raise DataError(f"{f}: not a readable parquet file ({type(e).__name__}: {e})") from None
    return rows


def rows_from_records(records: Sequence[dict[str, Any]], split: str, base: Path | None) -> tuple[list, int]:
    """Stored rows from HF-schema records; (rows, number dropped)."""
    rows, dropped = [], 0
    for i, rec in enumerate(records):
        imgs = rec.get("images")
        if imgs is None and "image" in rec:  # single-image variants of the schema
            imgs = [rec["image"]]
        if imgs is not None and not isinstance(imgs, list | tuple):
            imgs = [imgs]
        row = make_row(
            f"geometry3k-{split}-{i}",
            [_image_source(im, base) for im in (imgs or [])],
            rec.get("problem") or rec.get("question") or "",
            rec.get("answer"),
            rec.get("choices"),
        )
        if row is None:
            dropped += 1
        else:
            rows.append(row)
    return rows, dropped


# ------------------------------------------------------------------------------------ InterGPS


def intergps_dir(root: Path, split: str) -> Path | None:
    for name in INTERGPS_DIRS[split]:
        d = root / name
        if d.is_dir() and any(p.is_dir() and (p / "data.json").is_file() for p in d.iterdir()):
            return d
    return None


def _intergps_key(p: Path) -> tuple[int, str]:
    return (int(p.name), p.name) if p.name.isdigit() else (1 << 30, p.name)


def rows_from_intergps(folder: Path, split: str) -> tuple[list, int]:
    rows, dropped = [], 0
    for d in sorted((p for p in folder.iterdir() if (p / "data.json").is_file()), key=_intergps_key):
        try:
            data = json.loads((d / "data.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # ValueError: bad JSON or not UTF-8
            raise DataError(f"{d / 'data.json'}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise DataError(f"{d / 'data.json'}: expected a JSON object, got {type(data).__name__}")
        choices = data.get("choices") or None
        letter = str(data.get("answer") or "").strip().upper()
        idx = string.ascii_uppercase.find(letter) if len(letter) == 1 else -1
        answer = choices[idx] if choices and 0 <= idx < len(choices) else None
        img = d / "img_diagram.png"
        row = make_row(
            f"geometry3k-{split}-{data.get('id', d.name)}",
            [img] if img.is_file() else [],
            data.get("problem_text") or data.get("compact_text") or "",
            answer,
            choices,
            answer_letter=letter,
            # InterGPS's diagram relations ("Equals(LengthOf(Line(A, B)), 5)"): what the diagram shows
            diagram_logic_form=list((data.get("logic_form") or {}).get("diagram_logic_form") or []),
        )
        if row is None:
            dropped += 1
        else:
            rows.append(row)
    return rows, dropped


# ---------------------------------------------------------------------------------------- hub


def load_hf_records(hf_id: str, split: str) -> list[dict[str, Any]]:
    """Records of `hf_id`'s split with images left as stored bytes (no decoding of the whole set)."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"geometry3k: loading '{hf_id}' needs the datasets package (pip install datasets); or "
            "download its parquet files and set data.kwargs.path to their folder"
        ) from None
    from vlmgrpo.data.hf import cache_only, hub_unreachable_for

    offline = hub_unreachable_for(hf_id)  # probed first: offline, datasets retries for ~30 s
    try:
        with cache_only(offline):
            ds = datasets.load_dataset(hf_id, split=split)
    except Exception as e:  # offline, unknown id, unknown split: many exception types, one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        why = f"; the Hub is out of reach ({offline})" if offline else ""
        raise DataError(
            f"geometry3k: cannot load '{hf_id}' split '{split}' ({first}){why}; "
            "set data.kwargs.path to a folder of its parquet files to work offline (e.g. "
            f"`hf download --repo-type dataset {hf_id} --local-dir DIR` where the Hub is reachable)"
        ) from None
    # keep bytes: decoding 3k diagrams up front is slow and the loader decodes lazily anyway; on
    # another schema the cast fails and decoded PIL images are accepted too
    with contextlib.suppress(Exception):
        ds = ds.cast_column("images", datasets.Sequence(datasets.Image(decode=False)))
    return list(ds)


# -------------------------------------------------------------------------------------- build


def build(kwargs: dict[str, Any], split: str, seed: int) -> Geometry3KDataset:
    """Registry entry `geometry3k`. kwargs: `path` (parquet folder/file or InterGPS folder) or
    `hf_id` (default hiyouga/geometry3k), `split` (forces a split), `limit` (first N rows after
    dropping), `max_side`. `seed` is unused: the order is the stored order (evaluation takes the
    first N items, as the seed did; training samples at random)."""
    split = canonical_split(str(kwargs.get("split") or split))
    max_side = int(kwargs.get("max_side", 0))
    path = kwargs.get("path")
    if path:
        root = Path(str(path)).expanduser()
        if not root.exists():
            raise DataError(f"{root}: Geometry3K folder not found (data.kwargs.path)")
        folder = intergps_dir(root, split) if root.is_dir() else None
        if folder is not None:
            rows, dropped = rows_from_intergps(folder, split)
        else:
            files = parquet_files(root, split)
            if not files:
                raise DataError(
                    f"{root}: no parquet files for split '{split}' ({split}-*.parquet, data/{split}-*.parquet) "
                    f"and no InterGPS folder ({'/'.join(INTERGPS_DIRS[split])}/<id>/data.json)"
                )
            base = files[0].parent
            rows, dropped = rows_from_records(read_parquet_rows(files), split, base)
        where = str(root)
    else:
        hf_id = str(kwargs.get("hf_id") or HF_ID)
        rows, dropped = rows_from_records(load_hf_records(hf_id, split), split, None)
        where = hf_id
    if dropped:
        log.info("geometry3k %s: dropped %d rows with no answer or no image", split, dropped)
    if kwargs.get("limit"):
        rows = rows[: int(kwargs["limit"])]
    if not rows:
        raise DataError(
            f"{where}: no usable Geometry3K rows in split '{split}' (all lack an answer or image)"
        )
    return Geometry3KDataset(rows, split, max_side, dropped)
