"""The GRPO-variant stages of one training step, as functions of explicit arguments.

`Trainer.train_step` (vlmgrpo.trainer) calls these in order: `zero_std_frac` (diagnostic),
`dynamic_sampling` (DAPO), `completion_lengths`, `step_advantages`, `mean_updates`
(grpo.num_iterations), `step_metrics`. Each takes the config, the rank's `DistInfo` and device
where it needs them; none holds state. The tensor algebra itself lives in `vlmgrpo.grpo.core`;
here it is applied to a step's micro-batches ("parts") and summed over ranks (`dist.all_sum`).
docs/algorithms.md names every option and its paper.

Shapes: a step holds parts (grad_accum micro-batches of this rank's prompts); each part's
`RewardResult.total` is [rows] with rows = prompts x group_size, groups consecutive.

Non-goals: no model calls (rollouts and scoring come in through `dynamic_sampling`'s `more`), no
optimizer steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from vlmgrpo import dist
from vlmgrpo.config import Config
from vlmgrpo.errors import ServiceError
from vlmgrpo.grpo.core import (
    batch_reward_std,
    group_advantages,
    overlong_penalty,
    truncated_rows,
    zero_std_groups,
)
from vlmgrpo.rewards import RewardRecord, RewardResult
from vlmgrpo.rollout import RolloutBatch
from vlmgrpo.rollout import hf as hf_rollout

log = logging.getLogger("vlmgrpo.trainer")  # the trainer's logger: these warnings are the step's

# a step's parts: rollouts, their scores, their records (one list entry per part)
Parts = tuple[list[RolloutBatch], list[RewardResult], list[list[RewardRecord]]]


class PeerServiceError(ServiceError):
    """Raised on the ranks whose rewards went fine when another rank's service was given up."""


def share_failure(err: ServiceError, info: dist.DistInfo, device: torch.device) -> ServiceError:
    """Under torchrun, bring every rank into the abandoned step's shutdown. A rank whose own
    reward service failed joins the all-reduce the other ranks wait in after the rewards (in
    train_step, `dynamic_sampling`) with failed = 1, instead of leaving them in it until the
    launcher's timeout; they raise `PeerServiceError` there. Then every rank gets the first
    failing rank's line."""
    if not isinstance(err, PeerServiceError):
        dist.all_sum([0.0, 0.0, 1.0], info, device)
    own = None if isinstance(err, PeerServiceError) else str(err)
    for rank, msg in enumerate(dist.gather_objects(own, info)):
        if msg is not None:
            return err if rank == info.rank else ServiceError(f"rank {rank}: {msg}")
    return err


def zero_std_frac(
    results: list[RewardResult], group_size: int, info: dist.DistInfo, device: torch.device
) -> dict[str, float]:
    """groups/zero_std_frac: share of the step's sampled groups (all ranks) whose rewards are all
    equal, so their advantages are 0 (too easy or too hard for the policy)."""
    flat = [zero_std_groups(torch.tensor(res.total, dtype=torch.float32), group_size) for res in results]
    z = torch.cat(flat)
    n_zero, n = dist.all_sum([float(z.sum()), float(z.numel())], info, device)
    return {"groups/zero_std_frac": n_zero / max(n, 1.0)}


