"""The reward API: plain functions over typed records that carry the images.

A reward sees one `RewardRecord` per completion (prompt, completion text, the input images, every
dataset field) plus a `RewardContext` (step, phase, and a handle on the current policy for rewards
that must query it, such as Vision-SR1's blind pass or the adversarial round). It returns, per
record, a float, a dict of named sub-scores (all logged; the reward's value is `score` when that key
is present, else the sum), or `None` to skip the sample. Three shapes are accepted:

- per-sample:  `fn(record, ctx, **kwargs) -> float | dict | None`
- batched:     `fn(records, ctx, **kwargs) -> list[...]` (register with `batched=True`); the list
  holds whole groups in order (`record.group`, `record.index`), so group-aware rewards are batched ones.
- async:       either shape as `async def`; awaited, so remote calls can run concurrently.

A reward that raises does not stop the run: a per-sample failure skips that sample, a batched
failure skips the batch; both are counted in `reward/<name>/failed`. The exceptions are the
user's setup (`ConfigError`, `ModelLoadError`) and a remote service given up (`ServiceError`, see
`vlmgrpo.http`): those stop the run with their one line.

A spec's `timeout_s` (default: the bound the reward declares, e.g. 10 s for the geometry graders;
0 = none) runs each call in a worker process that is killed past it (`rewards/deadline.py`): a
call that runs out of time is a failure like any other (skipped, counted, its sample id logged).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmgrpo.errors import ConfigError, ModelLoadError, ServiceError
from vlmgrpo.registry import Registry
from vlmgrpo.rewards import deadline

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

RewardValue = float | dict[str, float] | None


@dataclass
class RewardRecord:
    """One completion to score. `extras` is where a reward leaves artifacts (e.g. a regenerated
    image under `extras["regenerated"]`) for the step artifacts and the report."""

    prompt: str  # the user prompt text (template filled in, no chat markup)
    completion: str  # decoded completion, special tokens stripped, prefill included
    images: list[Image.Image]  # the images the policy saw, after resizing
    sample: dict[str, Any]  # every dataset field: id, answer, choices, inst_category, ...
    group: int = 0  # which prompt of the step this completion belongs to
    index: int = 0  # position inside its group
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardContext:
    """What a reward may know besides its record."""

    step: int = 0
    phase: str = "train"  # "train" | "eval"
    # policy.generate(list_of_messages, list_of_image_lists, **sampling) -> list[str]; None when the
    # caller has no policy (e.g. offline grading).
    policy: Any = None
    seed: int = 0


@dataclass
class RewardFn:
    fn: Callable[..., Any]
    batched: bool = False


REWARDS: Registry[RewardFn] = Registry("reward")


def batched(fn: Callable) -> Callable:
    """Mark a reward function as batched (it receives the list of records)."""
    fn.batched = True  # type: ignore[attr-defined]
    return fn


def register_reward(name: str, batched: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: `@register_reward("format")` on `fn(record, ctx, **kw)`."""

    def deco(fn: Callable) -> Callable:
        REWARDS.register(name, RewardFn(fn, batched))
        return fn

    return deco


def resolve_reward(name: str) -> RewardFn:
    """A registered name, or "path/to/file.py:fn" / "pkg.mod:fn" (batched if it says so:
    a function attribute `batched = True`)."""
    entry = REWARDS.get(name)
    if isinstance(entry, RewardFn):
        return entry
    return RewardFn(entry, batched=bool(getattr(entry, "batched", False)))


def _run(result: Any) -> Any:
    if inspect.isawaitable(result):
        return asyncio.run(_await(result))
    return result


async def _await(x: Any) -> Any:
    return await x


def _total(value: RewardValue) -> float | None:
    if value is None:
        return None
    if isinstance(value, dict):
        total = value["score"] if "score" in value else sum(value.values())
        return float(total)
    return float(value)


