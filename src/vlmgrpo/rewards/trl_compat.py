"""Rewards written for TRL's GRPOTrainer, called the way TRL calls them.

A TRL reward is `f(prompts, completions, completion_ids, **columns) -> list[float | None]` over a
batch: `prompts` as the dataset's `prompt` column holds them (strings, or conversations),
`completions` as strings, or as `[{"role": "assistant", "content": text}]` when the prompts are
conversations, `completion_ids` the sampled token ids, and every other column of the dataset as a
keyword list (images included). `None` means the function cannot score that sample.

Every TRL function of a run is called by one native batched reward, `trl_rewards`, which combines
them as TRL does: total = sum over functions of weight x value, where a `None` counts as absent
(a sample keeps the other functions' rewards; it is skipped only when every TRL function returned
`None`). Each function's raw value is logged as `reward/trl/<function>/mean`. A native reward in
the same run adds to that total with the native rule (its `None` skips the sample). An `async def`
function is awaited; several run concurrently. A function that raises failed on every sample of
the batch: that is a bug (a misspelled column, a wrong type), and the run stops with one line
naming the function and its exception, as TRL's own trainer would and as a native batched reward
does (`vlmgrpo.rewards.base`); a `TimeoutError` counts as `None` on that batch, with a warning (slow,
not broken).

As in TRL, the keyword arguments also hold `trainer_state` (here `global_step` and `max_steps`, in
optimizer steps as TRL counts them: GRPO steps x `num_iterations`),
`log_extra(column, values)` (per-completion values, written beside each completion in the step's
samples.json) and `log_metric(name, value)` (logged as `reward/trl/<name>/mean`).

A reward is recognised as TRL-shaped by its signature: it has a `completions` parameter (native
rewards take a record and a context).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from vlmgrpo.errors import ConfigError, VlmgrpoError
from vlmgrpo.rewards.base import (
    RewardContext,
    RewardRecord,
    RewardSpec,
    batched,
    resolve_reward,
    worker_bounds,
)

log = logging.getLogger(__name__)

ADAPTER = "vlmgrpo.rewards.trl_compat:trl_rewards"
LABEL = "trl"


def is_trl_reward(fn: Any) -> bool:
    """True for a function with TRL's calling convention (a `completions` parameter)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "completions" in params


