"""What the plots and the report read from a run folder, and which of its series are worth drawing.

`load_run(path)` reads config.yaml, metrics.jsonl (GRPO and warm-start rows apart) and
`vlmgrpo eval`'s results (ckpt_tests/) into a `RunData`, never raising for a missing piece (the
gaps go to `notes`). `distinct_series` drops empty series, merges identical ones and sets the
constant ones aside (`report.plots` explains why). Pure data: no matplotlib here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def moving_average(y: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over the last `window` finite values up to each point (NaN where none)."""
    y = np.asarray(y, dtype=float)
    out = np.full(len(y), np.nan)
    w = max(1, int(window))
    for i in range(len(y)):
        seg = y[max(0, i - w + 1) : i + 1]
        seg = seg[np.isfinite(seg)]
        if seg.size:
            out[i] = seg.mean()
    return out


def read_eval_results(run: Path, results_dir: str = "") -> list[dict[str, Any]]:
    """Every readable RUN/ckpt_tests/*.json, by step (base = step 0); unreadable files are skipped."""
    d = Path(results_dir) if results_dir else Path(run) / "ckpt_tests"
    out = []
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(r, dict):
            r.setdefault("name", p.stem)
            tail = p.stem.rpartition("-")[2]
            r.setdefault("step", int(tail) if tail.isdigit() else 0)
            out.append(r)
    return sorted(out, key=lambda r: (r["step"], r["name"] != "base"))


def headline_key(results: Sequence[dict[str, Any]]) -> str | None:
    """The number `vlmgrpo eval` results are compared by: `pass@1` when any has one, else `score`."""
    for key in ("pass@1", "score"):
        if any(_is_num(r.get(key)) for r in results):
            return key
    return None


def result_metric(results: Sequence[dict[str, Any]]) -> str:
    """What the results' headline measures, e.g. "pass@1, offline charts benchmark"."""
    from vlmgrpo.evaluate import METRIC_NAMES

    for r in results:
        if r.get("metric"):
            return str(r["metric"])
        if r.get("task") in METRIC_NAMES:
            return METRIC_NAMES[r["task"]]
    return headline_key(results) or "score"


