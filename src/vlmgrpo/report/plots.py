"""A run's curves, from the run folder alone (metrics.jsonl and ckpt_tests/), as PNG and PDF.

Figures (each a trailing moving average over `window` points, raw values faint underneath):
    training     reward/mean and every reward/<name>/mean, GRPO steps
    eval         every eval/*/mean (and the eval controls such as ceiling/shuffled, dashed)
    pass_at_1    pass@1 vs checkpoint step (base model at step 0), +- one standard error over items
    components   one panel per reward component (reward/<name>/mean and its sub-scores)
    warmup       the supervised warm-up's metrics (phase "warmup"), when there was one
`compare` runs are overlaid on the eval and pass@1 figures. Themes: `festive` (seed A's plots were
Christmas-styled: red and green on cream, snowflakes) and `plain`. A missing or partial metrics file
draws what exists and the notes say what is missing.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FESTIVE = ["#c0392b", "#1e7b3c", "#d4a017", "#1f4e9c", "#8e44ad", "#e67e22", "#16a085"]
THEMES: dict[str, dict[str, Any]] = {
    "festive": {
        "rc": {
            "figure.facecolor": "#fdf6ec",
            "axes.facecolor": "#fffaf3",
            "axes.edgecolor": "#1e7b3c",
            "axes.labelcolor": "#5b1a12",
            "axes.titlecolor": "#a93226",
            "axes.titleweight": "bold",
            "axes.grid": True,
            "grid.color": "#1e7b3c",
            "grid.alpha": 0.15,
            "xtick.color": "#1e5631",
            "ytick.color": "#1e5631",
            "legend.facecolor": "#fffaf3",
            "legend.edgecolor": "#c0392b",
            "font.family": "DejaVu Sans",
        },
        "colors": FESTIVE,
        "snow": True,
        "title": "\u2744 {} \u2744",
    },
    "plain": {
        "rc": {"axes.grid": True, "grid.alpha": 0.3},
        "colors": ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"],
        "snow": False,
        "title": "{}",
    },
}


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


@dataclass
class RunData:
    """What the plots read from one run folder."""

    path: Path
    name: str
    grpo: list[dict[str, Any]] = field(default_factory=list)
    warmup: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
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


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def load_run(path: str | Path, results_dir: str = "") -> RunData:
    """Read a run folder; never raises for missing pieces, lists them in `notes` instead."""
    path = Path(path)
    data = RunData(path, path.name)
    if not path.is_dir():
        data.notes.append(f"{path}: run folder not found")
        return data
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
    data.results = [r for r in read_eval_results(path, results_dir) if _is_num(r.get("pass@1"))]
    if not data.results:
        data.notes.append(
            f"{path / 'ckpt_tests'}: no pass@1 results (run `vlmgrpo eval --output-dir {path}`)"
        )
    return data


# --------------------------------------------------------------------------- drawing


def _label(key: str) -> str:
    """reward/mean -> total reward; reward/similarity/mean -> similarity; eval/x/raw/mean -> x/raw."""
    parts = key.split("/")[1:]
    if parts and parts[-1] == "mean":
        parts = parts[:-1]
    if parts and parts[0] == "reward":
        parts = parts[1:]
    return "/".join(parts) or "total reward"


def _new_figure(theme: dict[str, Any], title: str, ncols: int = 1, nrows: int = 1, size=(8.0, 4.5)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    fig.suptitle(theme["title"].format(title), fontsize=13)
    if theme["snow"]:
        rng = np.random.default_rng(25)  # the same snowfall every time
        for ax in axes:
            for x, y, s in zip(rng.uniform(0, 1, 14), rng.uniform(0, 1, 14), rng.uniform(8, 18, 14)):
                ax.text(
                    x,
                    y,
                    "\u2744",
                    transform=ax.transAxes,
                    fontsize=s,
                    color="#9ecae1",
                    alpha=0.35,
                    ha="center",
                    va="center",
                    zorder=0,
                )
    return fig, axes


def _curve(ax: Any, x: np.ndarray, y: np.ndarray, color: str, label: str, window: int, ls: str = "-") -> None:
    if len(x) == 0:
        return
    marker = "o" if len(x) <= 40 else None  # sparse curves (evals, short runs): show the points
    ax.plot(x, y, color=color, alpha=0.25, lw=1, ls=ls, zorder=2)
    ax.plot(
        x, moving_average(y, window), color=color, lw=2.2, ls=ls, label=label, zorder=3, marker=marker, ms=3
    )


def _finish(ax: Any, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=10, color="#777777")


def make_figures(
    run: str | Path,
    compare: Sequence[str | Path] = (),
    theme: str = "festive",
    window: int = 10,
    results_dir: str = "",
) -> tuple[dict[str, Any], list[str]]:
    """(name -> matplotlib Figure, notes on what is missing). Nothing here raises on missing data."""
    import matplotlib

    th = THEMES[theme]
    main = load_run(run, results_dir)
    others = [load_run(p) for p in compare]
    notes = list(main.notes) + [n for o in others for n in o.notes if "ckpt_tests" in n or "not found" in n]
    cols = th["colors"]
    figs: dict[str, Any] = {}
    ma = f" (moving average, window {window})"
    with matplotlib.rc_context(th["rc"]):
        train_keys = ["reward/mean"] + [k for k in main.keys(r"reward/[^/]+/mean") if k != "reward/mean"]
        train_keys = [k for k in train_keys if len(main.series(k)[0])]
        if train_keys:
            fig, (ax,) = _new_figure(th, "Training average similarity")
            # the total last and dashed: with one reward it equals that reward and would hide under it
            for k in train_keys[1:] + train_keys[:1]:
                ls = "--" if k == "reward/mean" and len(train_keys) > 1 else "-"
                _curve(ax, *main.series(k), cols[train_keys.index(k) % len(cols)], _label(k), window, ls=ls)
            _finish(ax, "GRPO step", "reward" + ma)
            figs["training"] = fig
        elif main.grpo:
            notes.append("metrics.jsonl: no reward/* training metrics")

        # adversarial runs (seed B): the adversary's reward and control terms, and the policy's
        # similarity on the adversary's images
        # (the prompt length in words has its own scale: it stays in metrics.jsonl only)
        adv_keys = [
            k
            for k in main.keys(r"adversary/[^/]+/mean")
            if len(main.series(k)[0]) and k != "adversary/words/mean"
        ]
        if adv_keys:
            fig, (ax,) = _new_figure(th, "Adversary: reward and control terms")
            for i, k in enumerate(adv_keys):
                _curve(ax, *main.series(k), cols[i % len(cols)], _label(k), window)
            _finish(ax, "round", "value" + ma)
            figs["adversary"] = fig

        eval_keys = main.keys(r"eval/.+/mean")
        controls = [k for k in main.keys(r"eval/[^/]+/(ceiling|shuffled)")]
        if eval_keys or any(o.keys(r"eval/.+/mean") for o in others):
            fig, (ax,) = _new_figure(th, "Evaluation average similarity")
            for i, k in enumerate(eval_keys):
                _curve(ax, *main.series(k), cols[i % len(cols)], f"{main.name}: {_label(k)}", window)
            for j, k in enumerate(controls):
                x, y = main.series(k)
                ax.plot(
                    x,
                    moving_average(y, window),
                    ls="--",
                    lw=1.4,
                    color="#555555",
                    alpha=0.5 + 0.3 * j,
                    label=f"{main.name}: {_label(k)} (control)",
                )
            for i, o in enumerate(others):
                key = "eval/reward/mean"
                _curve(
                    ax,
                    *o.series(key),
                    cols[(len(eval_keys) + i) % len(cols)],
                    f"{o.name}: {_label(key)}",
                    window,
                    ls="-.",
                )
            _finish(ax, "GRPO step", "eval reward" + ma)
            figs["eval"] = fig
        elif main.grpo:
            notes.append("metrics.jsonl: no eval/*/mean metrics (train.eval_every = 0?)")

        runs = [r for r in [main, *others] if r.results]
        if runs:
            fig, (ax,) = _new_figure(th, "pass@1 on chart reasoning questions")
            for i, r in enumerate(runs):
                _pass_curve(ax, r, cols[i % len(cols)], window)
            ax.set_ylim(bottom=0)
            _finish(ax, "checkpoint step (base model = 0)", "pass@1")
            figs["pass_at_1"] = fig

        comp = [k for k in main.keys(r"reward/.+/mean") if k != "reward/mean"]
        if comp:
            ncols = min(3, len(comp))
            nrows = math.ceil(len(comp) / ncols)
            fig, axes = _new_figure(th, "Reward components", ncols, nrows, (4.0 * ncols, 3.0 * nrows + 0.6))
            for i, k in enumerate(comp):
                _curve(axes[i], *main.series(k), cols[i % len(cols)], _label(k), window)
                axes[i].set_title(_label(k), fontsize=10)
                axes[i].set_xlabel("GRPO step")
            for ax in axes[len(comp) :]:
                ax.set_axis_off()
            figs["components"] = fig

        from vlmgrpo.report.diagnostics import diagnostics_figures  # entropy, clipping, lengths, ...

        figs.update(diagnostics_figures(main, th, window))
        wkeys = [k for k in main.keys(r"warmup/.+", main.warmup)]
        if wkeys:
            fig, (ax,) = _new_figure(th, "Supervised warm-up")
            for i, k in enumerate(wkeys):
                _curve(ax, *main.series(k, main.warmup), cols[i % len(cols)], k, window)
            _finish(ax, "warm-up step", "value" + ma)
            figs["warmup"] = fig
    return figs, notes


def _pass_curve(ax: Any, r: RunData, color: str, window: int) -> None:
    steps = np.array([x["step"] for x in r.results], float)
    p1 = np.array([x["pass@1"] for x in r.results], float)
    se = []
    for x in r.results:  # standard error of the mean over items
        vals = [it["pass@1"] for it in x.get("items", []) if _is_num(it.get("pass@1"))]
        se.append(np.std(vals, ddof=1) / math.sqrt(len(vals)) if len(vals) > 1 else 0.0)
    ax.fill_between(steps, p1 - np.array(se), p1 + np.array(se), color=color, alpha=0.12, lw=0)
    ax.plot(steps, p1, "o", color=color, alpha=0.55, ms=5)
    ax.plot(steps, moving_average(p1, window), color=color, lw=2.2, label=f"{r.name} pass@1")


def save_figures(
    figs: dict[str, Any], out_dir: str | Path, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Write each figure as out_dir/<name>.<fmt>; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figs.items():
        for fmt in formats:
            p = out / f"{name}.{fmt}"
            fig.savefig(p, facecolor=fig.get_facecolor())
            paths.append(p)
    return paths


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """A figure as PNG bytes (for inlining in the HTML report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    return buf.getvalue()


def plot_run(
    run: str | Path,
    compare: Sequence[str | Path] = (),
    theme: str = "festive",
    window: int = 10,
    out_dir: str | Path | None = None,
    formats: Sequence[str] = ("png", "pdf"),
) -> tuple[list[Path], list[str]]:
    """Draw and save every figure the run's data allow; returns (files written, notes)."""
    figs, notes = make_figures(run, compare, theme, window)
    files = save_figures(figs, out_dir or Path(run) / "plots", formats)
    return files, notes