def func_name(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def trl_spec(funcs: Sequence[tuple[str, Callable, float, dict[str, Any]]]) -> RewardSpec:
    """One native spec calling every `(name, fn, weight, kwargs)` TRL function."""
    names = [n for n, *_ in funcs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"rewards: two TRL reward functions are named '{dup[0]}'; give one a label")
    return RewardSpec(ADAPTER, 1.0, {"funcs": list(funcs)}, LABEL)


def specs_from_entries(
    entries: Sequence[Any], given: Sequence[Callable | None] | None = None
) -> list[RewardSpec]:
    """Native specs from the recipe's `rewards` entries; the TRL-shaped functions among them are
    gathered into one `trl_rewards` spec (placed where the first of them was). `given[i]`: the
    function of entry i when the caller holds it already (the Python API's callables, whose
    `module:name` entry only records them); None or absent: resolved from the entry's name."""
    specs: list[RewardSpec] = []
    funcs: list[tuple[str, Callable, float, dict[str, Any]]] = []
    at = -1
    for i, e in enumerate(entries):
        held = given[i] if given is not None else None
        try:
            fn = held if held is not None else resolve_reward(e.name).fn
        except ConfigError as err:  # an unknown name, a file that is not there or will not import
            raise ConfigError(f"rewards[{i}].name: {err}") from None
        if is_trl_reward(fn):
            for key in ("timeout_s", "max_memory_gb"):
                if getattr(e, key, None):  # never silently unbounded
                    raise ConfigError(
                        f"rewards[{i}].{key}: {e.name} has TRL's signature; TRL rewards run together "
                        f"in the trainer's process, where no per-call bound applies (remove {key} and "
                        "bound the function's own slow calls, e.g. its HTTP timeouts)"
                    )
            if at < 0:
                at = len(specs)
            funcs.append((e.label or func_name(fn), fn, e.weight, dict(e.kwargs)))
        else:  # every field the entry and the spec share (name, weight, kwargs, label, ...)
            shared = {f.name for f in fields(RewardSpec)} & {f.name for f in fields(e)}
            specs.append(RewardSpec(**{k: getattr(e, k) for k in shared}))
            worker_bounds(specs[-1], fn, i)  # a bound that cannot apply: an error now, not at step 1
    if funcs:
        specs.insert(at, trl_spec(funcs))
    return specs


def _prompt_of(rec: RewardRecord) -> Any:
    """The sample's prompt as the dataset holds it (TRL passes the column), else the user text."""
    return rec.sample.get("prompt", rec.prompt)


def call_arguments(records: Sequence[RewardRecord]) -> dict[str, Any]:
    """The keyword arguments TRL passes: prompts, completions, completion_ids and every column."""
    prompts = [_prompt_of(r) for r in records]
    chat = bool(prompts) and isinstance(prompts[0], list)
    completions: list[Any] = [
        [{"role": "assistant", "content": r.completion}] if chat else r.completion for r in records
    ]
    columns = [k for k in (records[0].sample if records else {}) if k != "prompt" and not k.startswith("_")]
    out: dict[str, Any] = {
        "prompts": prompts,
        "completions": completions,
        "completion_ids": [r.extras.get("completion_ids", []) for r in records],
    }
    for k in columns:
        out[k] = [r.sample.get(k) for r in records]
    return out


@dataclass
class TrainerStateView:
    """What TRL's `trainer_state` offers the rewards that shape themselves by progress, in TRL's
    units: optimizer steps, so GRPO steps (rollouts) x grpo.num_iterations."""

    global_step: int = 0  # optimizer steps done before this rollout
    max_steps: int = 0  # optimizer steps of the whole run (TRL's max_steps)


def _trainer_state(ctx: RewardContext) -> TrainerStateView:
    cfg = getattr(ctx.policy, "cfg", None)
    if cfg is None:
        return TrainerStateView(global_step=ctx.step)
    mu = cfg.grpo.num_iterations
    return TrainerStateView(global_step=ctx.step * mu, max_steps=cfg.train.steps * mu)


async def _gather(calls: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    results = await asyncio.gather(*(c for _, c in calls), return_exceptions=True)
    return [(i, r) for (i, _), r in zip(calls, results)]


def arguments_hint(args: dict[str, Any]) -> str:
    """What a TRL function was given, for its TypeError: the usual causes are indexing
    `c[0]["content"]` into completions that are strings (string prompts), or a column the dataset
    lacks."""
    skip = {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric"}
    names = [k for k in args if k not in skip]
    columns = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "") if names else "none"
    comps = args.get("completions") or [""]
    kind = (
        "strings (string prompts; a conversation prompt gives [{'role', 'content'}] lists, as in TRL)"
        if isinstance(comps[0], str)
        else "[{'role', 'content'}] lists"
    )
    return f"; completions are {kind}; dataset columns: {columns}"


def _values(name: str, out: Any, n: int, hint: str = "") -> list[float]:
    """A function's output as n floats, NaN for None. `hint` is added to a TypeError's line."""
    if isinstance(out, BaseException):
        if isinstance(out, VlmgrpoError):
            raise out
        if not isinstance(out, TimeoutError):  # raised on the whole batch: a bug, never skipped
            extra = hint if isinstance(out, TypeError) else ""
            raise RuntimeError(f"TRL reward {name} raised {type(out).__name__}: {out}{extra}") from out
        log.warning("TRL reward %s timed out on a batch of %d: %s", name, n, out)
        return [math.nan] * n
    vals = list(out)
    if len(vals) != n:
        raise ValueError(f"TRL reward {name} returned {len(vals)} values for {n} completions")
    return [math.nan if v is None else float(v) for v in vals]


@batched
def trl_rewards(
    records: list[RewardRecord], ctx: RewardContext, funcs: list[tuple[str, Callable, float, dict]]
) -> list[dict[str, float] | None]:
    """Call every TRL function on the batch; per record, `{"score": weighted sum, <name>: value}`
    (value NaN where the function returned None), or None when no function scored it."""
    n = len(records)
    args = call_arguments(records)
    metrics: dict[str, list[float]] = {}

    def log_extra(column: str, values: list[Any]) -> None:
        for rec, v in zip(records, values):
            rec.extras[column] = v

    def log_metric(name: str, value: float) -> None:
        metrics.setdefault(name, []).append(float(value))

    args.update(trainer_state=_trainer_state(ctx), log_extra=log_extra, log_metric=log_metric)
    outs: dict[int, Any] = {}
    pending: list[tuple[int, Any]] = []
    for j, (_name, fn, _, kwargs) in enumerate(funcs):
        try:
            res = fn(**args, **kwargs)
        except VlmgrpoError:
            raise
        except Exception as e:  # `_values` decides: a time-out is None, anything else stops the run
            res = e
        if inspect.isawaitable(res):
            pending.append((j, res))
        else:
            outs[j] = res
    if pending:  # async functions run concurrently, as TRL runs them
        outs.update(dict(asyncio.run(_gather(pending))))
    hint = arguments_hint(args) if any(isinstance(o, TypeError) for o in outs.values()) else ""
    per_fn = [_values(name, outs[j], n, hint) for j, (name, *_) in enumerate(funcs)]
    result: list[dict[str, float] | None] = []
    for i in range(n):
        vals = [v[i] for v in per_fn]
        scored = [(w, v) for (_, _, w, _), v in zip(funcs, vals) if not math.isnan(v)]
        if not scored:
            result.append(None)
            continue
        entry = {"score": sum(w * v for w, v in scored)}
        entry.update({name: v for (name, *_), v in zip(funcs, vals)})
        entry.update({name: sum(v) / len(v) for name, v in metrics.items()})
        result.append(entry)
    return result
