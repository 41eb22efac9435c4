"""Seed A's CharXiv split: 75 training charts (images only) and 25 test charts with questions.

The split, exactly as the seed's `build_ds.py` made it: CharXiv's **validation** split; the figure
ids present in both `descriptive_val.json` and `reasoning_val.json`, in the descriptive file's key
order, as ints; `random.seed(7111994)`; `random.sample(ids, 100)`; the first 75 train, the last 25
test. The descriptive file is keyed by figure id and holds, per figure, the template ids of its four
questions (`qids`) and their `answers` (no question text): the text is CharXiv's
`DESCRIPTIVE_GRADING_QMAP[qid]`, as the seed used it. The reasoning file holds one `query`,
`answer` and `inst_category` (1-4) per figure.

`vlmgrpo data charxiv --source DIR --output OUT` writes the seed's layout:

    OUT/train_images/{figure_id}.jpg
    OUT/test_images/{figure_id}.jpg
    OUT/test_data/test_set.json   [{figure_id, image_path ("test_images/ID.jpg"), descriptive_questions
                                    [{question, answer}], reasoning_question {question, answer,
                                    inst_category}}]

DIR is a local CharXiv copy: the two JSON files directly in it or under `data/` (the GitHub repo's
layout), the `{figure_id}.jpg` images directly in it or under `images/` (`images.zip` from the HF
hub unpacks there). `--hub` reads the HF dataset `princeton-nlp/CharXiv` instead (needs the
`datasets` package and network); its rows are ordered by figure id, the JSON files' own order.

The dataset registry entry `charxiv` (`build`) reads OUT: "train" gives the training images, any
other split the test entries with fields `id`, `images`, `image_path`, `figure_id`, `question` /
`answer` / `inst_category` (the reasoning question) and `descriptive` ([{question, answer}]).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vlmgrpo.data import LazyImageDataset, build_folder
from vlmgrpo.errors import DataError

SEED = 7111994
N_SELECTED = 100
N_TRAIN = 75
HF_DATASET = "princeton-nlp/CharXiv"
IMAGES_HINT = (
    "download images.zip of the HF hub dataset princeton-nlp/CharXiv (`hf download "
    "princeton-nlp/CharXiv images.zip --repo-type dataset --local-dir {dir}`) and unzip it there"
)
JSON_HINT = "get them from https://github.com/princeton-nlp/CharXiv (folder data/)"

# CharXiv's constants.DESCRIPTIVE_GRADING_QMAP: descriptive template id -> question text.
DESCRIPTIVE_QUESTIONS: dict[int, str] = {
    1: "What is the title of the plot?",
    2: "What is the label of the x-axis?",
    3: "What is the label of the y-axis?",
    4: "What is the leftmost labeled tick on the x-axis?",
    5: "What is the rightmost labeled tick on the x-axis?",
    6: "What is the spatially lowest labeled tick on the y-axis?",
    7: "What is the spatially highest labeled tick on the y-axis?",
    8: "What is difference between consecutive numerical tick values on the x-axis?",
    9: "What is difference between consecutive numerical tick values on the y-axis?",
    10: "How many lines are there?",
    11: "Do any lines intersect?",
    12: "How many discrete labels are there in the legend?",
    13: "What are the names of the labels in the legend? (from top to bottom, then left to right)",
    14: "What is the difference between the maximum and minimum values of the tick labels on the "
    "continuous legend (i.e., colorbar)?",
    15: "What is the maximum value of the tick labels on the continuous legend (i.e., colorbar)?",
    16: "What is the general trend of data from left to right?",
    17: "What is the total number of explicitly labeled ticks across all axes?",
    18: "What is the layout of the subplots?",
    19: "What is the number of subplots?",
}


# --------------------------------------------------------------------------- the split


def select_split(
    descriptive: dict[str, Any],
    reasoning: dict[str, Any],
    seed: int = SEED,
    n: int = N_SELECTED,
    n_train: int = N_TRAIN,
) -> tuple[list[int], list[int]]:
    """(train ids, test ids) by the seed's procedure; see the module docstring."""
    ids = [int(k) for k in descriptive if k in reasoning]
    if len(ids) < n:
        raise DataError(f"CharXiv: only {len(ids)} figures have both question files, need {n}")
    chosen = random.Random(seed).sample(ids, n)  # = random.seed(seed); random.sample(ids, n)
    return chosen[:n_train], chosen[n_train:]


