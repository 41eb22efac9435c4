"""Hugging Face `datasets` as vlmgrpo datasets, in TRL's conventions.

Two entry points, one sample format:

- `wrap(ds)`: a `datasets.Dataset` (map-style) or `IterableDataset` (a stream) that a Python user
  hands to `vlmgrpo.GRPOTrainer`;
- the registry entry `hf` (`build`): a recipe names a Hub id, a local folder (the Hub's parquet
  layout, or an `imagefolder`) or one parquet / JSONL / CSV file, and it is loaded through
  `datasets.load_dataset`, the same call for all of them (docs/data.md).

The row conventions are TRL's: a `prompt` column, either a string or a conversation (a list of
`{"role", "content"}` messages), and an `image` (one PIL image) or `images` (a list) column. When
the conversation has no `{"type": "image"}` placeholder, one per image is put at the start of the
first user message, as TRL does. With no prompt column, the recipe's `prompt.user` template is
filled from the row instead (the native path). Every column reaches the rewards: native ones
through `record.sample`, TRL-signature ones as keyword lists (`vlmgrpo.rewards.trl_compat`).

A sample is the row (or the `columns` kept) plus `id`, `images` (RGB PIL, thumbnailed to
`max_side`) and, for a prompt column, `_messages`: the chat with image slots that
`sampling.build_prompt` turns into the model's prompt.

Not covered: a resumed run over a stream restarts the stream (a new shuffle) instead of
continuing where it stopped; map-style sets resume exactly (the sampler's RNG is checkpointed).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlmgrpo.data.images import load_image
from vlmgrpo.errors import ConfigError, DataError
from vlmgrpo.sources import is_local_path

log = logging.getLogger(__name__)

FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
MESSAGES_KEY = "_messages"  # the prompt conversation with image slots (private: not a column)


# ------------------------------------------------------------------------------ prompts


def has_image_slot(messages: list[dict[str, Any]]) -> bool:
    return any(
        isinstance(m.get("content"), list)
        and any(isinstance(c, dict) and c.get("type") == "image" for c in m["content"])
        for m in messages
    )


def with_image_slots(messages: list[dict[str, Any]], n_images: int) -> list[dict[str, Any]]:
    """A copy of `messages` with `n_images` `{"type": "image"}` items first in the first user
    message, unless the conversation already places them (TRL's convention). Inline image objects
    in placeholders are dropped: the images travel beside the messages, in slot order."""
    out = copy.deepcopy(messages)
    for m in out:
        if isinstance(m.get("content"), list):
            # Arrow stores content items as one struct: a text item reads back with "image": None
            # and an image item with "text": None; keep only the keys each item really has
            m["content"] = [{k: v for k, v in c.items() if v is not None} for c in m["content"]]
            for c in m["content"]:
                if c.get("type") == "image":
                    c.pop("image", None)
    if n_images == 0 or has_image_slot(out):
        return out
    for m in out:
        if m.get("role") == "user":
            content = m.get("content")
            text = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
            m["content"] = [{"type": "image"} for _ in range(n_images)] + text
            return out
    raise DataError("prompt: the conversation has no user message to put the image in")


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """The last user message's text (what the logs and `RewardRecord.prompt` show)."""
    for m in reversed(messages):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            return "\n".join(
                x.get("text", "") for x in c or [] if isinstance(x, dict) and x.get("type") == "text"
            )
    return ""


def chat_prompt(sample: dict[str, Any], system: str = "", prefill: str = "") -> Any:
    """The rollout `Prompt` of a sample with a prompt column; `system` (the recipe's
    prompt.system) goes first when the conversation has no system message of its own."""
    from vlmgrpo.rollout import Prompt

    messages = sample[MESSAGES_KEY]
    if system and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    if messages and messages[-1].get("role") == "assistant":  # a prefilled assistant turn
        last = messages[-1]["content"]
        prefill = (
            last if isinstance(last, str) else prompt_text([{**messages[-1], "role": "user"}])
        ) + prefill
        messages = messages[:-1]
    return Prompt(
        messages=messages, images=list(sample["images"]), prefill=prefill, text=prompt_text(messages)
    )


# ------------------------------------------------------------------------------ rows -> samples


def _images_of(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _image_source(x: Any) -> Any:
    """PIL, bytes, a path, or `datasets`' undecoded {"bytes", "path"} dict -> what load_image opens."""
    if isinstance(x, dict):
        return x.get("bytes") or x.get("path")
    return x


class RowConverter:
    """Turns one row into a sample. `image_column` None picks `image`, else `images`, else none;
    `prompt_column` None or absent from the row means the recipe's prompt template is used."""

    def __init__(
        self,
        image_column: str | None = None,
        prompt_column: str | None = "prompt",
        columns: list[str] | None = None,
        max_side: int = 0,
    ) -> None:
        self.image_column, self.prompt_column = image_column, prompt_column
        self.columns, self.max_side = columns, max_side

    def __call__(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        col = self.image_column or next((c for c in ("image", "images") if c in row), None)
        if self.image_column and self.image_column not in row:
            raise ConfigError(
                f"data.kwargs.image_column: no column '{self.image_column}' (columns: {', '.join(sorted(row))})"
            )
        rid = str(row.get("id", index))
        images = [
            load_image(_image_source(x), self.max_side, name=f"row {rid} image")
            for x in _images_of(row.get(col) if col else None)
        ]
        keep = self.columns if self.columns is not None else list(row)
        missing = [c for c in keep if c not in row]
        if missing:
            raise ConfigError(
                f"data.kwargs.columns: no column {missing[0]!r} (columns: {', '.join(sorted(row))})"
            )
        sample = {k: row[k] for k in keep}
        sample.setdefault("id", rid)
        sample["images"] = images
        prompt = row.get(self.prompt_column) if self.prompt_column else None
        if prompt is not None:
            sample.setdefault(self.prompt_column, prompt)
            if isinstance(prompt, str):
                messages = [{"role": "user", "content": prompt}]
            elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt):
                messages = prompt
            else:
                raise DataError(
                    f"row {rid}: column '{self.prompt_column}' is neither a string nor a list of "
                    f"{{role, content}} messages ({type(prompt).__name__})"
                )
            sample[MESSAGES_KEY] = with_image_slots(messages, len(images))
        return sample


class HFDataset(Sequence):
    """A map-style `datasets.Dataset` as a vlmgrpo dataset; rows convert (and images decode) on access."""

    def __init__(self, ds: Any, convert: RowConverter) -> None:
        self.ds, self.convert = ds, convert

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        return self.convert(self.ds[int(i)], int(i))


class HFStream:
    """An `IterableDataset` as a streaming vlmgrpo dataset: `sample(rng)` walks the stream,
    shuffled with a seed drawn from `rng` at the start of every pass (buffer `shuffle_buffer`)."""

    def __init__(self, ds: Any, convert: RowConverter, shuffle_buffer: int = 1000) -> None:
        self.ds, self.convert, self.shuffle_buffer = ds, convert, shuffle_buffer
        self._it: Any = None
        self._n = 0

    def _start(self, rng: np.random.Generator) -> None:
        ds = self.ds
        if self.shuffle_buffer and hasattr(ds, "shuffle") and rng is not None:
            ds = ds.shuffle(seed=int(rng.integers(2**31)), buffer_size=self.shuffle_buffer)
        self._it = iter(ds)

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        for _ in range(2):  # at the end of a pass, start the next one once
            if self._it is None:
                self._start(rng)
            try:
                row = next(self._it)
            except StopIteration:
                self._it = None
                continue
            self._n += 1
            return self.convert(row, self._n - 1)
        raise DataError("the streamed dataset yielded no rows")


def wrap(ds: Any, max_side: int = 0, **converter: Any) -> HFDataset | HFStream:
    """A `datasets.Dataset` / `IterableDataset` (or anything indexable with dict rows) as a
    vlmgrpo dataset."""
    convert = RowConverter(max_side=max_side, **converter)
    if hasattr(ds, "__len__") and hasattr(ds, "__getitem__"):
        return HFDataset(ds, convert)
    if hasattr(ds, "__iter__"):
        return HFStream(ds, convert)
    raise ConfigError(f"dataset: expected a datasets.Dataset or IterableDataset, got {type(ds).__name__}")


# ------------------------------------------------------------------------------ recipes


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            "data.dataset 'hf' needs the datasets package: pip install 'vlmgrpo[data]' (or pip install datasets)"
        ) from None
    return datasets


def load_args(path: str, name: str | None = None, data_files: Any = None) -> tuple[tuple, dict]:
    """`datasets.load_dataset` arguments for a Hub id, a folder or one parquet/JSONL/CSV file."""
    p = Path(path).expanduser()
    if p.is_file():
        builder = FILE_BUILDERS.get(p.suffix.lower())
        if builder is None:
            known = ", ".join(sorted(FILE_BUILDERS))
            raise ConfigError(f"{p}: data.kwargs.path: unknown file type '{p.suffix}' ({known}, or a folder)")
        return (builder,), {"data_files": str(p)}
    if p.is_dir():  # the Hub's parquet layout or an imagefolder: load_dataset infers the builder
        return (str(p),), {"name": name, "data_files": data_files}
    # not a Hub id (vlmgrpo/sources.py), or a data file's name ("rows.jsonl" has a Hub id's shape,
    # but asking the Hub for it took ~30 s of retries offline and then advised `hf download`)
    if is_local_path(path) or p.suffix.lower() in FILE_BUILDERS:
        raise DataError(
            f"{path}: data.kwargs.path: no such file or folder (a relative path starts from the "
            f"working directory, {Path.cwd()})"
        )
    return (path,), {"name": name, "data_files": data_files}


def hub_unreachable_for(path: str) -> str | None:
    """Why the Hub cannot be reached, asked only for a Hub id (None for a local path, or when it can):
    with no network `datasets` retries for ~30 s per split before it fails."""
    if is_local_path(path):
        return None
    from vlmgrpo.models import _hub_unreachable

    return _hub_unreachable()


@contextlib.contextmanager
def cache_only(offline: str | None) -> Iterator[None]:
    """`datasets` reads its local cache only while `offline` (a reason) is set: a cached set loads,
    an uncached one fails at once instead of after the retries."""
    datasets = _datasets()
    was = datasets.config.HF_HUB_OFFLINE
    try:
        if offline:
            datasets.config.HF_HUB_OFFLINE = True
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = was


def load(kwargs: dict[str, Any], split: str) -> Any:
    """The split of the recipe's source, as `datasets` returns it (streamed when asked)."""
    datasets = _datasets()
    path = str(kwargs.get("path") or "")
    if not path:
        raise ConfigError("data.kwargs.path: missing (a Hub id, a local folder or a parquet/jsonl/csv file)")
    args, kw = load_args(path, kwargs.get("name"), kwargs.get("data_files"))
    kw = {k: v for k, v in kw.items() if v is not None}
    if kwargs.get("revision"):
        kw["revision"] = kwargs["revision"]
    offline = hub_unreachable_for(path)
    try:
        with cache_only(offline):
            return datasets.load_dataset(*args, split=split, streaming=bool(kwargs.get("streaming")), **kw)
    except ValueError as e:
        if "split" in str(e).lower() or "Unknown split" in str(e):
            raise DataError(f"{path}: no split '{split}' ({str(e).splitlines()[0][:200]})") from None
        raise DataError(f"{path}: cannot load ({str(e).splitlines()[0][:200]})") from None
    except Exception as e:  # offline, unknown id, bad file: many exception types, one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        hint = (
            f"; the Hub is out of reach ({offline}) and no local folder {path} is in {Path.cwd()}"
            if offline
            else ""
        )
        if not is_local_path(path):
            hint += (
                f"; download it where the Hub is reachable (`hf download --repo-type dataset {path} "
                "--local-dir DIR`) and set data.kwargs.path to that folder"
            )
        raise DataError(f"{path}: cannot load with datasets.load_dataset ({first}){hint}") from None


