"""The new variants against TRL's own `GRPOTrainer._compute_loss` (when trl is installed): the
same fp64 log-probs, advantages and masks go into both; loss and gradient agree to 1e-12.

TRL's method is called unbound on a plain namespace holding the attributes it reads (its config
values, a one-process accelerator); the log-probs it would get from a model are handed in directly,
so the comparison covers the loss arithmetic only (sequence-level ratios, delta, bias-corrected KL,
entropy masks, aggregation)."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from vlmgrpo.grpo.core import grpo_loss, high_entropy_mask

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")


class _OneProcess:
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    def gather_for_metrics(self, x):
        return x

    def pad_across_processes(self, x, dim=0, pad_index=0):
        return x

    def reduce(self, x, reduction="sum"):
        return x


def _trl_loss(
    logp, old, ref, adv, mask, entropies, *, level, delta, beta, kl_ratio, quantile, loss_type, eps
):
    args = SimpleNamespace(delta=delta, use_bias_correction_kl=kl_ratio, steps_per_generation=1)
    fake = SimpleNamespace(
        args=args,
        aux_loss_enabled=False,
        top_entropy_quantile=quantile,
        off_policy_mask_threshold=None,
        importance_sampling_level=level,
        beta=beta,
        loss_type=loss_type,
        epsilon_low=eps[0],
        epsilon_high=eps[1],
        use_vllm=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list)},
        accelerator=_OneProcess(),
        max_completion_length=mask.shape[1],
    )
    fake._get_per_token_logps_and_entropies = lambda *a, **k: (logp, entropies, None)
    fake.get_high_entropy_mask = lambda e, m, t: trl_grpo.GRPOTrainer.get_high_entropy_mask(fake, e, m, t)
    b, t = mask.shape
    inputs = {
        "prompt_ids": torch.zeros(b, 1, dtype=torch.long),
        "prompt_mask": torch.ones(b, 1, dtype=torch.long),
        "completion_ids": torch.zeros(b, t, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    return trl_grpo.GRPOTrainer._compute_loss(fake, None, inputs)


@pytest.mark.parametrize(
    "level,delta,beta,kl_ratio,quantile,loss_type",
    [
        ("sequence", None, 0.0, False, 1.0, "grpo"),
        ("sequence", None, 0.04, True, 1.0, "grpo"),
        ("token", 1.4, 0.0, False, 1.0, "dapo"),
        ("token", None, 0.04, True, 1.0, "dapo"),
        ("token", None, 0.04, False, 1.0, "dapo"),
        ("token", 1.4, 0.04, True, 0.3, "dapo"),
        ("token", None, 0.0, False, 0.5, "grpo"),
    ],
)
def test_matches_trl_compute_loss(level, delta, beta, kl_ratio, quantile, loss_type):
    g = torch.Generator().manual_seed(11)
    b, t = 6, 9
    lengths = torch.randint(2, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 2
    logp = (old + 0.4 * torch.randn(b, t, generator=g, dtype=torch.float64)).requires_grad_(True)
    ref = old + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    # fp32 values: TRL takes the entropy quantile in fp32, vlmgrpo in the entropies' dtype; with
    # fp64 entropies a threshold rounded to fp32 can move one token across it
    ent = (torch.rand(b, t, generator=g, dtype=torch.float64) * 3).float().double()
    eps = (0.2, 0.28)
    kw = dict(level=level, delta=delta, beta=beta, quantile=quantile, loss_type=loss_type, eps=eps)
    want = _trl_loss(logp, old, ref, adv, mask, ent, kl_ratio=kl_ratio, **kw)
    (g_want,) = torch.autograd.grad(want, logp)
    weight = high_entropy_mask(ent, mask, quantile) if quantile < 1 else None
    got, _ = grpo_loss(
        logp,
        old,
        ref if beta else None,
        adv,
        mask.double(),
        kind="ppo",
        aggregation=loss_type,
        beta=beta,
        clip_low=eps[0],
        clip_high=eps[1],
        num_items_in_batch=float(mask.sum()),
        level=level,
        delta=delta,
        kl_estimator="k3_ratio" if kl_ratio else "k3",
        token_weight=weight,
    )
    (g_got,) = torch.autograd.grad(got, logp)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(g_got, g_want, atol=1e-12, rtol=1e-12)
