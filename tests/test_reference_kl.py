"""The reference policy of the k3 KL term (seed D), on the tiny real model:

- the KL is 0 at step 0 and positive once the policy has moved, logged every step as `loss/kl`,
  and it enters the loss: loss = policy part (from the rows and advantages) + beta x KL, to 1e-7;
- `grpo.ref.kind: adapter` (LoRA) keeps no second model: every parameter reachable from the trainer
  is the policy's own, and the reference log-probs are the base model's;
- `copy` holds exactly one frozen copy, refreshed as ref <- alpha * policy + (1 - alpha) * ref every
  `refresh_every` steps;
- the learning rate warms up linearly over `optim.warmup_steps`.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlmgrpo.config import load_config
from vlmgrpo.trainer import Trainer

BETA = 0.05


def _cfg(model_dir, out, *extra):
    return load_config(
        "area-tiny",
        [
            f"model.name_or_path={model_dir}",
            f"train.output_dir={out}",
            "train.steps=3",
            "train.eval_every=0",
            "train.save_every=0",
            "train.log_samples_every=0",
            "train.tensorboard=false",
            "data.kwargs={size: 56, n: 4}",
            "rollout.group_size=4",
            "rollout.prompts_per_step=1",
            "rollout.max_new_tokens=8",
            "rewards=[{name: length}]",  # spread inside every group: every step has a gradient
            "optim.lr=0.01",
            f"grpo.beta={BETA}",
            *extra,
        ],
    )


def _steps(tr: Trainer, n: int) -> list[dict[str, float]]:
    """n training steps as `fit` runs them (without checkpoints)."""
    rows = []
    for _ in range(n):
        rows.append(tr.train_step())
        tr.step += 1
    return rows


def _reachable_params(tr: Trainer) -> dict[int, int]:
    """data_ptr -> numel of every parameter of every nn.Module held by the trainer."""
    out: dict[int, int] = {}
    stack, seen = list(vars(tr).values()), set()
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, nn.Module):
            for p in x.parameters():
                out[p.data_ptr()] = p.numel()
        elif isinstance(x, dict):
            stack += list(x.values())
        elif isinstance(x, list | tuple):
            stack += list(x)
    return out


def _model_numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind", ["copy", "adapter"])
def test_kl_is_zero_at_step_0_then_positive_and_logged(tiny_vlm_dir, tmp_path, kind):
    lora = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8"] if kind == "adapter" else []
    # dapo (one micro-batch): loss = sum_i -A_i n_i / T + beta x (token mean of the KL = loss/kl)
    cfg = _cfg(tiny_vlm_dir, tmp_path / "run", f"grpo.ref.kind={kind}", "grpo.aggregation=dapo", *lora)
    tr = Trainer(cfg)
    policy_part = []  # per step, from the rows and advantages the update received (fp64)
    real_update = tr.update

    def update(batches, advantages):
        (b,), (a,) = batches, advantages
        n = b.completion_mask.sum(1).double()
        policy_part.append(float(-(a.double() * n).sum() / n.sum()))
        return real_update(batches, advantages)

    tr.update = update
    tr.fit()
    from vlmgrpo.runlog import read_metrics

    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["phase"] == "grpo"]
    assert [r["step"] for r in rows] == [1, 2, 3] and all("loss/kl" in r for r in rows)
    kl = [r["loss/kl"] for r in rows]
    assert kl[0] < 1e-7, kl  # the reference is the initial policy
    assert kl[1] > 1e-5 and kl[2] > 1e-5, kl  # the policy has moved away from it
    # loss = policy part + beta x KL to fp32 summation error: measured <= 8e-9 apart (2026-12-04)
    for r, pol in zip(rows, policy_part, strict=True):
        assert r["loss"] == pytest.approx(pol + BETA * r["loss/kl"], rel=0, abs=1e-7)
    assert BETA * kl[2] > 1e-5  # the KL term is 100x that tolerance: a dropped KL term fails


def test_adapter_reference_keeps_no_second_model(tiny_vlm_dir, tmp_path):
    lora = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8"]
    tr = Trainer(_cfg(tiny_vlm_dir, tmp_path / "a", "grpo.ref.kind=adapter", *lora))
    own = _model_numel(tr.model)
    held = _reachable_params(tr)
    assert sum(held.values()) == own  # every parameter the trainer holds is the policy's own
    assert set(held) == {p.data_ptr() for p in tr.model.parameters()}
    assert not isinstance(tr.ref, nn.Module)

    # the same setup with a frozen copy holds exactly twice the parameters (the check can fail)
    tr_copy = Trainer(_cfg(tiny_vlm_dir, tmp_path / "c", "grpo.ref.kind=copy", *lora))
    assert sum(_reachable_params(tr_copy).values()) == 2 * _model_numel(tr_copy.model)
    assert all(not p.requires_grad for p in tr_copy.ref.parameters())


def test_adapter_reference_is_the_base_model(tiny_vlm_dir, tmp_path):
    from vlmgrpo.grpo.logps import LogpModel
    from vlmgrpo.models import load_policy
    from vlmgrpo.sampling import build_prompt

    lora = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8"]
    tr = Trainer(_cfg(tiny_vlm_dir, tmp_path / "a", "grpo.ref.kind=adapter", *lora))
    _steps(tr, 2)
    batch = tr.rollout([build_prompt(tr.sampler.next(), tr.cfg)])
    base, _ = load_policy(load_config("area-tiny", [f"model.name_or_path={tiny_vlm_dir}"]).model)
    t = tr.cfg.rollout.temperature
    with torch.no_grad():
        expected = LogpModel(base)(batch, t)
        policy = tr.logp_model(batch, t)
    ref = tr.ref_logps(batch)
    mask = batch.completion_mask.bool()
    assert (ref - expected).abs()[mask].max() < 1e-5
    assert (policy - expected).abs()[mask].max() > 1e-4  # the adapters did train


def test_refresh_mixes_policy_into_reference(tiny_vlm_dir, tmp_path):
    tr = Trainer(_cfg(tiny_vlm_dir, tmp_path / "r", "grpo.ref.kind=copy", "grpo.ref.refresh_alpha=0.1"))
    _steps(tr, 1)
    ref0 = [p.detach().clone() for p in tr.ref.policy.parameters()]
    pol = [p.detach().clone() for p in tr.model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(ref0, pol))
    tr.refresh_reference()
    for r, r0, p in zip(tr.ref.policy.parameters(), ref0, pol):
        torch.testing.assert_close(r, 0.9 * r0 + 0.1 * p, rtol=1e-6, atol=1e-7)
    assert all(torch.equal(a, b) for a, b in zip(tr.model.parameters(), pol))  # the policy is untouched


def test_refresh_every_n_steps(tiny_vlm_dir, tmp_path):
    # alpha 1: the reference becomes the policy at each refresh, so the KL of the next step is 0
    tr = Trainer(
        _cfg(
            tiny_vlm_dir,
            tmp_path / "r",
            "grpo.ref.kind=copy",
            "grpo.ref.refresh_every=2",
            "grpo.ref.refresh_alpha=1.0",
        )
    )
    kl = [m["loss/kl"] for m in _steps(tr, 4)]
    assert kl[0] < 1e-7 and kl[2] < 1e-7, kl  # refreshed after steps 2 (index 1) and 4
    assert kl[1] > 1e-5 and kl[3] > 1e-5, kl


def _used_lrs(tr: Trainer, n: int) -> tuple[list[float], list[float]]:
    """(lr the optimizer stepped with, lr logged) for n steps."""
    used: list[float] = []
    tr.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    logged = [m["lr"] for m in _steps(tr, n)]
    return used, logged


def test_learning_rate_warms_up_linearly(tiny_vlm_dir, tmp_path):
    tr = Trainer(_cfg(tiny_vlm_dir, tmp_path / "w", "grpo.ref.kind=copy", "optim.warmup_steps=3"))
    used, _ = _used_lrs(tr, 5)
    assert used == pytest.approx([0.01 / 3, 0.02 / 3, 0.01, 0.01, 0.01])


def test_logged_lr_is_the_lr_of_that_step(tiny_vlm_dir, tmp_path):
    tr = Trainer(_cfg(tiny_vlm_dir, tmp_path / "w", "grpo.ref.kind=copy", "optim.warmup_steps=3"))
    used, logged = _used_lrs(tr, 4)
    assert logged == pytest.approx(used)