@dataclass
class RunData:
    """What the plots read from one run folder."""

    path: Path
    name: str
    grpo: list[dict[str, Any]] = field(default_factory=list)
    warmup: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # config.yaml as plain data ({} if unreadable)
    notes: list[str] = field(default_factory=list)

    def series(self, key: str, rows: list[dict[str, Any]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the rows that have `key` as a number."""
        pts = [(r["step"], r[key]) for r in (self.grpo if rows is None else rows) if _is_num(r.get(key))]
        if not pts:
            return np.array([]), np.array([])
        s, v = zip(*pts)
        return np.asarray(s, float), np.asarray(v, float)

    def keys(self, pattern: str, rows: list[dict[str, Any]] | None = None) -> list[str]:
        rx = re.compile(pattern)
        found = {k for r in (self.grpo if rows is None else rows) for k in r if rx.fullmatch(k)}
        return sorted(found, key=lambda k: (k.count("/"), k))

    def reward_labels(self) -> list[str]:
        """The recipe's reward names (label or function), weighted ones only."""
        out = []
        for r in self.config.get("rewards") or []:
            if isinstance(r, dict) and r.get("weight", 1.0):
                out.append(str(r.get("label") or r.get("name") or "?"))
        return out

    def reward_title(self) -> str:
        """ "similarity" for one reward; "area_correctness + area_format + xml_format" for several."""
        labels = self.reward_labels()
        return " + ".join(labels) if labels else "reward"

    def reward_short(self) -> str:
        """One reward's label, else "total reward" (for labels that must stay short)."""
        labels = self.reward_labels()
        return labels[0] if len(labels) == 1 else "total reward"

    def step_name(self) -> str:
        """ "round" for adversarial runs (policy and adversary rounds alternate), else "GRPO step"."""
        return "round" if any("round_kind" in r for r in self.grpo[:5]) else "GRPO step"

    def max_step(self) -> float:
        return max((float(r["step"]) for r in self.grpo), default=0.0)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def load_run(path: str | Path, results_dir: str = "") -> RunData:
    """Read a run folder; never raises for missing pieces, lists them in `notes` instead."""
    path = Path(path)
    data = RunData(path, path.resolve().name or str(path))
    if not path.is_dir():
        data.notes.append(f"{path}: run folder not found")
        return data
    if (path / "config.yaml").is_file():
        import yaml

        try:
            cfg = yaml.safe_load((path / "config.yaml").read_text())
            data.config = cfg if isinstance(cfg, dict) else {}
        except (OSError, yaml.YAMLError):
            data.notes.append(f"{path / 'config.yaml'}: unreadable (titles name no reward)")
    mfile = path / "metrics.jsonl"
    if not mfile.is_file():
        data.notes.append(f"{mfile}: not found (no training, eval or component curves)")
    else:
        bad = 0
        for line in mfile.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if not isinstance(row, dict) or not _is_num(row.get("step")):
                bad += 1
                continue
            (data.warmup if row.get("phase") == "warmup" else data.grpo).append(row)
        if bad:
            data.notes.append(f"{mfile}: {bad} unreadable line(s) skipped (a torn write?)")
        if not data.grpo:
            data.notes.append(f"{mfile}: no GRPO rows")
    results = read_eval_results(path, results_dir)
    key = headline_key(results)
    data.results = [r for r in results if key and _is_num(r.get(key))]
    if not data.results:
        from vlmgrpo.trl_config import API_RECIPE

        # a GRPOTrainer run's datasets are not in config.yaml: eval needs one named (--data)
        extra = " --data TEST_SET.json" if data.config.get("recipe") == API_RECIPE else ""
        data.notes.append(
            f"{path / 'ckpt_tests'}: no checkpoint evaluation (run `vlmgrpo eval --output-dir {path}{extra}`)"
        )
    return data


# --------------------------------------------------------------------------- which series to draw


@dataclass
class Line:
    """One series to draw: its label (names of identical series joined by " = "), x and y."""

    label: str
    x: np.ndarray
    y: np.ndarray


def distinct_series(
    named: Sequence[tuple[str, np.ndarray, np.ndarray]], always: int = 0
) -> tuple[list[Line], list[str]]:
    """(the series worth drawing, "label = value" of the constant ones left out).

    Empty series (no finite point) are dropped; a series equal to an earlier one (same steps, values
    within 1e-6: float32 sums of the same values differ in the last bits) is merged into it, so it
    is drawn once under both names; a series of two or more points that never changes is left out
    and reported, except the first `always` ones (a figure's
    headline, e.g. the total reward, is drawn even when flat: that is the result). A single point is
    kept: it is not known to be constant."""
    lines: list[Line] = []
    constant: list[str] = []
    for n, (label, x, y) in enumerate(named):
        if len(x) == 0:
            continue
        same = next(
            (
                ln
                for ln in lines
                if len(ln.x) == len(x)
                and np.array_equal(ln.x, x)
                and np.allclose(ln.y, y, rtol=1e-6, atol=1e-6)
            ),
            None,
        )
        if same is not None:
            same.label = f"{same.label} = {label}"
        elif n >= always and len(y) >= 2 and np.ptp(y) <= 1e-12 * max(1.0, float(np.abs(y).max())):
            constant.append(f"{label} = {y[0]:.4g}")
        else:
            lines.append(Line(label, x, y))
    return lines, constant


def label_of(key: str) -> str:
    """reward/mean -> total reward; reward/similarity/mean -> similarity; eval/x/raw/mean -> x/raw."""
    parts = key.split("/")[1:]
    if parts and parts[-1] == "mean":
        parts = parts[:-1]
    if parts and parts[0] == "reward":
        parts = parts[1:]
    return "/".join(parts) or "total reward"


def warmup_stages(run: RunData) -> list[tuple[str, int]]:
    """The warm start's target stages [(field, end step)] from config.yaml (empty if unknown)."""
    w = run.config.get("warmup") or {}
    if not isinstance(w, dict) or not w.get("steps"):
        return []
    from vlmgrpo.warmup import parse_stages

    try:
        return parse_stages(str(w.get("target_field") or "description"), int(w["steps"]))
    except (TypeError, ValueError):
        return []
