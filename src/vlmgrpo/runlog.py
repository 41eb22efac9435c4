"""The run folder: everything a run writes, in one place that plots and reports read back.

    RUN/config.yaml            resolved config
    RUN/metrics.jsonl          one JSON object per line: step, phase, flat slash-separated metrics
    RUN/samples/step-N/        per-step samples: input images, completions, scores, reward artifacts
    RUN/ckpts/ckpt-N/          checkpoints (see checkpoint.py)
    RUN/tb/                    TensorBoard events, when tensorboard is installed (GRPO steps);
                               RUN/tb/warmup/ the warm start's (its own run: its steps restart at 1)
    RUN/metrics.cut-N.jsonl    rows a `--resume-from` cut off (past the checkpoint's step)
    RUN/metrics.prev-N.jsonl   an earlier attempt's rows, moved aside when a run starts over
    RUN/overwritten/<UTC time>/  an earlier run's files, moved aside by `--overwrite`

Metrics rows are appended and flushed line by line, so a killed run loses at most the line being
written; `read_metrics` skips a torn last line. A run folder is never silently reused:
`prepare_run_dir` refuses one that holds another run's files unless told to resume or overwrite,
and nothing is ever deleted (cut or earlier rows go to numbered files, an overwritten run to a
timestamped folder).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmgrpo.errors import ConfigError, DataError, VlmgrpoError
from vlmgrpo.numeric import as_number

# what a training run writes: a folder holding any of these (a non-empty one for folders) holds a run
RUN_FILES = ("config.yaml", "metrics.jsonl", "ckpts", "tb", "samples")
OVERWRITTEN = "overwritten"  # --overwrite moves an earlier run's files under RUN/overwritten/<time>/


def _clean(v: Any) -> Any:
    """A value as JSON writes it: numbers as floats (ints and bools as written), NaN and inf as
    null (JSON has none; null reads back as "not measured"), anything else unchanged."""
    if v is None or isinstance(v, str | int):  # int includes bool
        return v
    x = as_number(v)
    if x is None:
        return v
    return x if math.isfinite(x) else None


def numbered(path: Path) -> Path:
    """`path` if free, else the first free `stem-2.suffix`, `stem-3.suffix`, ...: a backup never
    replaces an earlier one."""
    if not path.exists():
        return path
    stem, suffix = (path.name[: -len(path.suffix)], path.suffix) if path.suffix else (path.name, "")
    n = 2
    while (path.parent / f"{stem}-{n}{suffix}").exists():
        n += 1
    return path.parent / f"{stem}-{n}{suffix}"


def check_output_dir(out: Path, what: str = "train.output_dir") -> None:
    """A run folder must be a folder or not exist yet (its parents likewise): checked before any
    model loads, so a wrong path costs nothing."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            where = " (it is a file)" if p == out else f" ({p} is a file)"
            raise ConfigError(f"{what}: {out} cannot be a folder{where}: choose another path")


def prior_run_files(out: Path, inputs: Iterable[str] = ()) -> list[str]:
    """Names in `out` that an earlier run wrote (`RUN_FILES`; a folder only when non-empty), other
    than `inputs` (the run's own inputs kept there, such as an offline recipe's model folder)."""
    out = Path(out)
    found = []
    for name in RUN_FILES:
        p = out / name
        if name in inputs or not p.exists():
            continue
        if p.is_dir() and not any(p.iterdir()):
            continue
        found.append(name)
    return found


def inputs_inside(out: Path, values: Iterable[Any]) -> set[str]:
    """The top-level names in `out` that any of `values` (config strings: model folders, data
    paths, `file.py:fn` rewards) points into: a run's inputs, never moved aside."""
    root = Path(out).resolve()
    names = set()
    for v in values:
        if not isinstance(v, str) or not v or "\n" in v or len(v) > 1000:
            continue
        text = v.rpartition(":")[0] if v.rpartition(":")[0].endswith(".py") else v
        try:
            rel = Path(text).expanduser().resolve().relative_to(root)
        except (ValueError, OSError, RuntimeError):
            continue
        if rel.parts:
            names.add(rel.parts[0])
    return names


def prepare_run_dir(
    out: Path, *, resume: bool = False, overwrite: bool = False, inputs: Iterable[str] = ()
) -> Path | None:
    """Check the run folder before anything loads. Another run's files there (`prior_run_files`)
    stop the run with one line unless `resume` (continue it) or `overwrite`: then everything in the
    folder but `inputs` moves to `out/overwritten/<UTC time>/`, which is returned. Nothing is deleted."""
    out = Path(out)
    check_output_dir(out)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: choose one (continue the run, or move it aside)")
    inputs = set(inputs) | {OVERWRITTEN}
    found = prior_run_files(out, inputs)
    if not found or resume:
        return None
    if not overwrite and found == ["config.yaml"]:  # a start that stopped before its first step
        raise VlmgrpoError(
            f"{out}: holds only config.yaml, from a start that stopped before its first step; add "
            f"--resume to start it again from step 0 (that config is replaced), --overwrite to move it "
            f"aside (to {out / OVERWRITTEN}/), or choose another --output-dir"
        )
    if not overwrite:
        raise VlmgrpoError(
            f"{out}: holds another run's files ({', '.join(found)}); add --resume to continue it, "
            f"--overwrite to move them aside (to {out / OVERWRITTEN}/), or choose another --output-dir"
        )
    dest = numbered(out / OVERWRITTEN / time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime()))
    dest.mkdir(parents=True)
    for p in sorted(out.iterdir()):
        if p.name not in inputs:
            shutil.move(str(p), str(dest / p.name))
    return dest


