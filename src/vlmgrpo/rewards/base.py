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

A spec's `timeout_s` (default: the bound the reward declares, e.g. 10 s for the geometry graders;
0 = none) runs each call in a worker process that is killed past it (`rewards/deadline.py`): a
call that runs out of time is a failure like any other (skipped, counted, its sample id logged).
There each call is also bounded in memory (`max_memory_gb`, default 8 GiB of RLIMIT_DATA): a
call that allocates past it is stopped and counted the same way, and the trainer's host keeps
its memory.

A reward that raises (or returns NaN) on some samples does not stop the run: those samples are
skipped, counted in `reward/<name>/failed`, and summarised in one warning per step with the first
exception. A reward that fails on every sample of a batch, or returns something that is not a
number, a dict of numbers or None, is a bug (a misspelled kwarg, a wrong return type): the run stops
with one line naming the reward (`rewards[i]` and its function) and the first bad value or
exception. Time-outs (`TimeoutError`, e.g. a call past its time bound) and calls past their
memory bound are not bugs: even on every sample they are skipped and counted, never a stop. The user's setup (`ConfigError`,
`ModelLoadError`) and a remote service given up (`ServiceError`, see `vlmgrpo.http`) stop the run
with their own one line.
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

from vlmgrpo.errors import ConfigError, ModelLoadError, ServiceError, VlmgrpoError, first_line
from vlmgrpo.numeric import as_number
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

    step: int = 0  # GRPO steps done: a "train" call is part of metrics.jsonl's step `step + 1`
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


# failures that are not bugs: a call past its time bound (any TimeoutError) or its memory bound
STOPPED = (TimeoutError, deadline.MemoryLimitExceeded)


class RewardError(VlmgrpoError):
    """A reward function is broken (wrong return type, or it fails on every sample)."""


def _checked(value: Any) -> RewardValue:
    """A reward's return value as a float / dict of floats / None; TypeError for anything else."""
    if value is None:
        return None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            x = as_number(v)
            if x is None:
                raise TypeError(f"returned a dict whose {k!r} is {type(v).__name__} {_short(v)}")
            out[str(k)] = x
        return out
    x = as_number(value)
    if x is None:
        raise TypeError(f"returned {type(value).__name__} {_short(value)}")
    return x


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


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
    failed: dict[str, int]  # name -> samples whose reward raised or returned NaN
    errors: dict[str, str] = field(default_factory=dict)  # name -> the first failure, in words

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
            errors={k: v for r in reversed(results) for k, v in r.errors.items()},
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
    # GiB of data per call in that worker (RLIMIT_DATA); None = deadline.DEFAULT_MEMORY_GB, 0 = none
    max_memory_gb: float | None = None

    @property
    def key(self) -> str:
        return self.label or self.name.rpartition(":")[2]


def worker_bounds(spec: Any, fn: Callable[..., Any], index: int) -> tuple[float, float]:
    """(seconds, GiB) bounding each call of `spec`'s reward `fn` in a worker; (0, _): in-process.
    A memory bound asked of a reward that runs in-process is one ConfigError line, not ignored."""
    bound = deadline.default_timeout(fn) if spec.timeout_s is None else float(spec.timeout_s)
    memory = getattr(spec, "max_memory_gb", None)
    if memory and bound <= 0:
        raise ConfigError(
            f"rewards[{index}].max_memory_gb: {spec.name} runs in the trainer's process (timeout_s "
            f"{'0' if spec.timeout_s is not None else 'not set, and it declares none'}), where no "
            "memory bound applies; give it a timeout_s > 0 to run it in a worker, or remove max_memory_gb"
        )
    return bound, deadline.DEFAULT_MEMORY_GB if memory is None else float(memory)


def _who(spec: RewardSpec, index: int) -> str:
    """How a failure names the reward: its place in the recipe and its function."""
    label = f", logged as {spec.key}" if spec.key != spec.name.rpartition(":")[2] else ""
    return f"reward rewards[{index}] ({spec.name}{label})"


def _sample_name(rec: RewardRecord, i: int) -> str:
    sid = rec.sample.get("id") if isinstance(rec.sample, dict) else None
    return f"sample {i}" + (f" (id {sid})" if sid not in (None, "") else "")