@dataclass
class RewardResult:
    """Scores of one batch. `total` is [N] with NaN where a sample is skipped."""

    total: np.ndarray  # [N] weighted sum over rewards, NaN = skip
    per_reward: dict[str, np.ndarray]  # name -> [N] unweighted value, NaN = skipped/failed
    sub_scores: dict[str, np.ndarray]  # "name/sub" -> [N]
    failed: dict[str, int]  # name -> samples whose reward raised

    @classmethod
    def concat(cls, results: list[RewardResult]) -> RewardResult:
        """The results of consecutive parts of one batch as one (sub-scores missing from a part
        are NaN for its samples)."""
        if len(results) == 1:
            return results[0]
        return cls(
            total=np.concatenate([r.total for r in results]),
            per_reward={k: np.concatenate([r.per_reward[k] for r in results]) for k in results[0].per_reward},
            sub_scores={
                k: np.concatenate([r.sub_scores.get(k, np.full(len(r.total), np.nan)) for r in results])
                for k in sorted({k for r in results for k in r.sub_scores})
            },
            failed={k: sum(r.failed[k] for r in results) for k in results[0].failed},
        )

    def metrics(self, prefix: str = "reward") -> dict[str, float]:
        """Training: reward/mean, reward/<name>/mean, ...; eval ("eval"): eval/reward/mean,
        eval/<name>/mean, eval/<name>/<sub>/mean, ..."""
        total_key = prefix if prefix == "reward" else f"{prefix}/reward"
        out: dict[str, float] = {}
        valid = ~np.isnan(self.total)
        out[f"{total_key}/mean"] = float(self.total[valid].mean()) if valid.any() else math.nan
        out[f"{total_key}/std"] = float(self.total[valid].std()) if valid.any() else math.nan
        out[f"{total_key}/skipped"] = float((~valid).sum())
        for name, vals in {**self.per_reward, **self.sub_scores}.items():
            ok = ~np.isnan(vals)
            out[f"{prefix}/{name}/mean"] = float(vals[ok].mean()) if ok.any() else math.nan
        for name, n in self.failed.items():
            out[f"{prefix}/{name}/failed"] = float(n)
        return out


@dataclass
class RewardSpec:
    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # metric name; defaults to name (a file path's function name)
    # seconds per call, run in a worker process that is killed past it (rewards/deadline.py);
    # None = the reward's own default (the pure graders declare one), 0 = in-process, no bound
    timeout_s: float | None = None

    @property
    def key(self) -> str:
        return self.label or self.name.rpartition(":")[2]


def compute_rewards(
    records: Sequence[RewardRecord], specs: Sequence[RewardSpec], ctx: RewardContext
) -> RewardResult:
    """Score every record with every reward; see the module docstring for the contract."""
    n = len(records)
    total = np.zeros(n)
    per_reward: dict[str, np.ndarray] = {}
    sub_scores: dict[str, np.ndarray] = {}
    failed: dict[str, int] = {}
    for spec in specs:
        rf = resolve_reward(spec.name)
        bound = deadline.default_timeout(rf.fn) if spec.timeout_s is None else spec.timeout_s
        fn = deadline.bounded_reward(spec.name, rf.batched, bound) if bound > 0 else rf.fn
        values: list[RewardValue] = [None] * n
        n_failed = 0
        if rf.batched:
            try:
                values = list(_run(fn(list(records), ctx, **spec.kwargs)))
                if len(values) != n:
                    raise ValueError(f"returned {len(values)} values for {n} records")
            except (ConfigError, ModelLoadError, ServiceError):
                # the user's setup is wrong (missing token, weights) or a service is given up
                # (down past its max_down_s): say so and stop, do not skip step after step
                raise
            except Exception as e:  # a reward bug or a dead service must not kill the run
                log.warning("reward %s failed on a batch of %d: %s", spec.key, n, e)
                values, n_failed = [None] * n, n
        else:
            for i, rec in enumerate(records):
                try:
                    values[i] = _run(fn(rec, ctx, **spec.kwargs))
                except (ConfigError, ModelLoadError, ServiceError):
                    raise
                except Exception as e:
                    log.warning("reward %s failed on sample %s: %s", spec.key, rec.sample.get("id", i), e)
                    n_failed += 1
        vals = np.array([_total(v) if _total(v) is not None else np.nan for v in values], dtype=float)
        for i, v in enumerate(values):
            if isinstance(v, dict):
                for sub, s in v.items():
                    if sub == "score":
                        continue
                    arr = sub_scores.setdefault(f"{spec.key}/{sub}", np.full(n, np.nan))
                    arr[i] = float(s)
        per_reward[spec.key] = vals
        failed[spec.key] = n_failed
        total = total + spec.weight * vals  # NaN propagates: a skipped sample stays skipped
    return RewardResult(total, per_reward, sub_scores, failed)
