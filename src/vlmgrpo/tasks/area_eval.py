"""Shape-area evaluation: errors, format rates and the seed's reward components on a fixed set.

`evaluate_area(results)` summarises graded completions; `results` is an iterable of
`RewardRecord`s or of dicts with `completion` and either `sample` (a dataset row) or `answer` (the
true area; `shape` optional). It returns (rates and means are None, not NaN, when undefined, so the
dict dumps as strict JSON):

- n; answered_rate: share with a parsable `<answer>X.XX</answer>`;
- mae, median_ae, mre (mean |pred - gt| / gt), within_5pct / within_10pct: over answered items;
- area_format_rate, xml_format_rate: the seed's all-or-nothing format checks;
- reward/area_correctness, reward/area_format, reward/xml_format, reward/total: the seed's rewards
  (strict, whatever `partial` a training recipe used), so numbers compare across recipes;
- score: reward/total (what `vlmgrpo eval` prints); by_shape: n, answered_rate, mae, mre per shape.

`vlmgrpo eval` calls it as a task, `evaluate_area(model, proc, ctx)` with a `TaskContext`: the
completions are then sampled through `ctx.generate` (its temperature, `num_samples` per item) on
`ctx.samples()`, and the result also lists every completion under `items`.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

from vlmgrpo.rewards.area import area_format_score, correctness, parse_area, xml_format_score


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _as_pair(r: Any) -> tuple[str, dict[str, Any]]:
    """(completion, sample) from a RewardRecord or a plain dict."""
    if hasattr(r, "completion") and hasattr(r, "sample"):
        return r.completion, r.sample
    if "sample" in r:
        return r["completion"], r["sample"]
    return r["completion"], {k: v for k, v in r.items() if k != "completion"}


def _errors(rows: list[dict[str, Any]]) -> dict[str, Any]:
    answered = [r for r in rows if r["pred"] is not None]
    abs_err = [abs(r["pred"] - r["gt"]) for r in answered]
    rel_err = [e / r["gt"] for e, r in zip(abs_err, answered) if r["gt"] > 0]
    return {
        "n": len(rows),
        "answered_rate": len(answered) / len(rows) if rows else None,
        "mae": _mean(abs_err),
        "mre": _mean(rel_err),
    }


def summarize(results: Iterable[Any]) -> dict[str, Any]:
    """The metrics of the module docstring for completions already sampled."""
    rows = []
    for r in results:
        text, sample = _as_pair(r)
        gt = float(sample["answer"])
        pred = parse_area(text)
        rows.append(
            {
                "gt": gt,
                "pred": pred,
                "shape": str(sample.get("shape", "unknown")),
                "correctness": correctness(pred, gt),
                "area_format": area_format_score(text),
                "xml_format": xml_format_score(text),
            }
        )
    out = _errors(rows)
    answered = [r for r in rows if r["pred"] is not None]
    abs_err = [abs(r["pred"] - r["gt"]) for r in answered]
    rel = [abs(r["pred"] - r["gt"]) / r["gt"] for r in answered if r["gt"] > 0]
    n = len(rows)
    out.update(
        {
            "median_ae": statistics.median(abs_err) if abs_err else None,
            "within_5pct": sum(x <= 0.05 for x in rel) / len(rel) if rel else None,
            "within_10pct": sum(x <= 0.10 for x in rel) / len(rel) if rel else None,
            "area_format_rate": sum(r["area_format"] > 0 for r in rows) / n if n else None,
            "xml_format_rate": sum(r["xml_format"] > 0 for r in rows) / n if n else None,
        }
    )
    for key in ("correctness", "area_format", "xml_format"):
        label = "area_correctness" if key == "correctness" else key
        out[f"reward/{label}"] = _mean([r[key] for r in rows])
    totals = [r["correctness"] + r["area_format"] + r["xml_format"] for r in rows]
    out["reward/total"] = _mean(totals)
    out["score"] = out["reward/total"]
    shapes = sorted({r["shape"] for r in rows})
    out["by_shape"] = {s: _errors([r for r in rows if r["shape"] == s]) for s in shapes}
    return out


def evaluate_area(results: Any, proc: Any = None, ctx: Any = None) -> dict[str, Any]:
    """`evaluate_area(results)`: summarise graded completions. `evaluate_area(model, proc, ctx)`:
    sample completions on the task's items through `ctx` (see the module docstring), then summarise."""
    if ctx is None:
        return summarize(results)
    from vlmgrpo.sampling import build_prompt

    model, cfg, n = results, ctx.cfg, max(1, int(ctx.opts.num_samples))
    items = ctx.samples()
    prompts = [build_prompt(s, cfg) for s in items]
    completions = ctx.generate(model, proc, prompts, n)
    pairs = [{"completion": c, "sample": s} for s, comps in zip(items, completions) for c in comps]
    out = summarize(pairs)
    out["items"] = [
        {
            "id": str(p["sample"].get("id", i)),
            "answer": p["sample"]["answer"],
            "prediction": parse_area(p["completion"]),
            "completion": p["completion"],
        }
        for i, p in enumerate(pairs)
    ]
    return out