def charxiv_entry(figure_id: int, descriptive: dict[str, Any], reasoning: dict[str, Any]) -> dict[str, Any]:
    """One `test_set.json` entry (the seed's fields, plus the reasoning question's category)."""
    key = str(figure_id)
    d, r = descriptive[key], reasoning[key]
    try:
        questions = [
            {"question": DESCRIPTIVE_QUESTIONS[int(q)], "answer": a} for q, a in zip(d["qids"], d["answers"])
        ]
        reasoning_question = {
            "question": r["query"],
            "answer": r["answer"],
            "inst_category": r["inst_category"],
        }
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"CharXiv figure {figure_id}: unexpected JSON layout (missing or bad {e})") from None
    return {
        "figure_id": figure_id,
        "image_path": f"test_images/{figure_id}.jpg",
        "descriptive_questions": questions,
        "reasoning_question": reasoning_question,
    }


# --------------------------------------------------------------------------- reading a local copy


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or not UTF-8
        raise DataError(f"{path}: cannot read CharXiv JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object keyed by figure id, got {type(data).__name__}")
    return data


def find_json(source: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(descriptive, reasoning) validation JSON from `source` or `source/data`."""
    for folder in (source, source / "data"):
        d, r = folder / "descriptive_val.json", folder / "reasoning_val.json"
        if d.is_file() and r.is_file():
            return _read_json(d), _read_json(r)
    raise DataError(
        f"{source}: no descriptive_val.json + reasoning_val.json here or under data/; {JSON_HINT}"
    )


def find_images(source: Path, ids: Iterable[int]) -> dict[int, Path]:
    """figure id -> image path (`{id}.jpg` in `source/images`, `source` or `source/data`); a
    `DataError` naming the missing ids and where to get them when any is absent."""
    folders = [f for f in (source / "images", source, source / "data") if f.is_dir()]
    found: dict[int, Path] = {}
    missing: list[int] = []
    for i in ids:
        hit = next((f / f"{i}.jpg" for f in folders if (f / f"{i}.jpg").is_file()), None)
        if hit is None:
            missing.append(i)
        else:
            found[i] = hit
    if missing:
        shown = ", ".join(f"{i}.jpg" for i in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise DataError(
            f"{source}: {len(missing)} CharXiv image(s) missing: {shown}; {IMAGES_HINT.format(dir=source)}"
        )
    return found


# --------------------------------------------------------------------------- the HF dataset


def rows_to_json(rows: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[int, Any]]:
    """HF `princeton-nlp/CharXiv` validation rows -> (descriptive, reasoning, images) in the JSON
    files' layout, keyed by figure id (from `figure_path`, e.g. "images/123.jpg") in id order;
    `images[id]` is the row's `image` value (raw bytes dict or PIL image)."""
    by_id: dict[int, dict[str, Any]] = {}
    for row in rows:
        stem = Path(str(row.get("figure_path") or row.get("original_figure_path") or "")).stem
        if not stem.isdigit():
            raise DataError(f"{HF_DATASET}: a row has no numeric figure_path ({stem!r})")
        by_id[int(stem)] = row
    descriptive, reasoning, images = {}, {}, {}
    for fid in sorted(by_id):
        row = by_id[fid]
        qids = [row[f"descriptive_q{i}"] for i in range(1, 5) if row.get(f"descriptive_q{i}") is not None]
        answers = [row[f"descriptive_a{i}"] for i in range(1, len(qids) + 1)]
        descriptive[str(fid)] = {"figure_id": fid, "qids": qids, "answers": answers}
        reasoning[str(fid)] = {
            "figure_id": fid,
            "query": row["reasoning_q"],
            "answer": row["reasoning_a"],
            # the hub's reasoning_a_type is the JSON's inst_category; reasoning_q_source is qa_source
            "inst_category": row.get("reasoning_a_type"),
            "qa_source": row.get("reasoning_q_source"),
        }
        images[fid] = row.get("image")
    return descriptive, reasoning, images


def _load_hub() -> tuple[dict[str, Any], dict[str, Any], dict[int, Any]]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            "--hub needs the `datasets` package (pip install datasets); or pass --source DIR with a local "
            "CharXiv copy"
        ) from None
    try:
        ds = datasets.load_dataset(HF_DATASET, split="validation")
        ds = ds.cast_column("image", datasets.Image(decode=False))  # keep the original JPEG bytes
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"{HF_DATASET}: cannot load the validation split from the hub ({first})") from None
    return rows_to_json(ds)


def _write_image(value: Any, dst: Path) -> None:
    if isinstance(value, dict) and value.get("bytes"):
        dst.write_bytes(value["bytes"])
    elif isinstance(value, dict) and value.get("path"):
        shutil.copyfile(value["path"], dst)
    elif hasattr(value, "save"):
        value.convert("RGB").save(dst, quality=95)
    else:
        raise DataError(f"{dst.name}: the hub row has no image")


# --------------------------------------------------------------------------- building OUT


