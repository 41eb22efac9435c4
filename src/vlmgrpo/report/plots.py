"""A run's curves, from the run folder alone (config.yaml, metrics.jsonl, ckpt_tests/), as PNG and PDF.

Figures (`FIGURES`, drawn in this order when the run has their data):
    training     the training reward: the total and each reward (GRPO steps)
    adversary    adversarial runs: the adversary's reward and control terms
    eval         the held-out evaluation during training (eval/*/mean; ceiling/shuffled controls dashed)
    checkpoints  `vlmgrpo eval`'s headline per checkpoint (pass@1 and pass@k, else the task's score)
    components   one panel per reward component and sub-score
    warmup       the supervised warm start: loss with its target stages marked, and its evaluations

What is drawn, whatever the task:
- titles and axes name the run's own rewards (config.yaml) and `vlmgrpo eval`'s metric;
- a series identical to another is drawn once, its label naming both ("similarity = total reward");
  an empty one (no finite value) or a constant one (kl under loss `pg`) is not drawn, and the
  constants are listed under the figure; a figure or panel with nothing left is not drawn;
- a moving average (trailing, `window` points) only over series of at least `SMOOTH_MIN_WINDOWS`
  windows, drawn over the raw values, which are always visible; shorter series are drawn raw with
  markers, and a lone point carries its value;
- the x-axis of GRPO figures spans the run's steps, so a run with one evaluation gets a readable axis;
- phase boundaries are marked (the warm start's target stages);
- `compare` runs are drawn in every figure: one colour per run, run names in the legend, and one
  line style per series.

A new figure is one function `fn(ctx: PlotContext) -> Figure | None` registered with
`@figure("name")`. Themes: `plain` (default) and `festive` (seed A's plots were Christmas-styled:
red and green on cream; the snowflakes sit in the title, not among the data). A missing or partial
metrics file draws what exists and the notes say what is missing.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlmgrpo.report.rundata import (  # noqa: F401  (re-exported: the report and tests use them)
    Line,
    RunData,
    distinct_series,
    headline_key,
    label_of,
    load_run,
    moving_average,
    read_eval_results,
    result_metric,
    warmup_stages,
)

FESTIVE = ["#c0392b", "#1e7b3c", "#d4a017", "#1f4e9c", "#8e44ad", "#e67e22", "#16a085"]
PLAIN = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
THEMES: dict[str, dict[str, Any]] = {
    "plain": {
        "rc": {"axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False},
        "colors": PLAIN,
        "title": "{}",
    },
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
        "title": "\u2744 {} \u2744",
    },
}
DEFAULT_THEME = "plain"
LINESTYLES = ["-", "--", ":", "-."]
SMOOTH_MIN_WINDOWS = 3  # a moving average needs at least 3 windows of points to say more than the points


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------- drawing helpers


@dataclass
class PlotContext:
    """What every figure function gets: the runs (the main run first), the theme and the window."""

    runs: list[RunData]
    theme: dict[str, Any]
    window: int
    notes: list[str] = field(default_factory=list)

    @property
    def main(self) -> RunData:
        return self.runs[0]

    @property
    def compare(self) -> bool:
        return len(self.runs) > 1

    def style(self, run_index: int, series_index: int) -> tuple[str, str]:
        """(colour, line style): one colour per series for one run; one colour per run and one
        line style per series when runs are compared."""
        cols = self.theme["colors"]
        if not self.compare:
            return cols[series_index % len(cols)], "-"
        return cols[run_index % len(cols)], LINESTYLES[series_index % len(LINESTYLES)]

    def label(self, run: RunData, text: str) -> str:
        return f"{run.name}: {text}" if self.compare else text

    def grpo_xlim(self, ax: Any) -> None:
        """The GRPO step axis from 0 to the last step of any run (a lone point gets a real axis)."""
        from matplotlib.ticker import MaxNLocator

        last = max((r.max_step() for r in self.runs), default=0.0)
        span = max(last, 1.0)
        ax.set_xlim(-0.03 * span, last + 0.03 * span if last else 1.0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def new_figure(ctx: PlotContext, title: str, ncols: int = 1, nrows: int = 1, size=(10.0, 4.6)):
    """A constrained-layout figure with `ncols` x `nrows` axes and the theme's title."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    fig.suptitle(ctx.theme["title"].format(title), fontsize=13)
    return fig, axes