def step_label(ctx: RewardContext) -> str:
    """The step a reward call belongs to as metrics.jsonl numbers it: "step 1 (train)" for the first
    training step (ctx.step counts the steps done before it), "step 0 (eval)" before any."""
    return f"step {ctx.step + 1 if ctx.phase == 'train' else ctx.step} ({ctx.phase})"


def log_failures(result: RewardResult, specs: Sequence[RewardSpec], ctx: RewardContext) -> None:
    """One warning per reward that failed on some samples: how many, and the first failure."""
    n = len(result.total)
    for index, spec in enumerate(specs):
        k = result.failed.get(spec.key, 0)
        if k:
            log.warning(
                "%s: %s failed on %d of %d samples, skipped; first: %s",
                step_label(ctx), _who(spec, index), k, n, result.errors.get(spec.key, "?"),
            )  # fmt: skip


def compute_rewards(
    records: Sequence[RewardRecord],
    specs: Sequence[RewardSpec],
    ctx: RewardContext,
    warn: bool = True,
) -> RewardResult:
    """Score every record with every reward; see the module docstring for the contract. `warn`:
    log the failures summary here (False: the caller logs it once for several calls)."""
    n = len(records)
    total = np.zeros(n)
    per_reward: dict[str, np.ndarray] = {}
    sub_scores: dict[str, np.ndarray] = {}
    failed: dict[str, int] = {}
    errors: dict[str, str] = {}
    for index, spec in enumerate(specs):
        rf = resolve_reward(spec.name)
        bound, memory = worker_bounds(spec, rf.fn, index)
        fn = deadline.bounded_reward(spec.name, rf.batched, bound, memory) if bound > 0 else rf.fn
        raw: list[Any] = [None] * n
        ok = [True] * n
        first_error = ""
        timeouts = 0  # failures stopped by a bound (time or memory): slow or big, not broken
        if rf.batched:
            try:
                raw = list(_run(fn(list(records), ctx, **spec.kwargs)))
            except (ConfigError, ModelLoadError, ServiceError):
                # the user's setup is wrong (missing token, weights) or a service is given up
                # (down past its max_down_s): say so and stop, do not skip step after step
                raise
            except Exception as e:  # counted below: the whole batch failed
                raw, ok, first_error = [None] * n, [False] * n, first_line(e, 400)  # room for TRL's hint
                timeouts = n if isinstance(e, STOPPED) else 0
            if len(raw) != n:
                raise RewardError(f"{_who(spec, index)}: returned {len(raw)} values for {n} records")
        else:
            for i, rec in enumerate(records):
                try:
                    raw[i] = _run(fn(rec, ctx, **spec.kwargs))
                except (ConfigError, ModelLoadError, ServiceError):
                    raise
                except Exception as e:
                    ok[i] = False
                    timeouts += isinstance(e, STOPPED)
                    first_error = first_error or f"{first_line(e)} on {_sample_name(rec, i)}"
        values: list[RewardValue] = [None] * n
        vals = np.full(n, np.nan)  # [N] each value's total (NaN = skipped or failed)
        for i, v in enumerate(raw):
            if not ok[i]:
                continue
            try:
                values[i] = _checked(v)
            except TypeError as e:  # a bug in the reward, the same on every step: stop now
                raise RewardError(
                    f"{_who(spec, index)}: {e} for {_sample_name(records[i], i)}; a reward returns a "
                    "number, a dict of numbers or None (skip)"
                ) from None
            t = _total(values[i])
            if t is not None and math.isnan(t):
                ok[i], values[i] = False, None
                first_error = first_error or f"returned nan on {_sample_name(records[i], i)}"
            elif t is not None:
                vals[i] = t
        n_failed = ok.count(False)
        if n and n_failed == n and timeouts < n:  # time-outs aside, it failed on every sample
            raise RewardError(
                f"{_who(spec, index)} failed on all {n} samples of {step_label(ctx)}; first: {first_error}"
            )
        if n_failed:
            errors[spec.key] = first_error
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
    result = RewardResult(total, per_reward, sub_scores, failed, errors)
    if warn:
        log_failures(result, specs, ctx)
    return result
