"""The policy's optimizer and learning-rate schedule, chosen from `optim.*` (config.py).

`build_optimizer`: AdamW with fp32 moments (`fastpath.AdamWFP32State`, stochastic rounding back to
bf16) for half-precision weights under optim.optimizer "auto", else torch's AdamW (fused on CUDA).
`lr_factor`: warmup, then constant, linear or cosine decay over train.steps. Non-goals: other
optimizer families; the update pass itself (`Trainer.update`, `fastpath.accumulate`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vlmgrpo.config import Config, OptimConfig
from vlmgrpo.errors import ConfigError
from vlmgrpo.grpo import fastpath


def build_optimizer(
    params: list[Any], cfg: Config, *, fsdp: bool, device: torch.device
) -> torch.optim.Optimizer:
    """The optimizer over `params` (the trainable ones, after any FSDP2 wrapping)."""
    o = cfg.optim
    hyper = dict(lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
    if o.optimizer == "adamw_fp32_state" and fsdp:
        raise ConfigError(
            "optim.optimizer: adamw_fp32_state does not take FSDP2's sharded parameters; use adamw "
            "with model.dtype float32 and train.fsdp_param_dtype bfloat16 for fp32 master weights"
        )
    low = any(p.dtype in (torch.bfloat16, torch.float16) for p in params)
    if o.optimizer == "adamw_fp32_state" or (o.optimizer == "auto" and low and not fsdp):
        return fastpath.AdamWFP32State(params, **hyper, seed=cfg.train.seed)
    # CPU offload (FSDP2) keeps the sharded parameters on CPU: the step runs there, unfused
    fused = device.type == "cuda" and not (fsdp and cfg.train.cpu_offload)
    return torch.optim.AdamW(params, **hyper, fused=fused)


def lr_factor(step: int, o: OptimConfig, total_steps: int) -> float:
    """The multiplier of optim.lr at scheduler step `step` (a `LambdaLR` lambda)."""
    warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
    if o.schedule == "constant":
        return warm
    frac = min(1.0, step / max(1, total_steps))
    decay = 1 - frac if o.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
    return warm * decay
