"""What a run trains on, built: `Components` (the policy, its processor, the datasets, the reward
specs) and the checks its rewards pass before any model loads (`prepare_rewards`); also the
held-out draw an evaluation scores (`eval_samples`) and the block inside which local reward models
sit on their device (`reward_models_loaded`, placement.offload_reward_models).

The CLI builds every component from the recipe (`Components.fill_from_config`); the Python API
(`vlmgrpo.api`) hands in the user's own. Non-goal: training; `vlmgrpo.trainer.Trainer` takes these.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmgrpo.config import Config
from vlmgrpo.data import build_dataset
from vlmgrpo.errors import ConfigError, DataError
from vlmgrpo.models import load_policy
from vlmgrpo.rewards import RewardSpec, resolve_reward

log = logging.getLogger("vlmgrpo.trainer")  # the trainer's logger: these lines are the run's


@dataclass
class Components:
    """What a run trains on, built: the policy, its processor, the datasets and the rewards.

    The CLI leaves every field None and `fill_from_config` builds each from the recipe; the
    Python API (`vlmgrpo.api`) hands in the user's own: a loaded model and processor, wrapped
    `datasets` sets, TRL-signature rewards. `model` None means "load `model.name_or_path`"."""

    model: Any = None  # a loaded transformers model (not yet on the device, no LoRA), or None
    proc: Any = None  # its processor; None = load it from model.name_or_path
    train_set: Any = None  # Sequence[dict] or StreamingDataset (vlmgrpo.data)
    eval_set: Any = None
    specs: list[RewardSpec] | None = None

    def fill_from_config(self, cfg: Config) -> None:
        """Build every component the caller did not give from the recipe (the CLI's path)."""
        # data.image_max_side reaches every builder as kwargs["max_side"] unless the recipe sets it
        if self.train_set is None:
            kw = {"max_side": cfg.data.image_max_side, **cfg.data.kwargs}
            self.train_set = build_dataset(cfg.data.dataset, kw, "train", cfg.train.seed)
        if self.eval_set is None:
            eval_kw = {"max_side": cfg.data.image_max_side, **(cfg.data.eval_kwargs or cfg.data.kwargs)}
            name = cfg.data.eval_dataset or cfg.data.dataset
            self.eval_set = build_dataset(name, eval_kw, "test", cfg.train.seed)
        if self.specs is None:
            from vlmgrpo.rewards.trl_compat import specs_from_entries

            self.specs = specs_from_entries(cfg.rewards)

    def load_model(self, cfg: Config, resume_from: Path | None, device: Any) -> tuple[Any, Any]:
        """The policy on `device`, ready to train (LoRA-wrapped when the config says so)."""
        from vlmgrpo.models import prepare_policy, ready_processor

        model_cfg = copy.deepcopy(cfg.model)
        full_resume = resume_from is not None and not cfg.model.lora.enabled
        if self.model is None or full_resume:
            if full_resume:
                model_cfg.name_or_path = str(resume_from)  # full weights: load the checkpoint itself
            model, proc = load_policy(model_cfg, device)
            return model, (ready_processor(self.proc) if self.proc is not None else proc)
        proc = self.proc
        if proc is None:
            import transformers

            proc = transformers.AutoProcessor.from_pretrained(cfg.model.name_or_path)
        return prepare_policy(self.model, proc, model_cfg, device)


def prepare_rewards(specs: list[RewardSpec] | None) -> None:
    """Fail at construction, not at step 1: no reward, an unknown one, a signature that cannot take
    its kwargs, or a service or model its `prepare` cannot load (e.g. a missing token)."""
    if not specs:
        raise ConfigError("rewards: the recipe lists no reward")
    for i, s in enumerate(specs):
        rf = resolve_reward(s.name)  # fail now, not at step 1, on an unknown reward
        check_reward_call(rf, s, i)  # ... or on a signature that cannot take its kwargs
        fn = rf.fn
        if hasattr(fn, "prepare"):  # load services/models now: a missing token fails here
            fn.prepare(**s.kwargs)


def check_reward_call(rf: Any, spec: RewardSpec, index: int) -> None:
    """A reward is called as fn(record_or_records, ctx, **kwargs): a function that cannot take that
    call (a misspelled kwarg, a missing ctx) is a config error before any model loads, not a
    failure on every sample of step 0."""
    import inspect

    try:
        sig = inspect.signature(rf.fn)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        return
    try:
        sig.bind(None, None, **spec.kwargs)
    except TypeError as e:
        raise ConfigError(
            f"rewards[{index}] ({spec.name}): cannot be called as fn(record, ctx, **kwargs) with "
            f"kwargs {sorted(spec.kwargs)}: {e}"
        ) from None


def eval_samples(eval_set: Any, n: int, seed: int, skip_bad: bool) -> tuple[list[dict[str, Any]], int]:
    """The first `n` held-out items (a fixed draw from a stream) and how many were unreadable:
    those are skipped (data.skip_bad_samples) or stop the run."""
    import numpy as np

    stream = not hasattr(eval_set, "__len__")
    rng = np.random.default_rng(seed + 1) if stream else None  # fixed from a stream
    samples, bad = [], 0
    for i in range(n):
        try:
            samples.append(eval_set.sample(rng) if stream else eval_set[i])
        except DataError as e:
            if not skip_bad:
                raise
            bad += 1
            log.warning("skipping bad eval sample: %s", e)
    return samples, bad


def local_reward_models() -> list[Any]:
    """The generators and embedders built so far whose weights can wait in host memory."""
    from vlmgrpo.embed import EMBEDDERS
    from vlmgrpo.imagegen import GENERATORS
    from vlmgrpo.placement import offloadable

    return [m for reg in (GENERATORS, EMBEDDERS) for m in reg.instances() if offloadable(m)]


@contextlib.contextmanager
def reward_models_loaded(offload: bool) -> Iterator[None]:
    """With `offload` (placement.offload_reward_models) the local reward models are on their device
    only inside this block; elsewhere their weights wait in pinned host memory."""
    models = local_reward_models() if offload else []
    for m in models:
        m.onload()
    try:
        yield
    finally:
        for m in models:
            m.offload()


__all__ = [
    "Components",
    "check_reward_call",
    "eval_samples",
    "local_reward_models",
    "prepare_rewards",
    "reward_models_loaded",
]
