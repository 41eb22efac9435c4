"""Reward-graded checkpoint evaluation: the run's own rewards on its eval set (`rewards`, `img2code`).

`reward_task(model, proc, ctx)` samples `ctx.opts.num_samples` completions per item with the run's
prompt and eval settings, scores them with the recipe's rewards; `score` = mean total reward, and
every eval metric the trainer would log is kept under `metrics`. `img2code_task` adds
`vlmgrpo.rewards.img2code.summarize` (execution rate, similarity, error classes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from vlmgrpo.registry import import_from_path


def reward_task(model: Any, proc: Any, ctx: Any, summarize: str = "") -> dict[str, Any]:
    """The run's own rewards on its eval set with the eval settings; `score` = mean total reward.
    `summarize` ("module:function", `fn(records, result: RewardResult) -> dict`) adds task-specific
    numbers."""
    from vlmgrpo.rewards import RewardContext, RewardRecord, RewardSpec, compute_rewards
    from vlmgrpo.sampling import build_prompt

    cfg, o = ctx.cfg, ctx.opts
    items = ctx.samples()
    prompts = [build_prompt(s, cfg) for s in items]
    completions = ctx.generate(model, proc, prompts, o.num_samples)
    records = [
        RewardRecord(prompt=p.text, completion=c, images=p.images, sample=s, group=i, index=j)
        for i, (s, p, comps) in enumerate(zip(items, prompts, completions))
        for j, c in enumerate(comps)
    ]
    specs = [RewardSpec(r.name, r.weight, r.kwargs, r.label, r.timeout_s) for r in cfg.rewards]
    res = compute_rewards(records, specs, RewardContext(step=ctx.step, phase="eval", seed=o.seed))
    metrics = {k: _num(v) for k, v in res.metrics("eval").items()}
    out: dict[str, Any] = {"score": metrics.get("eval/reward/mean"), "metrics": metrics}
    if summarize:
        out.update(import_from_path(summarize)(records, res))
    out["items"] = [
        {"id": str(r.sample.get("id", r.group)), "completion": r.completion, "reward": _num(res.total[k])}
        for k, r in enumerate(records)
    ]
    return out


def img2code_summary(records: Sequence[Any], res: Any) -> dict[str, Any]:
    """`vlmgrpo.rewards.img2code.summarize` (execution rate, similarity, error classes) over the
    img2code reward's per-sample dicts, rebuilt from the reward result (None = the sample failed)."""
    from vlmgrpo.rewards.img2code import summarize

    label = next((k for k in res.per_reward if k == "img2code"), next(iter(res.per_reward), None))
    if label is None:
        return {}
    subs = {k.split("/", 1)[1]: v for k, v in res.sub_scores.items() if k.startswith(f"{label}/")}
    rows: list[dict[str, float] | None] = []
    for k in range(len(records)):
        score = float(res.per_reward[label][k])
        if math.isnan(score):
            rows.append(None)
            continue
        rows.append({"score": score} | {name: float(v[k]) for name, v in subs.items()})
    summary = summarize(rows)
    summary.pop("score", None)  # `score` stays the mean total reward, as in every reward task
    return {k: _num(v) for k, v in summary.items()}


def img2code_task(model: Any, proc: Any, ctx: Any) -> dict[str, Any]:
    """img2code: the run's rewards plus the img2code summary (execution rate, similarity, ...)."""
    return reward_task(model, proc, ctx, summarize="vlmgrpo.tasks.reward_eval:img2code_summary")


def _num(x: Any) -> float | None:
    """A finite float, or None (NaN and infinities do not belong in strict JSON)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
