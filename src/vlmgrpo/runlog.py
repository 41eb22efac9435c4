"""The run folder: everything a run writes, in one place that plots and reports read back.

    RUN/config.yaml            resolved config
    RUN/metrics.jsonl          one JSON object per line: step, phase, flat slash-separated metrics
    RUN/samples/step-N/        per-step samples: input images, completions, scores, reward artifacts
    RUN/ckpts/ckpt-N/          checkpoints (see checkpoint.py)
    RUN/tb/                    TensorBoard events, when tensorboard is installed

Metrics rows are appended and flushed line by line, so a killed run loses at most the line being
written; `read_metrics` skips a torn last line.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmgrpo.errors import DataError


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN; null reads back as "not measured"
    if hasattr(v, "item"):
        return _clean(v.item())
    return v


class RunLog:
    def __init__(self, root: Path, tensorboard: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.root / "metrics.jsonl"
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.root / "tb"))
            except Exception:  # tensorboard not installed: the JSONL is the record
                self._tb = None

    def truncate_after(self, step: int) -> None:
        """On resume: drop rows past the checkpoint's step, so no step is duplicated."""
        rows = read_metrics(self.metrics_path) if self.metrics_path.exists() else []
        keep = [r for r in rows if r.get("phase") == "warmup" or r.get("step", 0) <= step]
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        tmp.replace(self.metrics_path)

    def log(self, step: int, phase: str, metrics: dict[str, Any]) -> dict[str, Any]:
        row = {"step": step, "phase": phase, "time": round(time.time(), 3)}
        row.update({k: _clean(v) for k, v in metrics.items()})
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, int | float) and k not in ("step", "time"):
                    self._tb.add_scalar(k, v, step)
        return row

    def sample_dir(self, step: int) -> Path:
        d = self.root / "samples" / f"step-{step:06d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


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
        pass

    def close(self) -> None:
        pass
