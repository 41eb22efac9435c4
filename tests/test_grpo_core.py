"""vlmgrpo.grpo.core against plain Python-loop reference implementations (the loops live only here)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlmgrpo.grpo.core import (
    AGGREGATIONS,
    aggregate_loss,
    chunked_token_logps,
    completion_mask_from_eos,
    group_advantages,
    grpo_loss,
    kl_k3,
    loss_scale_for_accumulation,
    policy_loss_per_token,
    selective_log_softmax,
)

# ------------------------------------------------------------------------------ loop references


def ref_group_advantages(rewards, group_size, scale, eps, unbiased, valid):
    """Loop version: one group at a time, Python floats."""
    n = len(rewards)
    ok = [valid[i] and not math.isnan(rewards[i]) for i in range(n)]

    def std(xs):
        m = sum(xs) / len(xs)
        d = len(xs) - 1 if unbiased else len(xs)
        return math.sqrt(sum((x - m) ** 2 for x in xs) / max(d, 1))

    batch_vals = [rewards[i] for i in range(n) if ok[i]]
    out = [0.0] * n
    for g0 in range(0, n, group_size):
        idx = [i for i in range(g0, g0 + group_size) if ok[i]]
        if len(idx) < 2:
            continue
        vals = [rewards[i] for i in idx]
        mean = sum(vals) / len(vals)
        for i in idx:
            a = rewards[i] - mean
            if scale == "group":
                a /= std(vals) + eps
            elif scale == "batch":
                a /= std(batch_vals) + eps
            out[i] = a
    return out


def ref_policy_loss(logp, old_logp, adv, kind, cl, ch):
    """Loop version: per-token value and d value / d logp, from the textbook formulas."""
    b, t = len(logp), len(logp[0])
    val = [[0.0] * t for _ in range(b)]
    grad = [[0.0] * t for _ in range(b)]
    for i in range(b):
        a = adv[i]
        for j in range(t):
            if kind == "pg":
                val[i][j], grad[i][j] = -a, -a
                continue
            r = math.exp(logp[i][j] - old_logp[i][j])
            if kind == "is":
                val[i][j], grad[i][j] = -r * a, -r * a
            else:
                rc = min(max(r, 1 - cl), 1 + ch)
                if rc * a < r * a:  # clipped branch is active: constant, no gradient
                    val[i][j], grad[i][j] = -rc * a, 0.0
                else:
                    val[i][j], grad[i][j] = -r * a, -r * a
    return val, grad


def ref_aggregate(per_token, mask, kind, max_tokens=None, num_items=None):
    b, t = len(per_token), len(per_token[0])
    if kind == "grpo":
        total = 0.0
        for i in range(b):
            s = sum(per_token[i][j] for j in range(t) if mask[i][j])
            n = sum(mask[i])
            total += s / max(n, 1)
        return total / b
    s = sum(per_token[i][j] for i in range(b) for j in range(t) if mask[i][j])
    n = sum(sum(row) for row in mask)
    if kind == "bnpo":
        return s / max(n, 1)
    if kind == "dr_grpo":
        return s / (b * max_tokens)
    return s / (num_items if num_items is not None else max(n, 1))


def ref_mask(ids, eos_ids, pad_id):
    out = []
    for row in ids:
        m, ended = [], False
        for tok in row:
            if ended or (tok == pad_id and tok not in eos_ids):
                ended = True
                m.append(0)
                continue
            m.append(1)
            if tok in eos_ids:
                ended = True
        out.append(m)
    return out


def _random_mask(b: int, t: int) -> torch.Tensor:
    """[b, t] right-padded masks of varied lengths (one empty row, one full row)."""
    lengths = torch.randint(1, t + 1, (b,))
    lengths[0], lengths[-1] = 0, t
    return (torch.arange(t)[None, :] < lengths[:, None]).long()


# ------------------------------------------------------------------------------------ advantages


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_group_advantages_match_loop(scale, unbiased):
    torch.manual_seed(0)
    g = 4
    rewards = torch.randn(5 * g, dtype=torch.float64)
    valid = torch.ones(5 * g, dtype=torch.bool)
    rewards[2] = float("nan")
    valid[2] = False  # skipped sample inside a group
    valid[5] = False  # skipped with a finite reward: must be ignored too
    valid[9:12] = False  # group 2 keeps a single valid member (index 8)
    rewards[12:16] = 0.5  # group 3: equal rewards -> zero std
    valid[16:20] = False  # group 4 fully skipped
    rewards[17] = float("nan")
    got = group_advantages(rewards, g, scale=scale, eps=1e-4, unbiased=unbiased, valid=valid)
    want = ref_group_advantages(rewards.tolist(), g, scale, 1e-4, unbiased, valid.tolist())
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), atol=1e-12, rtol=0)
    assert got[2] == 0 and got[5] == 0 and (got[8:20] == 0).all()


def test_group_advantages_nan_without_valid_is_skipped_and_single_member_is_zero():
    rewards = torch.tensor([1.0, float("nan"), 3.0, 5.0, float("nan"), float("nan")])
    adv = group_advantages(rewards, 3)  # unbiased std, default scale
    want = ref_group_advantages(rewards.tolist(), 3, "group", 1e-4, True, [True] * 6)
    torch.testing.assert_close(adv, torch.tensor(want))
    assert adv[1] == 0 and (adv[3:] == 0).all()  # group 2 has one valid member
    # Unbiased std with one sample must not divide by zero anywhere.
    assert torch.isfinite(group_advantages(torch.tensor([2.0, 7.0]), 1)).all()


def test_group_advantages_seed_a_formula():
    torch.manual_seed(1)
    r = torch.rand(8)
    want = (r - r.mean()) / (r.std(unbiased=True) + 1e-4)
    torch.testing.assert_close(group_advantages(r, 8), want)


def test_group_advantages_rejects_ragged_groups():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(7), 3)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(6), 3, scale="std")


# ------------------------------------------------------------------------------------- log-probs


def test_selective_log_softmax_matches_log_softmax_gather_with_grad():
    torch.manual_seed(2)
    logits = torch.randn(5, 7, 33, requires_grad=True)
    index = torch.randint(0, 33, (5, 7))
    w = torch.randn(5, 7)
    for chunk_rows in (None, 1, 2):
        logits.grad = None
        got = selective_log_softmax(logits, index, chunk_rows=chunk_rows)
        (got * w).sum().backward()
        g_got = logits.grad.clone()
        logits.grad = None
        want = F.log_softmax(logits, -1).gather(-1, index[..., None]).squeeze(-1)
        (want * w).sum().backward()
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        torch.testing.assert_close(g_got, logits.grad, atol=1e-6, rtol=0)


def test_selective_log_softmax_upcasts_bf16():
    torch.manual_seed(3)
    logits = (torch.randn(3, 4, 50) * 10).bfloat16()
    index = torch.randint(0, 50, (3, 4))
    got = selective_log_softmax(logits, index)
    want = F.log_softmax(logits.float(), -1).gather(-1, index[..., None]).squeeze(-1)
    assert got.dtype == torch.float32
    # |log-probs| reach ~30 here, where one fp32 ulp is 2e-6: compare relatively as well.
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    one = selective_log_softmax(logits[0, 0], index[0, 0])  # [V] / [] also works
    torch.testing.assert_close(one, want[0, 0], atol=1e-6, rtol=1e-6)


def _loop_token_logps(hidden, weight, bias, targets, temperature):
    """Loop reference: one token at a time through a full log_softmax."""
    b, t, _ = hidden.shape
    rows = []
    for i in range(b):
        row = []
        for j in range(t):
            logits = hidden[i, j] @ weight.T
            if bias is not None:
                logits = logits + bias
            row.append(
                F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature, -1)[
                    targets[i, j]
                ]
            )
        rows.append(torch.stack(row))
    return torch.stack(rows)


@pytest.mark.parametrize("chunk_tokens", [1, 5, 4096])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_token_logps_values_and_grads_match_loop(chunk_tokens, with_bias, dtype):
    torch.manual_seed(4)
    b, t, h, v = 3, 7, 8, 29  # b*t = 21 tokens: chunk 5 leaves a ragged last chunk
    # Scale 0.5 keeps logits ~ N(0, 1) so |logp| ~ 3-6, where fp32 rounding stays within 1e-6.
    hidden = (0.5 * torch.randn(b, t, h, dtype=dtype)).requires_grad_(True)
    weight = (0.5 * torch.randn(v, h, dtype=dtype)).requires_grad_(True)
    bias = (0.5 * torch.randn(v, dtype=dtype)).requires_grad_(True) if with_bias else None
    targets = torch.randint(0, v, (b, t))
    w = torch.randn(b, t, dtype=dtype)
    params = [hidden, weight] + ([bias] if with_bias else [])

    got = chunked_token_logps(hidden, weight, targets, chunk_tokens, temperature=0.7, lm_head_bias=bias)
    (got * w).sum().backward()
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    want = _loop_token_logps(hidden, weight, bias, targets, 0.7)
    (want * w).sum().backward()

    # fp32: the loop's mat-vec sums in another order than the chunk's matmul, so allow fp32 rounding
    # (1 ulp at |x| ~ 5 is 5e-7); fp64 must agree to 1e-12.
    tol = {"atol": 1e-6, "rtol": 1e-6} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 0}
    assert got.shape == (b, t) and got.dtype == dtype
    torch.testing.assert_close(got, want, **tol)
    for g_got, p in zip(grads, params):
        torch.testing.assert_close(g_got, p.grad, **tol)

    with torch.no_grad():  # inference path (no checkpoint) gives the same numbers
        torch.testing.assert_close(
            chunked_token_logps(hidden, weight, targets, chunk_tokens, 0.7, bias), want, **tol
        )


def test_chunked_token_logps_backward_keeps_no_logits():
    # Every tensor autograd saves for the backward passes through saved_tensors_hooks; with per-chunk
    # checkpointing none of them may be a [chunk, V] logits tensor (only W [V, H] and the inputs).
    torch.manual_seed(12)
    b, t, h, v = 2, 50, 16, 1000
    hidden = torch.randn(b, t, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    targets = torch.randint(0, v, (b, t))
    saved: list[int] = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        logps = chunked_token_logps(hidden, weight, targets, chunk_tokens=32)
    assert max(saved) <= v * h < 32 * v
    logps.sum().backward()
    assert hidden.grad is not None and weight.grad is not None


def test_chunked_token_logps_bf16_upcasts_after_matmul():
    torch.manual_seed(11)
    hidden = torch.randn(2, 3, 16).bfloat16()
    weight = torch.randn(40, 16).bfloat16()
    targets = torch.randint(0, 40, (2, 3))
    got = chunked_token_logps(hidden, weight, targets, chunk_tokens=4)
    logits = (hidden @ weight.T).float()  # what the model's bf16 lm_head + .float() gives
    want = F.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)


# -------------------------------------------------------------------------------------------- KL


def test_kl_k3_zero_when_equal_positive_otherwise():
    torch.manual_seed(5)
    logp = -torch.rand(4, 6) * 3
    assert torch.equal(kl_k3(logp, logp), torch.zeros(4, 6))
    ref = logp + torch.randn(4, 6)
    got = kl_k3(logp, ref)
    assert (got > 0).all()
    want = [
        [math.exp(r - p) - (r - p) - 1 for p, r in zip(prow, rrow)]
        for prow, rrow in zip(logp.tolist(), ref.tolist())
    ]
    torch.testing.assert_close(got, torch.tensor(want), atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------------- policy losses


@pytest.mark.parametrize("kind", ["pg", "is", "ppo"])
def test_policy_loss_value_and_grad_match_loop(kind):
    torch.manual_seed(6)
    b, t = 4, 9
    old = -torch.rand(b, t) * 2
    logp = (old + torch.randn(b, t) * 0.3).requires_grad_(True)  # ratios both sides of the clip
    adv = torch.randn(b)
    cl, ch = 0.2, 0.28
    loss, stats = policy_loss_per_token(logp, old, adv, kind, cl, ch)
    loss.sum().backward()
    val, grad = ref_policy_loss(logp.tolist(), old.tolist(), adv.tolist(), kind, cl, ch)
    torch.testing.assert_close(loss.detach(), torch.tensor(val), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logp.grad, torch.tensor(grad), atol=1e-6, rtol=1e-6)

    ratios = [math.exp(p - o) for pr, orow in zip(logp.tolist(), old.tolist()) for p, o in zip(pr, orow)]
    want_ratio = 1.0 if kind == "pg" else sum(ratios) / len(ratios)
    assert float(stats["ratio_mean"]) == pytest.approx(want_ratio, rel=1e-5)
    n_clipped = sum(g == 0.0 for row in grad for g in row)
    assert float(stats["clip_frac"]) == pytest.approx(n_clipped / (b * t))
    if kind == "ppo":
        assert 0 < n_clipped < b * t
        assert float(stats["clip_low_frac"]) + float(stats["clip_high_frac"]) == pytest.approx(
            n_clipped / (b * t)
        )


def test_policy_loss_needs_old_logp_off_policy():
    with pytest.raises(ValueError, match="old_logp"):
        policy_loss_per_token(torch.zeros(1, 2), None, torch.ones(1), "ppo")


# ----------------------------------------------------------------------------------- aggregation


@pytest.mark.parametrize("kind", AGGREGATIONS)
def test_aggregate_loss_matches_loop(kind):
    torch.manual_seed(7)
    b, t = 5, 6
    per_token = torch.randn(b, t, dtype=torch.float64)
    mask = _random_mask(b, t)
    kw = {"max_tokens": 8} if kind == "dr_grpo" else {}
    got = aggregate_loss(per_token, mask, kind, **kw)
    want = ref_aggregate(per_token.tolist(), mask.tolist(), kind, max_tokens=8)
    assert got.dim() == 0
    assert got.item() == pytest.approx(want, rel=1e-12)
    if kind == "dapo":
        got = aggregate_loss(per_token, mask, kind, num_items_in_batch=40)
        assert got.item() == pytest.approx(
            ref_aggregate(per_token.tolist(), mask.tolist(), kind, num_items=40)
        )


def test_grpo_aggregation_is_length_biased_and_dapo_is_not():
    # Two sequences of equal per-token loss 1, lengths 1 and 4: "grpo" weighs the short one's token 4x.
    per_token = torch.ones(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]])
    aggregate_loss(per_token, mask, "grpo").backward()
    assert per_token.grad[0, 0] == 4 * per_token.grad[1, 0]
    per_token.grad = None
    aggregate_loss(per_token, mask, "dapo").backward()
    assert per_token.grad[0, 0] == per_token.grad[1, 0]


@pytest.mark.parametrize("kind", AGGREGATIONS)
def test_accumulation_scale_makes_micro_batches_sum_to_full_batch(kind):
    torch.manual_seed(8)
    b, t, max_new = 8, 10, 12
    per_token = torch.randn(b, t, dtype=torch.float64)
    mask = _random_mask(b, t)
    global_tokens = int(mask.sum())
    items = global_tokens if kind == "dapo" else None
    full = aggregate_loss(per_token, mask, kind, max_new, items)
    total = 0.0
    for sl in (slice(0, 4), slice(4, 8)):
        micro = aggregate_loss(per_token[sl], mask[sl], kind, max_new, items)
        scale = loss_scale_for_accumulation(kind, 4, b, int(mask[sl].sum()), global_tokens)
        total = total + micro * scale
    assert float(total) == pytest.approx(float(full), rel=1e-12)
    if kind == "bnpo":  # documented choice: accumulated bnpo is the global token mean, i.e. dapo
        assert float(total) == pytest.approx(float(aggregate_loss(per_token, mask, "dapo")), rel=1e-12)


# -------------------------------------------------------------------------------------- grpo_loss


def test_grpo_loss_seed_a_and_seed_d_forms():
    torch.manual_seed(9)
    b, t = 4, 6
    mask = _random_mask(b, t)
    mask[0, :2] = 1  # no empty sequence: the seeds' formulas divide by length
    logp = (-torch.rand(b, t) * 2).requires_grad_(True)
    ref = logp.detach() + 0.1 * torch.randn(b, t)
    adv = torch.randn(b)
    m = mask.float()

    # Seed A: pg, per-sequence mean, no KL; its gradient is that of -A * logp averaged the same way.
    loss, stats = grpo_loss(logp, None, None, adv, mask, kind="pg", aggregation="grpo")
    want = ((-adv[:, None] * m).sum(1) / m.sum(1)).mean()
    torch.testing.assert_close(loss, want)
    loss.backward()
    g = logp.grad.clone()
    logp.grad = None
    (((-adv[:, None] * logp * m).sum(1) / m.sum(1)).mean()).backward()
    torch.testing.assert_close(g, logp.grad)
    assert stats["kl"] == 0.0 and stats["clip_frac"] == 0.0 and stats["ratio_mean"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in stats.values())

    # Seed D: -(ratio * A - beta * KL), per-sequence mean.
    beta = 0.05
    loss, stats = grpo_loss(logp, None, ref, adv, mask, kind="pg", aggregation="grpo", beta=beta)
    kl = kl_k3(logp.detach(), ref)
    want = (((-adv[:, None] + beta * kl) * m).sum(1) / m.sum(1)).mean()
    torch.testing.assert_close(loss, want)
    assert stats["kl"] == pytest.approx(float((kl * m).sum() / m.sum()), rel=1e-5)

    # beta = 0 with a reference: KL is logged but not in the loss.
    loss0, stats0 = grpo_loss(logp, None, ref, adv, mask, kind="pg", aggregation="grpo")
    torch.testing.assert_close(loss0, ((-adv[:, None] * m).sum(1) / m.sum(1)).mean())
    assert stats0["kl"] > 0


def test_grpo_loss_ppo_dapo_matches_composition():
    torch.manual_seed(10)
    b, t = 3, 5
    mask = _random_mask(b, t)
    old = -torch.rand(b, t)
    logp = (old + 0.4 * torch.randn(b, t)).requires_grad_(True)
    ref = old + 0.1 * torch.randn(b, t)
    adv = torch.randn(b)
    kw = {"beta": 0.1, "clip_low": 0.2, "clip_high": 0.3, "num_items_in_batch": 20}
    loss, stats = grpo_loss(logp, old, ref, adv, mask, kind="ppo", aggregation="dapo", **kw)
    per_token, st = policy_loss_per_token(logp, old, adv, "ppo", 0.2, 0.3, mask=mask)
    want = aggregate_loss(per_token + 0.1 * kl_k3(logp, ref), mask, "dapo", num_items_in_batch=20)
    torch.testing.assert_close(loss, want)
    assert stats["clip_frac"] == pytest.approx(float(st["clip_frac"]))
    assert set(stats) == {
        "kl",
        "clip_frac",
        "clip_low_frac",
        "clip_high_frac",
        "clip_delta_frac",
        "ratio_mean",
    }


# ------------------------------------------------------------------------------- completion mask


@pytest.mark.parametrize(
    ("eos_ids", "pad_id"),
    [([2], 0), ([2, 3], 0), (2, 2), ([2], None)],  # pad != eos, two EOS ids, pad == eos, no pad
)
def test_completion_mask_from_eos_matches_loop(eos_ids, pad_id):
    ids = torch.tensor(
        [
            [5, 6, 2, 0, 0, 0],  # EOS then padding
            [5, 6, 7, 8, 9, 4],  # truncated: no EOS
            [2, 5, 2, 6, 0, 0],  # EOS first: only the EOS counts
            [5, 3, 6, 2, 2, 2],  # second EOS id
            [5, 6, 7, 0, 0, 0],  # ragged without EOS, right-padded
            [5, 2, 0, 7, 2, 0],
        ]
    )
    got = completion_mask_from_eos(ids, eos_ids, pad_id)
    eos_list = [eos_ids] if isinstance(eos_ids, int) else eos_ids
    assert got.dtype == torch.long
    assert got.tolist() == ref_mask(ids.tolist(), eos_list, pad_id)


def test_completion_mask_includes_first_eos():
    ids = torch.tensor([[7, 8, 151645, 151643, 151643]])
    mask = completion_mask_from_eos(ids, torch.tensor([151645, 151643]), 151643)
    assert mask.tolist() == [[1, 1, 1, 0, 0]]
