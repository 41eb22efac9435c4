"""A run's headline figures, the numbers a report leads with, from the run folder alone.

`headline(run)` returns `Figure`s (a label, a value, how it was computed), in this order:
- cycle-style runs (an `eval/<name>/ceiling` control is logged, e.g. the demo): the first GRPO
  evaluation, the mean of the last 3, the ceiling (mean over evaluations), the shuffled control
  (mean of the last 3) and the share of the gap to the ceiling closed, (last - first) / (ceiling -
  first); the same formulas as `vlmgrpo demo`'s summary.json;
- `vlmgrpo demo --task T` runs (a summary.json): the same figures for the task's metric it names
  (accuracy for geometry, never a format reward), from that file;
- otherwise the held-out evaluation of the task's metric (`eval/reward/mean`): first -> mean of the
  last 3 evaluations;
- the training reward: mean of the first -> last tenth of the GRPO steps;
- adversarial runs: the adversary's reward, first -> last fifth of its rounds;
- `vlmgrpo eval`'s headline (pass@1 or the task's score): base model -> last checkpoint, and the best.
Nothing here raises on missing data: a number that cannot be computed is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmgrpo.report.rundata import RunData, headline_key, result_metric


@dataclass
class Figure:
    label: str
    value: str
    detail: str = ""  # how it was computed


def _f(x: float) -> str:
    return f"{x:.3f}"


def _ends(y: np.ndarray, frac: float) -> tuple[float, float, int]:
    """(mean of the first, mean of the last `frac` of the points, points in each)."""
    k = max(1, int(round(len(y) * frac)))
    return float(y[:k].mean()), float(y[-k:].mean()), k


def cycle_summary(run: RunData) -> dict[str, float]:
    """first / last3 / ceiling / shuffled / gap_closed of the run's controlled eval metric ({} if none)."""
    ceilings = run.keys(r"eval/[^/]+/ceiling")
    if not ceilings:
        return {}
    name = ceilings[0].split("/")[1]
    key = f"eval/{name}/mean"
    rows = [r for r in run.grpo if _finite(r.get(key))]
    if not rows:
        return {}

    def mean(k: str, rs: list[dict[str, Any]]) -> float:
        vals = [r[k] for r in rs if _finite(r.get(k))]
        return sum(vals) / len(vals) if vals else math.nan

    from vlmgrpo.commands.demo import gap_closed  # the formula of the demo's summary.json

    first, last3 = rows[0], rows[-3:]
    start, end = first[key], mean(key, last3)
    ceiling, shuffled = mean(f"eval/{name}/ceiling", rows), mean(f"eval/{name}/shuffled", last3)
    gap = gap_closed(start, end, ceiling)
    return {"name": name, "first": start, "first_step": first["step"], "last3": end, "n_last": len(last3),
            "ceiling": ceiling, "shuffled": shuffled, "gap_closed": gap}  # fmt: skip


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def demo_summary(run: RunData) -> dict[str, Any]:
    """`vlmgrpo demo --task T`'s summary.json ({} if none or unreadable): its task metric (accuracy,
    the area score, ...) is what the run measures; the total reward is mostly format rewards."""
    import json

    try:
        s = json.loads((run.path / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(s, dict) and str(s.get("metric", "")).startswith("eval/")
    return s if ok and _finite(s.get("first_grpo_eval")) and _finite(s.get("last3_eval_mean")) else {}


def headline(run: RunData) -> list[Figure]:
    """The run's headline figures (see the module docstring)."""
    out: list[Figure] = []
    cyc = cycle_summary(run)
    if cyc:
        name = cyc["name"]
        if math.isfinite(cyc["gap_closed"]):
            out.append(Figure("gap to the ceiling closed", f"{round(100 * cyc['gap_closed']) + 0:d}%",
                              "(last - first) / (ceiling - first)"))  # fmt: skip
        out.append(Figure(f"held-out {name}, first eval", _f(cyc["first"]), f"GRPO step {cyc['first_step']}"))
        out.append(
            Figure(f"held-out {name}, last evals", _f(cyc["last3"]), f"mean of the last {cyc['n_last']}")
        )
        out.append(Figure("ceiling", _f(cyc["ceiling"]), "true descriptions rendered"))
        if math.isfinite(cyc["shuffled"]):
            out.append(Figure("shuffled control", _f(cyc["shuffled"]), "descriptions of other images"))
    elif demo := demo_summary(run):
        name = demo["metric"].split("/")[1]
        gap, first, last3 = demo.get("gap_closed"), demo["first_grpo_eval"], demo["last3_eval_mean"]
        if _finite(gap):
            out.append(Figure("gap to the ceiling closed", f"{round(100 * gap) + 0:d}%",
                              "(last - first) / (ceiling - first)"))  # fmt: skip
        out.append(Figure(f"held-out {name}, first eval", _f(first), "first GRPO evaluation"))
        out.append(Figure(f"held-out {name}, last evals", _f(last3), "mean of the last 3"))
        if _finite(demo.get("ceiling")):
            out.append(Figure("ceiling", _f(demo["ceiling"]), "the reference answers scored"))
        if _finite(demo.get("shuffled")):
            out.append(Figure("shuffled control", _f(demo["shuffled"]), "references of other items"))
    else:
        x, y = run.series("eval/reward/mean")
        if len(y):
            k = min(3, len(y))
            out.append(
                Figure(f"held-out {run.reward_short()}, first eval", _f(y[0]), f"GRPO step {int(x[0])}")
            )
            if len(y) > 1:
                out.append(Figure(f"held-out {run.reward_short()}, last evals", _f(float(y[-k:].mean())),
                                  f"mean of the last {k}"))  # fmt: skip
    _, y = run.series("reward/mean")
    if len(y) >= 2:
        a, b, k = _ends(y, 0.1)
        out.append(
            Figure(
                "training reward",
                f"{_f(a)} -> {_f(b)}",
                f"mean of the first / last {k} {'rounds' if run.step_name() == 'round' else 'steps'}",
            )
        )
    _, y = run.series("adversary/reward/mean")
    if len(y) >= 2:
        a, b, k = _ends(y, 0.2)
        out.append(Figure("adversary reward", f"{_f(a)} -> {_f(b)}", f"mean of the first / last {k} rounds"))
    key = headline_key(run.results)
    if key:
        rows = [r for r in run.results if isinstance(r.get(key), int | float)]
        metric = result_metric(run.results)
        if len(rows) >= 2:
            best = max(rows, key=lambda r: r[key])
            out.append(Figure(metric, f"{_f(rows[0][key])} -> {_f(rows[-1][key])}",
                              f"{rows[0]['name']} -> {rows[-1]['name']}; best {best['name']} {_f(best[key])}"))  # fmt: skip
        elif rows:
            out.append(Figure(metric, _f(rows[0][key]), rows[0]["name"]))
    return out