def build(kwargs: dict[str, Any], split: str, seed: int) -> HFDataset | HFStream:
    """Registry entry `hf`. kwargs: `path` (Hub id | folder | .parquet/.jsonl/.csv file), `name`
    (the Hub config), `data_files`, `revision`, `split` (training split, default "train"),
    `eval_split` (held-out split, default "test"; a source without it is evaluated on its
    training split, with a warning), `image_column`, `prompt_column` (default "prompt"; absent ->
    the recipe's prompt.user template), `columns` (the columns kept; default all), `streaming`,
    `shuffle_buffer` (streams), `limit` (first N rows), `max_side`."""
    want = (
        str(kwargs.get("split") or "train") if split == "train" else str(kwargs.get("eval_split") or "test")
    )
    try:
        ds = load(kwargs, want)
    except DataError as e:
        if split == "train" or kwargs.get("eval_split") or f"no split '{want}'" not in str(e):
            raise
        log.warning("%s: no '%s' split; evaluating on the training split", kwargs.get("path"), want)
        ds = load(kwargs, str(kwargs.get("split") or "train"))
    if kwargs.get("limit"):
        n = int(kwargs["limit"])
        ds = ds.take(n) if not hasattr(ds, "__len__") else ds.select(range(min(n, len(ds))))
    columns = kwargs.get("columns")
    if columns is not None and not isinstance(columns, list):
        raise ConfigError(f"data.kwargs.columns: expected a list of column names, got {columns!r}")
    convert = RowConverter(
        image_column=kwargs.get("image_column"),
        prompt_column=kwargs.get("prompt_column", "prompt"),
        columns=columns,
        max_side=int(kwargs.get("max_side", 0)),
    )
    if hasattr(ds, "__len__"):
        if len(ds) == 0:
            raise DataError(f"{kwargs.get('path')}: split '{want}' has no rows")
        return HFDataset(ds, convert)
    return HFStream(ds, convert, int(kwargs.get("shuffle_buffer", 1000)))