def draw_curve(
    ax: Any,
    x: np.ndarray,
    y: np.ndarray,
    color: str,
    label: str,
    window: int,
    ls: str = "-",
    breaks: Sequence[float] = (),
) -> None:
    """Raw values always; a moving average over them only when the series is long enough. The average
    restarts after each step in `breaks` (a phase boundary), so a jump there is not smeared."""
    n = len(x)
    if n == 0:
        return
    if n == 1:
        ax.plot(x, y, "o", color=color, ms=7, label=label, zorder=3)
        ax.annotate(
            f"{y[0]:.3g}", (x[0], y[0]), textcoords="offset points", xytext=(6, 4), fontsize=8, color=color
        )
        return
    if window > 1 and n >= SMOOTH_MIN_WINDOWS * window:
        ax.plot(x, y, color=color, alpha=0.35, lw=0.9, ls=ls, zorder=2)
        seg = np.searchsorted(np.asarray(sorted(breaks), float), x, side="left")  # segment of each point
        avg = np.concatenate([moving_average(y[seg == k], window) for k in np.unique(seg)])
        ax.plot(
            x,
            avg,
            color=color,
            lw=2.2,
            ls=ls,
            label=f"{label} (avg {window})",
            zorder=3,
        )
    else:
        marker = "o" if n <= 60 else None
        ax.plot(x, y, color=color, lw=1.6, ls=ls, marker=marker, ms=3.5, label=label, zorder=3)