def dynamic_sampling(
    batches: list[RolloutBatch],
    results: list[RewardResult],
    records: list[list[RewardRecord]],
    more: Callable[[int], Parts],
    *,
    cfg: Config,
    info: dist.DistInfo,
    device: torch.device,
    proc: Any,
    step: int,
    metrics: dict[str, float],
    scored: list[RewardResult] | None = None,
) -> Parts:
    """DAPO dynamic sampling (grpo.dynamic_sampling): keep the groups whose rewards differ and roll
    out further rounds of prompts (`more(round)`, round = 1, 2, ...: the round's rolled-out and
    scored parts) until every rank has its share of groups, at most
    grpo.dynamic_max_extra_rollouts extra rounds. When the bound is hit the step trains on the
    groups it has (dynamic/bound_hit = 1, a warning); a rank left with none trains on one
    zero-advantage group so that it joins the update's collectives. Groups are filtered on the
    rewards as scored (before grpo.overlong_buffer's penalty), like DAPO's accuracy filter.

    Every rank runs the same number of rounds; the loop's all-reduce has the 3-float shape of
    train_step's first one, so a rank whose reward service fails in an extra round still meets
    the others (`share_failure`). Writes dynamic/* into `metrics`; `scored` (a list) receives every
    round's results, dropped groups included: the step's reward/* describe what the policy
    sampled, not only the groups it trains on (those: dynamic/kept_reward_mean)."""
    g, per = cfg.rollout.group_size, cfg.rollout.prompts_per_step // info.world
    target = per * cfg.optim.grad_accum  # groups per rank
    kept: list[tuple[RolloutBatch, RewardResult, list[RewardRecord]]] = []
    failed: dict[str, int] = {}

    def keep(bs: list[RolloutBatch], rs: list[RewardResult], recs: list[list[RewardRecord]]) -> None:
        if scored is not None:
            scored.extend(rs)
        for b, res, rec in zip(bs, rs, recs):
            for k, v in res.failed.items():
                failed[k] = failed.get(k, 0) + v
            flat = zero_std_groups(torch.tensor(res.total, dtype=torch.float32), g)
            for gi in (~flat).nonzero().flatten().tolist():
                rows = list(range(gi * g, (gi + 1) * g))
                kept.append((b.select(rows), select_result(res, rows), rec[gi * g : (gi + 1) * g]))

    keep(batches, results, records)
    rounds = 0
    while True:
        short, _, n_failed = dist.all_sum([float(max(0, target - len(kept))), 0.0, 0.0], info, device)
        if n_failed:
            raise PeerServiceError(f"a reward service was given up on {n_failed:.0f} other rank(s)")
        if short == 0 or rounds >= cfg.grpo.dynamic_max_extra_rollouts:
            break
        rounds += 1
        keep(*more(rounds))
    if short > 0:
        log.warning(
            "step %d: dynamic sampling stopped at grpo.dynamic_max_extra_rollouts = %d with %d groups "
            "short of a full batch; training on the groups it has",
            step,
            cfg.grpo.dynamic_max_extra_rollouts,
            int(short),
        )
    n_kept = dist.all_sum([float(min(len(kept), target))], info, device)[0]
    if not kept:
        kept.append(
            (
                batches[0].select(list(range(g))),
                select_result(results[0], list(range(g))),
                records[0][:g],
            )
        )
    kept = kept[:target]
    out_b, out_r, out_rec = [], [], []
    for i in range(0, len(kept), per):  # parts of `per` groups, as a step without filtering has
        part = kept[i : i + per]
        out_b.append(hf_rollout.concat([p[0] for p in part], proc) if len(part) > 1 else part[0][0])
        out_r.append(RewardResult.concat([p[1] for p in part]))
        out_rec.append([r for p in part for r in p[2]])
    out_r[0] = RewardResult(out_r[0].total, out_r[0].per_reward, out_r[0].sub_scores, failed)
    metrics["dynamic/rollouts"] = float(1 + rounds)
    metrics["dynamic/bound_hit"] = float(short > 0)
    metrics["dynamic/kept_groups_frac"] = n_kept / (target * info.world)
    tot = torch.cat([torch.as_tensor(r.total, dtype=torch.float64) for r in out_r])
    ok = ~torch.isnan(tot)
    s_k, n_k = dist.all_sum([float(tot[ok].sum()), float(ok.sum())], info, device)
    metrics["dynamic/kept_reward_mean"] = s_k / n_k if n_k else float("nan")
    return out_b, out_r, out_rec