def build_split(
    output: str | Path,
    source: str | Path | None = None,
    hub: bool = False,
    seed: int = SEED,
    n: int = N_SELECTED,
    n_train: int = N_TRAIN,
) -> dict[str, Any]:
    """Write the seed's layout into `output` (see the module docstring); returns a summary."""
    out = Path(output)
    if hub:
        descriptive, reasoning, hub_images = _load_hub()
    else:
        if source is None:
            raise DataError("charxiv: give --source DIR (a local CharXiv copy) or --hub")
        src = Path(source)
        if not src.is_dir():
            raise DataError(f"{src}: CharXiv folder not found")
        descriptive, reasoning = find_json(src)
    train_ids, test_ids = select_split(descriptive, reasoning, seed, n, n_train)
    entries = [charxiv_entry(i, descriptive, reasoning) for i in test_ids]  # layout errors before copying
    paths = {} if hub else find_images(Path(source), train_ids + test_ids)  # type: ignore[arg-type]
    for folder, ids in (("train_images", train_ids), ("test_images", test_ids)):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for i in ids:
            dst = out / folder / f"{i}.jpg"
            if hub:
                _write_image(hub_images[i], dst)
            else:
                shutil.copyfile(paths[i], dst)
    (out / "test_data").mkdir(parents=True, exist_ok=True)
    (out / "test_data" / "test_set.json").write_text(json.dumps(entries, indent=2))
    return {"output": str(out), "train_ids": train_ids, "test_ids": test_ids}


# --------------------------------------------------------------------------- dataset registry entry


def _resolve_image(root: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else root / p


def load_test_entries(root: Path) -> list[dict[str, Any]]:
    """The rows of `root/test_data/test_set.json` as samples (images loaded lazily)."""
    path = root / "test_data" / "test_set.json"
    if not path.is_file():
        raise DataError(
            f"{path}: not found; build it with `vlmgrpo data charxiv --source CHARXIV_DIR --output {root}`"
        )
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or not UTF-8
        raise DataError(f"{path}: cannot read ({e})") from None
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and "figure_id" in e and "image_path" in e for e in entries
    ):
        raise DataError(f"{path}: expected a list of entries with figure_id and image_path")
    rows, missing = [], []
    for e in entries:
        image = _resolve_image(root, e["image_path"])
        if not image.is_file():
            missing.append(str(e["figure_id"]))
        rq = e.get("reasoning_question") or {}
        rows.append(
            {
                "id": str(e["figure_id"]),
                "figure_id": e["figure_id"],
                "image_paths": [image],
                "image_path": str(image),
                "question": rq.get("question", ""),
                "answer": rq.get("answer", ""),
                "inst_category": rq.get("inst_category", e.get("inst_category")),
                "descriptive": e.get("descriptive_questions", []),
                "reasoning_question": rq,
            }
        )
    if missing:
        raise DataError(
            f"{root}: test image(s) of figure(s) {', '.join(missing[:10])} missing; rebuild with "
            f"`vlmgrpo data charxiv --source CHARXIV_DIR --output {root}`"
        )
    return rows


def build(kwargs: dict[str, Any], split: str, seed: int) -> LazyImageDataset:
    """Registry entry `charxiv`. kwargs: `path` (the folder `vlmgrpo data charxiv` wrote, default
    data/charxiv), `max_side` (thumbnail on load, 0 = keep), `train_path` (any image folder
    instead of path/train_images). The split is fixed by the seed; `seed` is not used here."""
    root = Path(kwargs.get("path", "data/charxiv"))
    max_side = int(kwargs.get("max_side", 0))
    if split == "train":
        train = Path(kwargs.get("train_path") or root / "train_images")
        if not train.is_dir():
            raise DataError(
                f"{train}: CharXiv training images not found; build them with "
                f"`vlmgrpo data charxiv --source CHARXIV_DIR --output {root}`"
            )
        return build_folder({"path": str(train), "max_side": max_side}, "train", seed)
    return LazyImageDataset(load_test_entries(root), max_side)


# --------------------------------------------------------------------------- CLI


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", help="local CharXiv copy: JSON (here or data/) + {id}.jpg (here or images/)")
    src.add_argument("--hub", action="store_true", help=f"read the HF dataset {HF_DATASET} (needs network)")
    p.add_argument("--output", required=True, help="output folder (train_images/, test_images/, test_data/)")
    p.add_argument("--seed", type=int, default=SEED, help="split seed (seed A: 7111994)")
    p.add_argument("--num", type=int, default=N_SELECTED, help="figures drawn (seed A: 100)")
    p.add_argument("--num-train", type=int, default=N_TRAIN, help="of which for training (seed A: 75)")


def run_cli(args: argparse.Namespace) -> int:
    summary = build_split(args.output, args.source, args.hub, args.seed, args.num, args.num_train)
    n_train, n_test = len(summary["train_ids"]), len(summary["test_ids"])
    print(f"wrote {n_train} training and {n_test} test charts to {summary['output']}")
    return 0
