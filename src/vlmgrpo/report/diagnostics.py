"""The diagnostics panel of `vlmgrpo plot`: is a GRPO run healthy? (docs/algorithms.md)

One figure, `diagnostics.png`, a panel per question, from the per-step metrics the trainer logs:
    entropy        loss/entropy: token entropy of the sampled completions (collapse -> near 0)
    groups         groups/zero_std_frac: share of groups whose rewards are all equal (no signal);
                   dynamic/kept_groups_frac when dynamic sampling ran
    lengths        completion/len_mean, len_min, len_max (tokens)
    truncation     completion/truncated_frac, reward/overlong_penalty/frac
    clipping       loss/clip_low_frac, clip_high_frac, clip_frac (region), clip_delta_frac
    KL             loss/kl (when a reference is in the loss)
    rollouts       dynamic/rollouts per step, dynamic/bound_hit
Panels whose metrics a run does not have are left out; no panel at all -> no figure.
"""

from __future__ import annotations

from typing import Any

from vlmgrpo.report.rundata import moving_average

# (title, y label, [(metric key, legend label)])
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("token entropy", "nats", [("loss/entropy", "entropy")]),
    (
        "groups without signal",
        "share",
        [
            ("groups/zero_std_frac", "zero reward std"),
            ("dynamic/kept_groups_frac", "kept (dynamic sampling)"),
        ],
    ),
    (
        "completion length",
        "tokens",
        [("completion/len_mean", "mean"), ("completion/len_min", "min"), ("completion/len_max", "max")],
    ),
    (
        "truncation",
        "share",
        [("completion/truncated_frac", "truncated"), ("reward/overlong_penalty/frac", "overlong-penalised")],
    ),
    (
        "clip fractions",
        "share of tokens",
        [
            ("loss/clip_low_frac", "low"),
            ("loss/clip_high_frac", "high"),
            ("loss/clip_frac", "region"),
            ("loss/clip_delta_frac", "delta"),
        ],
    ),
    ("KL to the reference", "k3 estimate", [("loss/kl", "KL")]),
    (
        "dynamic sampling",
        "rollout rounds",
        [("dynamic/rollouts", "rounds used"), ("dynamic/bound_hit", "bound hit (1 = yes)")],
    ),
]


def _has_data(run: Any, key: str) -> bool:
    x, y = run.series(key)
    if not len(x):
        return False
    # clip fractions and KL are exactly 0 in runs without clipping or reference: nothing to show
    return bool((y != 0).any()) or key in ("groups/zero_std_frac", "completion/truncated_frac")


def diagnostics_figure(run: Any, theme: dict[str, Any], window: int) -> Any | None:
    """The panel figure of one run (anything with `series(key) -> (steps, values)`, such as
    `plots.RunData`), or None when it logged none of the metrics. theme: a `plots.THEMES` entry
    (rc, colors, title). Raw values are drawn faint, a trailing mean over `window` steps on top."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = [(t, y, [(k, lab) for k, lab in keys if _has_data(run, k)]) for t, y, keys in PANELS]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    cols = theme.get("colors") or ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    with matplotlib.rc_context(theme.get("rc", {})):
        fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows + 0.6), dpi=110, layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
        fig.suptitle(theme.get("title", "{}").format("Training diagnostics"), fontsize=13)
        for ax, (title, ylabel, keys) in zip(axes, panels):
            for i, (k, lab) in enumerate(keys):
                x, y = run.series(k)
                c = cols[i % len(cols)]
                marker = "o" if len(x) <= 40 else None
                ax.plot(x, y, color=c, alpha=0.25, lw=1)
                ax.plot(
                    x,
                    moving_average(y, window),
                    color=c,
                    lw=2,
                    label=lab,
                    marker=marker,
                    ms=3,
                )
            ax.set_title(title, fontsize=10)
            # the run's own step name ("round" for adversarial runs), whole steps only (a 2-step
            # run got ticks at 1.2, 1.4, ...), and plain y values (an entropy of 6.7112 +- 1e-4
            # was labelled "+6.711" above ticks of 0.00012)
            ax.set_xlabel(run.step_name() if hasattr(run, "step_name") else "GRPO step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.ticklabel_format(axis="y", useOffset=False)
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7, loc="best")
        for ax in axes[len(panels) :]:
            ax.set_axis_off()
    return fig


def diagnostics_figures(run: Any, theme: dict[str, Any], window: int) -> dict[str, Any]:
    """{"diagnostics": figure} for `plots.make_figures`, {} when the run has none of the metrics."""
    fig = diagnostics_figure(run, theme, window)
    return {} if fig is None else {"diagnostics": fig}