def completion_lengths(
    batches: list[RolloutBatch], eos: Any, max_new_tokens: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per batch: completion lengths [rows] (tokens that count) and truncated flags [rows] bool
    (cut at max_new_tokens without an EOS; `truncated_rows`). `eos`: `hf_rollout.eos_ids`."""
    lens = [b.completion_mask.sum(1) for b in batches]
    trunc = [truncated_rows(b.completion_ids, b.completion_mask, eos) for b in batches]
    # a completion shorter than max_new_tokens stopped on its own even when the batch was trimmed
    trunc = [t & (n >= max_new_tokens).to(t.device) for t, n in zip(trunc, lens)]
    return lens, trunc


def step_advantages(
    results: list[RewardResult],
    lens: list[torch.Tensor],
    cfg: Config,
    info: dist.DistInfo,
    device: torch.device,
    metrics: dict[str, float],
) -> list[torch.Tensor]:
    """Group advantages [rows] of every part of the step. grpo.overlong_buffer adds DAPO's soft
    overlong penalty to the rewards first (reward/overlong_penalty/* into `metrics`); adv_scale
    "batch" divides by one std over the step's whole generation batch (every part, every rank: two
    small all-reduces), not a std per part."""
    gr = cfg.grpo
    rewards = [torch.tensor(res.total, dtype=torch.float32) for res in results]
    if gr.overlong_buffer:
        pens = [
            overlong_penalty(
                n.float().cpu(), cfg.rollout.max_new_tokens, gr.overlong_buffer, gr.overlong_factor
            )
            for n in lens
        ]
        rewards = [r + p for r, p in zip(rewards, pens)]
        pen = torch.cat(pens)
        s, c, hit = dist.all_sum([float(pen.sum()), float(pen.numel()), float((pen < 0).sum())], info, device)
        metrics["reward/overlong_penalty/mean"] = s / max(c, 1.0)
        metrics["reward/overlong_penalty/frac"] = hit / max(c, 1.0)
    batch_std = None
    if gr.adv_scale == "batch":
        flat = torch.cat(rewards).double()
        flat = flat[~torch.isnan(flat)]
        count, total = dist.all_sum([float(flat.numel()), float(flat.sum())], info, device)
        mean = total / max(count, 1.0)
        sq = dist.all_sum([float((flat - mean).pow(2).sum())], info, device)[0]
        batch_std = batch_reward_std(count, sq, gr.adv_unbiased)
    return [
        group_advantages(
            r,
            cfg.rollout.group_size,
            scale=gr.adv_scale,
            eps=gr.adv_eps,
            unbiased=gr.adv_unbiased,
            valid=~torch.isnan(r),
            batch_std=batch_std,
        )
        for r in rewards
    ]


def step_metrics(gathered: list[tuple[Any, Any, Any, Any]]) -> tuple[dict[str, float], float]:
    """reward/* and completion/* over the whole step, and its count of completion tokens, from
    every rank's (results, lengths, completions, truncated flags) as `dist.gather_objects` gives them."""
    merged = RewardResult.concat([r for part in gathered for r in part[0]])
    metrics = merged.metrics("reward")
    lens = torch.cat([x for part in gathered for x in part[1]])
    metrics["completion/len_mean"] = float(lens.mean())
    metrics["completion/len_min"] = float(lens.min())
    metrics["completion/len_max"] = float(lens.max())
    metrics["completion/truncated_frac"] = float(
        torch.cat([t for part in gathered for t in part[3]]).float().mean()
    )
    metrics["completion/distinct"] = float(len({c for part in gathered for c in part[2]}))
    return metrics, float(lens.sum())


def select_result(res: RewardResult, rows: list[int]) -> RewardResult:
    """The scores of some rows of a batch (their failure counts are not per row: 0 here)."""
    return RewardResult(
        total=res.total[rows],
        per_reward={k: v[rows] for k, v in res.per_reward.items()},
        sub_scores={k: v[rows] for k, v in res.sub_scores.items()},
        failed=dict.fromkeys(res.failed, 0),
    )


def mean_updates(rows: list[dict[str, float]]) -> dict[str, float]:
    """The metrics of grpo.num_iterations updates of one step as one row: the mean of each key over
    the updates that logged it, "lr" the first update's rate; a non-finite update logs neither lr
    nor grad_norm, so "update/skipped_nonfinite" is the share of skipped updates (1.0 = all)."""
    out: dict[str, float] = {}
    for k in dict.fromkeys(k for r in rows for k in r):
        vals = [r[k] for r in rows if k in r]
        out[k] = vals[0] if k == "lr" else sum(vals) / len(vals)
    if "update/skipped_nonfinite" in out:
        out["update/skipped_nonfinite"] = sum(r.get("update/skipped_nonfinite", 0.0) for r in rows) / len(
            rows
        )
    out["update/iterations"] = float(len(rows))
    return out


def skipped(metrics: dict[str, Any]) -> bool:
    """Whether this step's update was skipped (too few rewards, or every update's loss non-finite)."""
    return bool(metrics.get("update/skipped_rewards")) or metrics.get("update/skipped_nonfinite", 0.0) >= 1.0


def finite(value: Any, default: float | None) -> float | None:
    """`value` as a float when it is a finite number, else `default` (the progress bar's values)."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else default