class RunLog:
    """Rows to `metrics.jsonl`, scalars to TensorBoard (GRPO steps in `tb/`, the warm start's in
    `tb/warmup/`, a run of its own because its steps count from 1 again). The writers open on first
    use, so that a resume can first say from which step TensorBoard must forget what it holds."""

    def __init__(self, root: Path, tensorboard: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.root / "metrics.jsonl"
        self.tensorboard = tensorboard
        self._tb: dict[str, Any] = {}  # sub-folder of tb/ -> SummaryWriter (None: no tensorboard)
        self._purge_step: int | None = None

    def _writer(self, phase: str) -> Any:
        if not self.tensorboard:
            return None
        # one writer per folder: a second writer's purge marker would hide the first one's events
        sub = "warmup" if phase == "warmup" else ""
        if sub not in self._tb:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: TensorBoard hides this run's events at or past the resumed step (a
                # killed run logged steps its checkpoint does not have; they are logged again)
                purge = self._purge_step if sub != "warmup" else None
                self._tb[sub] = SummaryWriter(str(self.root / "tb" / sub), purge_step=purge)
            except Exception:  # tensorboard not installed: the JSONL is the record
                self._tb[sub] = None
        return self._tb[sub]

    def truncate_after(self, step: int) -> Path | None:
        """On resume: drop rows past the checkpoint's step, so no step is duplicated. The cut rows
        go to `metrics.cut-<step>.jsonl` (returned; None when nothing was cut), and TensorBoard is
        told to forget its events from step `step + 1` on."""
        self._purge_step = step + 1
        rows = read_metrics(self.metrics_path) if self.metrics_path.exists() else []
        kept = [r.get("phase") == "warmup" or r.get("step", 0) <= step for r in rows]
        keep = [r for r, k in zip(rows, kept) if k]
        cut = [r for r, k in zip(rows, kept) if not k]
        backup = None
        if cut:
            backup = numbered(self.root / f"metrics.cut-{step}.jsonl")
            backup.write_text("".join(json.dumps(r) + "\n" for r in cut))
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        tmp.replace(self.metrics_path)
        return backup

    def log(self, step: int, phase: str, metrics: dict[str, Any]) -> dict[str, Any]:
        row = {"step": step, "phase": phase, "time": round(time.time(), 3)}
        row.update({k: _clean(v) for k, v in metrics.items()})
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        tb = self._writer(phase)
        if tb is not None:
            for k, v in row.items():
                if isinstance(v, int | float) and k not in ("step", "time"):
                    tb.add_scalar(k, v, step)
        return row

    def sample_dir(self, step: int) -> Path:
        d = self.root / "samples" / f"step-{step:06d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def close(self) -> None:
        for tb in self._tb.values():
            if tb is not None:
                tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a torn or malformed line is skipped (it names none of the rest)."""
    if not path.exists():
        raise DataError(f"{path}: metrics file not found")
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def write_samples(
    out: Path,
    records: list[Any],
    rewards: dict[str, list[float | None]],
    totals: list[float | None],
    advantages: list[float] | None = None,
) -> None:
    """Save one group's input image(s), completions, scores and reward artifacts (images in
    `record.extras`) to `out` as PNGs plus `samples.json`."""
    entries = []
    for rec in records[:1]:
        for j, img in enumerate(rec.images):
            img.save(out / f"input-{j}.png")
    for i, rec in enumerate(records):
        entry: dict[str, Any] = {
            "index": i,
            "prompt": rec.prompt,
            "completion": rec.completion,
            "reward": _clean(totals[i]),
            "rewards": {k: _clean(v[i]) for k, v in rewards.items()},
            "sample_id": str(rec.sample.get("id", "")),
        }
        if advantages is not None:
            entry["advantage"] = _clean(advantages[i])
        for key, val in rec.extras.items():
            if hasattr(val, "save"):
                name = f"{key}-{i}.png"
                val.save(out / name)
                entry[key] = name
            elif isinstance(val, str | int | float | bool) or val is None:
                entry[key] = _clean(val)
        entries.append(entry)
    (out / "samples.json").write_text(json.dumps(entries, indent=1))


@dataclass
class Timer:
    """Wall time per phase (`time/<phase>`) and, on CUDA, the phase's peak allocated memory
    (`memory/<phase>_peak_gib`): the memory timeline of a step."""

    times: dict[str, float] = field(default_factory=dict)
    device: Any = None

    @contextlib.contextmanager
    def __call__(self, name: str):
        import torch  # here: the report and the CLI import this module without torch

        cuda = self.device is not None and torch.device(self.device).type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        yield
        self.times[f"time/{name}"] = self.times.get(f"time/{name}", 0.0) + time.perf_counter() - t0
        if cuda:
            key = f"memory/{name}_peak_gib"
            peak = torch.cuda.max_memory_allocated(self.device) / 2**30
            self.times[key] = max(self.times.get(key, 0.0), peak)


class NullLog:
    """The run log of ranks other than 0: accepts everything, writes nothing."""

    def log(self, *args: Any, **kwargs: Any) -> dict:
        return {}

    def truncate_after(self, step: int) -> None:
        return None

    def close(self) -> None:
        pass
