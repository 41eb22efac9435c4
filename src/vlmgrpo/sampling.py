"""Prompts and the policy as the loops and the rewards see them: chat prompts built from the
recipe's templates, the checkpointed prompt sampler, the rollout backend for `rollout.backend`,
and `PolicyHandle`, the policy's `generate` that rewards (Vision-SR1's blind pass, the adversarial
round) and the evaluators call."""

from __future__ import annotations

import hashlib
import logging
import random
from typing import Any

import numpy as np
import torch

from vlmgrpo.config import Config
from vlmgrpo.errors import ConfigError, DataError
from vlmgrpo.rollout import Prompt
from vlmgrpo.rollout import fast as fast_rollout
from vlmgrpo.rollout import hf as hf_rollout

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prompt_seed(seed: int, step: int, part: int, index: int) -> int:
    """rollout.seed_per_prompt's seed of the `index`-th prompt of a step's global list in rollout
    part `part` (accumulation part k, then dynamic sampling's extra rounds): a hash of the four
    numbers, so no two (step, part, index) share a seed however large the batch (an affine mix
    repeats once part x prompts_per_step passes its multiplier), and a prompt's seed does not
    depend on the world size. Returns an int in [0, 2**63)."""
    key = f"{seed}/{step}/{part}/{index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % 2**63


def build_prompt(sample: dict[str, Any], cfg: Config) -> Prompt:
    """Chat messages from the recipe's templates; the images go first in the user turn, as the
    processor's chat template places them at its vision markers."""
    if "_messages" in sample:  # a prompt column, TRL's convention (vlmgrpo.data.hf)
        from vlmgrpo.data.hf import chat_prompt

        return chat_prompt(sample, cfg.prompt.system, cfg.prompt.prefill)
    try:
        text = cfg.prompt.user.format(**sample)
    except KeyError as e:
        fields = ", ".join(sorted(k for k in sample if k != "images"))
        raise ConfigError(f"prompt.user: the sample has no field {e} (fields: {fields})") from None
    images = list(sample.get("images") or [])
    content: list[dict[str, Any]] = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    messages = [{"role": "system", "content": cfg.prompt.system}] if cfg.prompt.system else []
    messages.append({"role": "user", "content": content if images else text})
    return Prompt(messages=messages, images=images, prefill=cfg.prompt.prefill, text=text)


class PromptSampler:
    """Draws samples with replacement (seed A) from a map-style dataset, or from a streaming one.
    Its RNG state is part of the checkpoint, so a resumed run sees the same images."""

    def __init__(self, dataset: Any, seed: int, skip_bad: bool = True) -> None:
        self.dataset = dataset
        self.rng = np.random.default_rng(seed)
        self.skip_bad = skip_bad
        self.bad = 0

    def next(self) -> dict[str, Any]:
        for _ in range(100):
            try:
                if hasattr(self.dataset, "sample"):
                    return self.dataset.sample(self.rng)
                return self.dataset[int(self.rng.integers(len(self.dataset)))]
            except DataError as e:
                if not self.skip_bad:
                    raise
                self.bad += 1
                log.warning("skipping bad sample: %s", e)
        raise DataError("100 bad samples in a row: check the dataset (data.kwargs)")

    def state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "bad": self.bad}

    def load(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.bad = state["bad"]


def sampler_for(cfg: Config, model: Any) -> Any:
    """The rollout backend module (`fast` or `hf`) for `rollout.backend`; both have `sample()`."""
    return fast_rollout if fast_rollout.choose_backend(cfg.rollout.backend, model) == "fast" else hf_rollout


class PolicyHandle:
    """What rewards see of the policy: `generate(messages_list, images_list) -> list[str]`
    (used by Vision-SR1's blind pass and the adversarial round)."""

    def __init__(self, model: Any, proc: Any, cfg: Config) -> None:
        self.model, self.proc, self.cfg = model, proc, cfg

    def generate(
        self, messages: list[list[dict]], images: list[list[Any]] | None = None, prefill: str = "", **kw: Any
    ) -> list[str]:
        images = images or [[] for _ in messages]
        prompts = [Prompt(messages=m, images=list(i), prefill=prefill) for m, i in zip(messages, images)]
        r = self.cfg.rollout
        out = sampler_for(self.cfg, self.model).sample(
            self.model,
            self.proc,
            prompts,
            1,
            temperature=kw.get("temperature", r.temperature),
            top_p=kw.get("top_p", r.top_p),
            top_k=kw.get("top_k", r.top_k),
            max_new_tokens=kw.get("max_new_tokens", r.max_new_tokens),
        )
        return out.completions


class NoPolicy:
    """The policy handle of rewards that run beside the next rollout (rollout.overlap)."""

    def generate(self, *args: Any, **kwargs: Any) -> list[str]:
        raise ConfigError(
            "rollout.overlap: a reward queries the policy (ctx.policy) while the next rollout runs; "
            "set rollout.overlap=false for this recipe"
        )