def finish(ax: Any, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")


def footnote(fig: Any, constant: Sequence[str], limit: int = 12) -> None:
    """List the series left out because they never changed, under the figure (the layout makes room)."""
    import textwrap

    if not constant:
        return
    shown = ", ".join(constant[:limit]) + (
        f", and {len(constant) - limit} more" if len(constant) > limit else ""
    )
    width = int(fig.get_figwidth() * 17)  # characters per line at 7 pt
    text = textwrap.fill(f"constant over the run, not drawn: {shown}", width)
    fig.supxlabel(text, fontsize=7, color="#666666", x=0.01, ha="left")


def draw_runs(
    ctx: PlotContext,
    ax: Any,
    keys_of: Callable[[RunData], list[str]],
    rows_of=None,
    always: int = 1,
    breaks_of: Callable[[RunData], Sequence[float]] | None = None,
) -> list[str]:
    """Every run's distinct series of `keys_of(run)` on `ax` (the first `always` drawn even when
    constant; moving averages restarting at `breaks_of(run)`); returns the constants left out."""
    constant: list[str] = []
    for i, run in enumerate(ctx.runs):
        rows = rows_of(run) if rows_of else None
        named = [(label_of(k), *run.series(k, rows)) for k in keys_of(run)]
        lines, const = distinct_series(named, always)
        constant += [ctx.label(run, c) for c in const]
        for j, ln in enumerate(lines):
            color, ls = ctx.style(i, j)
            breaks = breaks_of(run) if breaks_of else ()
            draw_curve(ax, ln.x, ln.y, color, ctx.label(run, ln.label), ctx.window, ls, breaks)
    return constant


# --------------------------------------------------------------------------- the figures

FIGURES: dict[str, Callable[[PlotContext], Any]] = {}


def figure(name: str) -> Callable[[Callable[[PlotContext], Any]], Callable[[PlotContext], Any]]:
    """Register a figure function under `name` (its file name); figures are drawn in this order."""

    def register(fn: Callable[[PlotContext], Any]) -> Callable[[PlotContext], Any]:
        FIGURES[name] = fn
        return fn

    return register


def _training_keys(run: RunData) -> list[str]:
    return ["reward/mean"] + [k for k in run.keys(r"reward/[^/]+/mean") if k != "reward/mean"]


@figure("training")
def training_figure(ctx: PlotContext) -> Any:
    if not any(len(r.series("reward/mean")[0]) for r in ctx.runs):
        if ctx.main.grpo:
            ctx.notes.append("metrics.jsonl: no reward/* training metrics")
        return None
    fig, (ax,) = new_figure(ctx, f"Training reward: {ctx.main.reward_title()}")
    footnote(fig, draw_runs(ctx, ax, _training_keys))
    ctx.grpo_xlim(ax)
    finish(ax, ctx.main.step_name(), "mean reward of the step's samples")
    return fig


@figure("adversary")
def adversary_figure(ctx: PlotContext) -> Any:
    # the prompt length in words has its own scale: it stays in metrics.jsonl only
    def keys(run: RunData) -> list[str]:
        found = [k for k in run.keys(r"adversary/[^/]+/mean") if k != "adversary/words/mean"]
        return sorted(found, key=lambda k: k != "adversary/reward/mean")  # the reward first

    if not any(keys(r) for r in ctx.runs):
        return None
    fig, (ax,) = new_figure(ctx, "Adversary: reward and control terms")
    footnote(fig, draw_runs(ctx, ax, keys))
    ctx.grpo_xlim(ax)
    finish(ax, "round", "mean over the adversary's samples")
    return fig


def _eval_keys(run: RunData, rows: list[dict[str, Any]] | None = None) -> list[str]:
    # the total, each reward and its raw value (seed A's raw cosine): one scale. Sub-scores (code
    # lengths, error classes) stay in metrics.jsonl: beside a reward they would flatten it
    found = run.keys(r"eval/[^/]+/mean|eval/[^/]+/raw/mean", rows)
    return sorted(found, key=lambda k: k != "eval/reward/mean")  # the total first, as in training


def _draw_controls(ctx: PlotContext, ax: Any, rows_of=None) -> None:
    """The cycle reward's ceiling / shuffled controls: dashed, grey (one run) or the run's colour."""
    for i, run in enumerate(ctx.runs):
        rows = rows_of(run) if rows_of else None
        named = [
            (f"{label_of(k)} (control)", *run.series(k, rows))
            for k in run.keys(r"eval/[^/]+/(ceiling|shuffled)", rows)
        ]
        lines, _ = distinct_series(named, always=len(named))  # a ceiling is constant by design
        for j, ln in enumerate(lines):
            color = ctx.style(i, 0)[0] if ctx.compare else "#555555"
            ax.plot(ln.x, ln.y, ls="--", lw=1.3, color=color, alpha=0.85 - 0.3 * j, marker="." if len(ln.x) < 3 else None,
                    label=ctx.label(run, ln.label))  # fmt: skip


@figure("eval")
def eval_figure(ctx: PlotContext) -> Any:
    if not any(_eval_keys(r) for r in ctx.runs):
        if ctx.main.grpo:  # the config says whether evaluation was off (img2code-tiny) or did not run
            every = (ctx.main.config.get("train") or {}).get("eval_every")
            why = "train.eval_every is 0 in config.yaml" if every == 0 else "train.eval_every = 0?"
            ctx.notes.append(f"metrics.jsonl: no held-out evaluation during training ({why})")
        return None
    fig, (ax,) = new_figure(ctx, f"Held-out evaluation during training: {ctx.main.reward_title()}")
    constant = draw_runs(ctx, ax, _eval_keys)
    _draw_controls(ctx, ax)
    footnote(fig, constant)
    ctx.grpo_xlim(ax)
    finish(ax, ctx.main.step_name(), "mean over the held-out samples")
    return fig


@figure("checkpoints")
def checkpoints_figure(ctx: PlotContext) -> Any:
    """pass@1 (or the task's score) of every evaluated model vs its step. Compared runs evaluated on
    another task (another metric) get a panel of their own: one axis would put an area score beside
    a pass@1 under the main run's title."""
    runs = [r for r in ctx.runs if r.results]
    if not runs:
        return None
    groups: dict[str, list[int]] = {}  # metric -> indices into ctx.runs, the main run's first
    for i, run in enumerate(ctx.runs):
        if run.results:
            groups.setdefault(result_metric(run.results), []).append(i)
    title = "Checkpoint evaluation" + (f": {next(iter(groups))}" if len(groups) == 1 else "")
    size = (10.0, 4.6) if len(groups) == 1 else (max(10.0, 5.2 * len(groups)), 4.6)
    fig, axes = new_figure(ctx, title, len(groups), 1, size)
    from matplotlib.ticker import MaxNLocator

    last = max([x["step"] for r in runs for x in r.results] + [r.max_step() for r in ctx.runs] + [1.0])
    for ax, (metric, idx) in zip(axes, groups.items()):
        key = headline_key([x for i in idx for x in ctx.runs[i].results]) or "score"
        for i in idx:
            color = ctx.style(i, 0)[0] if ctx.compare else ctx.theme["colors"][0]
            _checkpoint_curve(ax, ctx, ctx.runs[i], key, color)
        if key == "pass@1":
            ax.set_ylim(-0.03, 1.03)
        if len(groups) > 1:
            ax.set_title(metric, fontsize=10)
        ax.set_xlim(-0.03 * last, 1.03 * last)  # one result (the base model alone) still gets a real axis
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        finish(ax, "checkpoint step (base model = 0)", key if key == "pass@1" else "score")
    return fig


def _checkpoint_curve(ax: Any, ctx: PlotContext, run: RunData, key: str, color: str) -> None:
    """The results' headline vs step (no smoothing: a few points), +- one standard error over items
    for pass@1, and pass@k (k > 1) dashed."""
    rows = [x for x in run.results if _is_num(x.get(key))]
    steps = np.array([x["step"] for x in rows], float)
    vals = np.array([x[key] for x in rows], float)
    if key == "pass@1":
        se = []
        for x in rows:  # standard error of the mean over items
            items = [
                it["pass@1"]
                for it in x.get("items", [])
                if isinstance(it, dict) and _is_num(it.get("pass@1"))
            ]
            se.append(np.std(items, ddof=1) / math.sqrt(len(items)) if len(items) > 1 else 0.0)
        ax.fill_between(steps, vals - np.array(se), vals + np.array(se), color=color, alpha=0.12, lw=0)
    draw_curve(ax, steps, vals, color, ctx.label(run, key), 1)
    ks = (
        sorted({k for x in rows for k in (x.get("pass@k") or {}) if k != "1"}, key=int)
        if key == "pass@1"
        else []
    )
    for j, k in enumerate(ks):
        pts = [(x["step"], x["pass@k"][k]) for x in rows if _is_num((x.get("pass@k") or {}).get(k))]
        if pts:
            s, v = map(np.asarray, zip(*pts))
            ax.plot(
                s,
                v,
                ls=LINESTYLES[1 + j % 3],
                color=color,
                lw=1.2,
                marker=".",
                label=ctx.label(run, f"pass@{k}"),
            )


@figure("components")
def components_figure(ctx: PlotContext) -> Any:
    keys = sorted({k for r in ctx.runs for k in r.keys(r"reward/.+/mean") if k != "reward/mean"},
                  key=lambda k: (k.split("/")[1], k.count("/"), k))  # fmt: skip
    panels: list[tuple[str, list[tuple[int, Line]]]] = []
    constant: list[str] = []
    for k in keys:  # one panel per key that changes in some run
        drawn = []
        for i, run in enumerate(ctx.runs):
            lines, const = distinct_series([(label_of(k), *run.series(k))])
            drawn += [(i, ln) for ln in lines]
            constant += [ctx.label(run, c) for c in const]
        if drawn:
            panels.append((label_of(k), drawn))
    panels = _merge_identical_panels(panels)
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    # at least the other figures' 10 in: the report draws every figure at page width, and a one-panel
    # 4.4 in figure was blown up to fonts three times the size of its neighbours'
    fig, axes = new_figure(ctx, f"Reward components: {ctx.main.reward_title()}", ncols, nrows,
                           (max(10.0, 4.4 * ncols), 3.0 * nrows + 0.9))  # fmt: skip
    for n, (ax, (title, drawn)) in enumerate(zip(axes, panels)):
        for i, ln in drawn:
            color, ls = ctx.style(i, 0) if ctx.compare else ctx.style(0, n)
            draw_curve(ax, ln.x, ln.y, color, ctx.label(ctx.runs[i], ln.label), ctx.window, ls)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(ctx.main.step_name())
        ctx.grpo_xlim(ax)
        if ctx.compare:
            ax.legend(fontsize=7)
    for ax in axes[len(panels) :]:
        fig.delaxes(ax)
    footnote(fig, constant)
    return fig


def _merge_identical_panels(
    panels: list[tuple[str, list[tuple[int, Line]]]],
) -> list[tuple[str, list[tuple[int, Line]]]]:
    """Panels whose every run's series are identical are drawn once, titled "a = b"."""
    out: list[tuple[str, list[tuple[int, Line]]]] = []
    for title, drawn in panels:
        for n, (t2, d2) in enumerate(out):
            if len(d2) == len(drawn) and all(
                i == j and np.array_equal(a.x, b.x) and np.allclose(a.y, b.y, rtol=1e-6, atol=1e-6)
                for (i, a), (j, b) in zip(drawn, d2)
            ):
                out[n] = (f"{t2} = {title}", d2)
                break
        else:
            out.append((title, drawn))
    return out


@figure("diagnostics")
def diagnostics_figure(ctx: PlotContext) -> Any:
    """GRPO health: entropy, zero-spread groups, lengths, truncation, clip fractions, KL
    (report/diagnostics.py)."""
    from vlmgrpo.report.diagnostics import diagnostics_figure as draw

    return draw(ctx.main, ctx.theme, ctx.window)


@figure("warmup")
def warmup_figure(ctx: PlotContext) -> Any:
    runs = [r for r in ctx.runs if r.warmup]
    if not runs:
        return None
    has_eval = any(_eval_keys(r, r.warmup) for r in runs)
    fig, axes = new_figure(ctx, "Supervised warm start (before GRPO)", 2 if has_eval else 1, 1,
                           (13.0 if has_eval else 10.0, 4.6))  # fmt: skip

    def loss_keys(run: RunData) -> list[str]:
        return run.keys(r"(adversary/)?warmup/.+", run.warmup)

    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax = axes[0]

    def stage_ends(run: RunData) -> list[int]:
        return [end for _, end in warmup_stages(run)[:-1]]

    footnote(fig, draw_runs(ctx, ax, loss_keys, lambda r: r.warmup, breaks_of=stage_ends))
    _mark_stages(ax, ctx.main)
    ax.set_title("loss (mean token NLL of the targets)", fontsize=10)
    finish(ax, "warm-start step", "loss")
    if has_eval:
        ax = axes[1]
        draw_runs(ctx, ax, lambda r: _eval_keys(r, r.warmup), lambda r: r.warmup)
        _draw_controls(ctx, ax, lambda r: r.warmup)
        _mark_stages(ax, ctx.main)
        ax.set_xlim(axes[0].get_xlim())  # the same steps as the loss, so the stage lines align
        ax.set_title("held-out evaluation during the warm start", fontsize=10)
        finish(ax, "warm-start step", "mean over the held-out samples")
    return fig


def _mark_stages(ax: Any, run: RunData) -> None:
    """A vertical line where the warm start's targets change (the loss jumps there by design)."""
    stages = warmup_stages(run)
    last = max((r["step"] for r in run.warmup), default=0)
    for (_, end), (nxt, _) in zip(stages, stages[1:]):
        if end < last:
            ax.axvline(end, color="#888888", ls=":", lw=1.2, zorder=1)
            ax.annotate(f"targets -> {nxt}", (end, 0.0), xycoords=("data", "axes fraction"), xytext=(3, 4),
                        textcoords="offset points", fontsize=8, color="#555555")  # fmt: skip


# --------------------------------------------------------------------------- entry points


def make_figures(
    run: str | Path,
    compare: Sequence[str | Path] = (),
    theme: str = DEFAULT_THEME,
    window: int = 10,
    results_dir: str = "",
) -> tuple[dict[str, Any], list[str]]:
    """(name -> matplotlib Figure, notes on what is missing). Nothing here raises on missing data."""
    import matplotlib

    main = load_run(run, results_dir)
    others = [load_run(p) for p in compare]
    runs = [main, *others]
    clash = {r.name for r in runs if sum(o.name == r.name for o in runs) > 1}
    for r in runs:  # runs/a/seed-1 and runs/b/seed-1: name them by their parent too
        if r.name in clash:
            r.name = f"{r.path.resolve().parent.name}/{r.path.resolve().name}"
    notes = list(main.notes) + [n for o in others for n in o.notes if "ckpt_tests" in n or "not found" in n]
    ctx = PlotContext(runs, THEMES[theme], window, notes)
    figs: dict[str, Any] = {}
    with matplotlib.rc_context(THEMES[theme]["rc"]):
        for name, fn in FIGURES.items():
            fig = fn(ctx)
            if fig is not None:
                figs[name] = fig
    return figs, ctx.notes


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
    theme: str = DEFAULT_THEME,
    window: int = 10,
    out_dir: str | Path | None = None,
    formats: Sequence[str] = ("png", "pdf"),
) -> tuple[list[Path], list[str]]:
    """Draw and save every figure the run's data allow; returns (files written, notes)."""
    figs, notes = make_figures(run, compare, theme, window)
    files = save_figures(figs, out_dir or Path(run) / "plots", formats)
    return files, notes
