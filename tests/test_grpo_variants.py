"""The GRPO variants of docs/algorithms.md: each pure function of grpo/core.py against a plain-loop
reference (fp64, value and gradient, 1e-6), batch-level std over the whole step equal in 1 and 2
processes, every option through `vlmgrpo train` on the tiny offline setup, and the diagnostics
panel of `vlmgrpo plot` drawn from that run folder."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vlmgrpo.grpo.core import (
    batch_reward_std,
    chunked_token_logps,
    entropy_from_logits,
    group_advantages,
    grpo_loss,
    high_entropy_mask,
    importance_log_ratio,
    kl_k3_ratio,
    overlong_penalty,
    truncated_rows,
    zero_std_groups,
)

TOL = {"atol": 1e-6, "rtol": 1e-6}

# ------------------------------------------------------------------------------ loop references


def ref_loss_loop(
    logp, old, ref, adv, mask, *, kind, level, delta, beta, kl_estimator, weight, cl, ch, agg, n_items
):
    """The whole loss one scalar at a time (torch fp64 scalars so autograd gives the reference
    gradient): ratio per token or per sequence, PPO clip with the delta cap, optional token weight,
    k3 or ratio-weighted k3, then the aggregation."""
    b, t = logp.shape
    rows = []
    for i in range(b):
        n_i = sum(int(mask[i, j]) for j in range(t))
        if level == "sequence":
            s = 0.0
            for j in range(t):
                if mask[i, j]:
                    s = s + (logp[i, j] - (logp[i, j].detach() if kind == "pg" else old[i, j]))
            seq_log_ratio = s / max(n_i, 1)
        row = []
        for j in range(t):
            base = logp[i, j].detach() if kind == "pg" else old[i, j]
            lr = seq_log_ratio if level == "sequence" else logp[i, j] - base
            r = torch.exp(lr)
            a = adv[i]
            if kind == "ppo":
                clipped = min(
                    max(r, torch.tensor(1 - cl, dtype=r.dtype)), torch.tensor(1 + ch, dtype=r.dtype)
                )
                capped = r if delta is None else min(r, torch.tensor(delta, dtype=r.dtype))
                x = -min(capped * a, clipped * a)
            else:
                x = -r * a
            if weight is not None:
                x = x * float(weight[i, j])
            if beta > 0:
                d = ref[i, j] - logp[i, j]
                k3 = torch.exp(d) - d - 1
                x = x + beta * (k3 * r if kl_estimator == "k3_ratio" else k3)
            row.append(x)
        rows.append(row)
    if agg == "grpo":
        total = 0.0
        for i in range(b):
            n_i = sum(int(mask[i, j]) for j in range(t))
            total = total + sum(rows[i][j] for j in range(t) if mask[i, j]) / max(n_i, 1)
        return total / b
    return sum(rows[i][j] for i in range(b) for j in range(t) if mask[i, j]) / n_items


def _mask(b, t, gen):
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    lengths[-1] = t
    return (torch.arange(t)[None, :] < lengths[:, None]).double()


def _inputs(seed, b=4, t=6):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=gen, dtype=torch.float64) * 2
    logp = (old + 0.5 * torch.randn(b, t, generator=gen, dtype=torch.float64)).requires_grad_(True)
    ref = old + 0.3 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    adv = torch.randn(b, generator=gen, dtype=torch.float64)
    return logp, old, ref, adv, _mask(b, t, gen)


CASES = [
    # (kind, level, delta, beta, kl_estimator, entropy weight, aggregation)
    ("ppo", "sequence", None, 0.0, "k3", False, "grpo"),
    ("ppo", "sequence", None, 0.1, "k3_ratio", False, "dapo"),
    ("is", "sequence", None, 0.0, "k3", False, "dapo"),
    ("pg", "sequence", None, 0.0, "k3", False, "grpo"),
    ("ppo", "token", 1.3, 0.0, "k3", False, "dapo"),
    ("ppo", "token", 1.3, 0.05, "k3_ratio", True, "grpo"),
    ("ppo", "token", None, 0.1, "k3_ratio", False, "dapo"),
    ("pg", "token", None, 0.1, "k3_ratio", False, "grpo"),
    ("is", "token", None, 0.1, "k3_ratio", True, "dapo"),
    ("ppo", "token", None, 0.0, "k3", True, "dapo"),
]


@pytest.mark.parametrize("kind,level,delta,beta,kl_est,weighted,agg", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_value_and_gradient_match_loop(kind, level, delta, beta, kl_est, weighted, agg, seed):
    logp, old, ref, adv, mask = _inputs(seed)
    weight = None
    if weighted:
        ent = torch.rand(logp.shape, generator=torch.Generator().manual_seed(seed + 7), dtype=torch.float64)
        weight = high_entropy_mask(ent, mask, 0.4).double()
        assert 0 < weight.sum() < mask.sum()  # the mask really drops tokens
    n_items = float(mask.sum()) + 3.0  # a global count larger than this micro-batch's
    kw = dict(kind=kind, level=level, delta=delta, beta=beta, kl_estimator=kl_est)
    got, _ = grpo_loss(
        logp,
        old,
        ref if beta > 0 else None,
        adv,
        mask,
        aggregation=agg,
        clip_low=0.2,
        clip_high=0.28,
        num_items_in_batch=n_items,
        token_weight=weight,
        **kw,
    )
    (g_got,) = torch.autograd.grad(got, logp)
    want = ref_loss_loop(
        logp, old, ref, adv, mask, weight=weight, cl=0.2, ch=0.28, agg=agg, n_items=n_items, **kw
    )
    (g_want,) = torch.autograd.grad(want, logp)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(g_got, g_want, **TOL)
    assert g_got.abs().sum() > 0


def test_sequence_ratio_is_the_length_normalised_sequence_ratio():
    logp, old, _, _, mask = _inputs(3)
    got = importance_log_ratio(logp, old, mask, "sequence")
    for i in range(logp.shape[0]):
        n = int(mask[i].sum())
        lp = sum(float(logp[i, j].detach()) for j in range(n))
        lo = sum(float(old[i, j]) for j in range(n))
        # (pi(y) / pi_old(y)) ^ (1 / |y|)
        assert math.exp(float(got[i, 0])) == pytest.approx(math.exp(lp - lo) ** (1 / n), rel=1e-9)


def test_delta_bounds_the_negative_advantage_term():
    """With A < 0 and a ratio far above delta, the loss is -delta * A and the gradient is 0."""
    logp = torch.tensor([[2.0]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.float64)
    adv = torch.tensor([-1.0], dtype=torch.float64)
    loss, st = grpo_loss(logp, old, None, adv, mask, kind="ppo", aggregation="grpo", delta=1.5)
    assert float(loss) == pytest.approx(1.5) and st["clip_delta_frac"] == 1.0
    (g,) = torch.autograd.grad(loss, logp)
    assert float(g) == 0.0
    plain, _ = grpo_loss(logp, old, None, adv, mask, kind="ppo", aggregation="grpo")
    assert float(plain) == pytest.approx(math.exp(2.0))  # unbounded without delta


@pytest.mark.parametrize("seed", [0, 1])
def test_kl_k3_ratio_matches_loop(seed):
    logp, old, ref, _, _ = _inputs(seed)
    ratio = torch.exp(logp - old)
    got = kl_k3_ratio(logp, ref, ratio)
    want = torch.stack(
        [
            torch.stack(
                [
                    torch.exp(logp[i, j] - old[i, j])
                    * (torch.exp(ref[i, j] - logp[i, j]) - (ref[i, j] - logp[i, j]) - 1)
                    for j in range(logp.shape[1])
                ]
            )
            for i in range(logp.shape[0])
        ]
    )
    torch.testing.assert_close(got, want, **TOL)
    (g1,) = torch.autograd.grad(got.sum(), logp)
    (g2,) = torch.autograd.grad(want.sum(), logp)
    torch.testing.assert_close(g1, g2, **TOL)


def test_kl_k3_ratio_on_policy_differs_in_gradient_only():
    """On-policy the ratio is 1 in value: same KL value as k3, gradient + k3 * d logp (TRL's note)."""
    logp, _, ref, adv, mask = _inputs(4)
    args = (logp, None, ref, adv, mask)
    a, sa = grpo_loss(*args, kind="pg", aggregation="dapo", beta=0.1, kl_estimator="k3")
    b, sb = grpo_loss(*args, kind="pg", aggregation="dapo", beta=0.1, kl_estimator="k3_ratio")
    torch.testing.assert_close(a, b, **TOL)
    assert sa["kl"] == pytest.approx(sb["kl"])
    (ga,) = torch.autograd.grad(a, logp)
    (gb,) = torch.autograd.grad(b, logp)
    d = ref - logp.detach()
    k3 = torch.exp(d) - d - 1
    torch.testing.assert_close(gb - ga, 0.1 * k3 * mask / mask.sum(), **TOL)


def ref_quantile_mask(ent, mask, q):
    vals = sorted(float(ent[i, j]) for i in range(ent.shape[0]) for j in range(ent.shape[1]) if mask[i, j])
    pos = (1 - q) * (len(vals) - 1)  # linear interpolation between order statistics
    lo = math.floor(pos)
    thr = vals[lo] + (vals[min(lo + 1, len(vals) - 1)] - vals[lo]) * (pos - lo)
    return [
        [bool(mask[i, j]) and float(ent[i, j]) >= thr for j in range(ent.shape[1])]
        for i in range(ent.shape[0])
    ]


@pytest.mark.parametrize("q", [0.2, 0.5, 1.0])
def test_high_entropy_mask_matches_loop(q):
    gen = torch.Generator().manual_seed(5)
    ent = torch.rand(5, 7, generator=gen, dtype=torch.float64)
    mask = _mask(5, 7, gen)
    got = high_entropy_mask(ent, mask, q)
    assert got.tolist() == ref_quantile_mask(ent, mask, q)
    kept = float(got.sum()) / float(mask.sum())
    assert kept == pytest.approx(q, abs=1.5 / float(mask.sum()))
    assert not high_entropy_mask(ent, torch.zeros_like(mask), q).any()


def test_entropy_from_chunked_logps_matches_loop():
    gen = torch.Generator().manual_seed(6)
    b, t, h, v = 2, 5, 4, 11
    hidden = torch.randn(b, t, h, generator=gen, dtype=torch.float64)
    w = torch.randn(v, h, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, v, (b, t), generator=gen)
    lp, ent = chunked_token_logps(hidden, w, targets, chunk_tokens=3, temperature=0.7, with_entropy=True)
    plain = chunked_token_logps(hidden, w, targets, chunk_tokens=3, temperature=0.7)
    torch.testing.assert_close(lp, plain, atol=0, rtol=0)  # the entropy changes nothing else
    for i in range(b):
        for j in range(t):
            z = [float(x) / 0.7 for x in hidden[i, j] @ w.T]
            m = max(z)
            p = [math.exp(x - m) for x in z]
            s = sum(p)
            want = -sum(pi / s * math.log(pi / s) for pi in p)
            assert float(ent[i, j]) == pytest.approx(want, abs=1e-9)
    torch.testing.assert_close(entropy_from_logits(hidden @ w.T / 0.7), ent, **TOL)


def test_overlong_penalty_matches_loop_value_and_gradient():
    max_t, buf, factor = 20, 6, 0.5
    lengths = torch.tensor([0.0, 5, 14, 15, 17.5, 20, 23], dtype=torch.float64, requires_grad=True)
    got = overlong_penalty(lengths, max_t, buf, factor)

    def loop(n):
        if n <= max_t - buf:
            return 0.0 * n
        if n <= max_t:
            return factor * ((max_t - buf) - n) / buf
        return 0.0 * n - factor

    want = torch.stack([loop(n) for n in lengths])
    torch.testing.assert_close(got, want, **TOL)
    assert got.tolist()[5] == pytest.approx(-factor)  # a completion cut at max_new_tokens
    (g1,) = torch.autograd.grad(got.sum(), lengths)
    (g2,) = torch.autograd.grad(want.sum(), lengths)
    torch.testing.assert_close(g1, g2, **TOL)
    with pytest.raises(ValueError, match="buffer_tokens"):
        overlong_penalty(lengths, 4, 6)


def test_zero_std_groups_matches_loop():
    r = torch.tensor(
        [1, 1, 1, 1, 0, 1, 0, 0, 0.5, float("nan"), 0.5, 0.5, 2, float("nan"), float("nan"), float("nan")]
    )
    got = zero_std_groups(r, 4)
    want = []
    for g in range(4):
        vals = [float(x) for x in r[4 * g : 4 * g + 4] if not math.isnan(float(x))]
        want.append(len(vals) < 2 or max(vals) == min(vals))
    assert got.tolist() == want == [True, False, True, True]
    adv = group_advantages(r, 4)
    for g in range(4):
        assert (adv[4 * g : 4 * g + 4] == 0).all() == want[g]  # flagged exactly where no signal is


def test_truncated_rows():
    eos, pad = 9, 0
    ids = torch.tensor([[1, 2, 3, 4], [1, 9, 0, 0], [1, 2, 3, 9], [1, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    # row 0 runs to the last column without EOS; row 3 ended on a pad that is not an EOS id
    assert truncated_rows(ids, mask, [eos]).tolist() == [True, False, False, False]
    del pad


def test_batch_std_over_parts_equals_whole_batch():
    """Advantages of the parts with the whole batch's std (two-pass moments) equal those of the
    whole batch at once; a std per part (the old behaviour) does not."""
    gen = torch.Generator().manual_seed(8)
    r = torch.randn(24, generator=gen, dtype=torch.float64) * torch.tensor(
        [1.0] * 12 + [5.0] * 12, dtype=torch.float64
    )
    r[3] = float("nan")
    whole = group_advantages(r, 4, scale="batch")
    parts = [r[:12], r[12:]]
    ok = [p[~torch.isnan(p)] for p in parts]
    count = sum(float(x.numel()) for x in ok)
    mean = sum(float(x.sum()) for x in ok) / count
    sq = sum(float((x - mean).pow(2).sum()) for x in ok)
    std = batch_reward_std(count, sq)
    vals = [float(x) for x in r if not math.isnan(float(x))]
    m = sum(vals) / len(vals)
    assert std == pytest.approx(math.sqrt(sum((x - m) ** 2 for x in vals) / (len(vals) - 1)), rel=1e-12)
    got = torch.cat([group_advantages(p, 4, scale="batch", batch_std=std) for p in parts])
    torch.testing.assert_close(got, whole, **TOL)
    per_part = torch.cat([group_advantages(p, 4, scale="batch") for p in parts])
    assert (per_part - whole).abs().max() > 0.1


# ------------------------------------------------------------------- every option through `vlmgrpo train`

HERE = __import__("pathlib").Path(__file__).parent
HASH = f"rewards=[{{name: '{HERE / 'reward_fns_for_tests.py'}:hashed_slow'}}]"
HALF_FLAT = f"rewards=[{{name: '{HERE / 'variant_rewards.py'}:half_flat', label: half_flat}}]"
FLAT = f"rewards=[{{name: '{HERE / 'variant_rewards.py'}:flat', label: flat}}]"
HALF_FLAT_LOW = f"rewards=[{{name: '{HERE / 'variant_rewards.py'}:half_flat_low', label: half_flat}}]"

TINY = [
    "train.steps=2",
    "warmup.steps=0",
    "train.eval_every=0",
    "train.save_every=0",
    "train.log_samples_every=0",
    "train.tensorboard=false",
    "rollout.prompts_per_step=2",
    "rollout.group_size=4",
    "rollout.max_new_tokens=6",
    "data.kwargs={n: 32, size: 56}",
    "data.eval_kwargs={n: 4, size: 56}",
    "train.threads=1",
]


def _train(model_dir, out, *overrides):
    from vlmgrpo.cli import main

    args = ["train", "--recipe", "demo", "--model", str(model_dir), "--output-dir", str(out)]
    for o in [*TINY, *overrides]:
        args += ["--set", o]
    assert main(args) == 0
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]


# Every step logs these, whatever the options (KL only with beta > 0).
DIAGNOSTICS = [
    "loss/entropy",
    "groups/zero_std_frac",
    "completion/len_mean",
    "completion/len_min",
    "completion/len_max",
    "completion/truncated_frac",
    "loss/clip_low_frac",
    "loss/clip_high_frac",
    "loss/clip_frac",
]


def _check_sequence(rows):
    assert all(r["grad_norm"] > 0 for r in rows)


def _check_iterations(rows):
    assert all(r["update/iterations"] == 2 for r in rows)
    # update 1 is on-policy (ratio 1), update 2 runs after a step: the ratio moved off 1
    assert all(abs(r["loss/ratio_mean"] - 1.0) > 1e-6 for r in rows)


def _check_delta(rows):
    _check_iterations(rows)
    assert all("loss/clip_delta_frac" in r for r in rows)


def _check_mask_truncated(rows):
    for r in rows:
        if r["completion/truncated_frac"] == 1.0:  # every completion masked: nothing to learn from
            assert r["grad_norm"] == 0.0
        else:
            assert r["grad_norm"] > 0


def _check_entropy(rows):
    for r in rows:
        assert r["loss/entropy"] > 0
        assert 0.1 < r["loss/entropy_kept_frac"] < 0.35  # ~ the top 20 % of each micro-batch


def _check_kl_ratio(rows):
    assert rows[0]["loss/kl"] == pytest.approx(0.0, abs=1e-9)  # the reference is the initial policy
    assert rows[-1]["loss/kl"] > 0


def _check_dynamic(rows):
    for r in rows:
        assert r["dynamic/rollouts"] >= 1
        assert r["dynamic/kept_groups_frac"] == 1.0 or r["dynamic/bound_hit"] == 1.0
    assert any(r["groups/zero_std_frac"] > 0 for r in rows)  # the filter had something to drop
    # reward/* describe every group the policy sampled, the dropped all-1.0 groups included; the
    # kept groups (rewards in {0, 0.1}) have their own mean (it was all reward/mean said before)
    assert all(r["dynamic/kept_reward_mean"] <= 0.1 for r in rows)
    assert max(r["reward/mean"] for r in rows) > 0.1


def _check_dynamic_bound(rows):
    for r in rows:  # no group ever has spread: every step uses the bound and says so
        assert r["dynamic/rollouts"] == 3 and r["dynamic/bound_hit"] == 1.0
        assert r["dynamic/kept_groups_frac"] == 0.0 and r["groups/zero_std_frac"] == 1.0


def _check_overlong(rows):
    for r in rows:
        assert -1.0 <= r["reward/overlong_penalty/mean"] <= 0.0
        if r["completion/truncated_frac"] == 1.0:  # all cut at max_new_tokens: the full penalty
            assert r["reward/overlong_penalty/mean"] == pytest.approx(-1.0)


def _check_batch_std(rows):
    assert all(r["grad_norm"] > 0 for r in rows)


OPTIONS = {
    "sequence": ([HASH, "grpo.loss=ppo", "grpo.importance_level=sequence"], _check_sequence),
    "iterations": ([HASH, "grpo.loss=ppo", "grpo.num_iterations=2"], _check_iterations),
    "delta": ([HASH, "grpo.loss=ppo", "grpo.num_iterations=2", "grpo.delta=1.5"], _check_delta),
    "mask_truncated": ([HASH, "grpo.mask_truncated=true"], _check_mask_truncated),
    "entropy": ([HASH, "grpo.top_entropy_quantile=0.2"], _check_entropy),
    "kl_ratio": (
        [HASH, "grpo.beta=0.05", "grpo.ref.kind=copy", "grpo.kl_estimator=k3_ratio"],
        _check_kl_ratio,
    ),
    "dynamic": (
        [HALF_FLAT_LOW, "grpo.dynamic_sampling=true", "grpo.dynamic_max_extra_rollouts=3"],
        _check_dynamic,
    ),
    "dynamic_bound": (
        [FLAT, "grpo.dynamic_sampling=true", "grpo.dynamic_max_extra_rollouts=2"],
        _check_dynamic_bound,
    ),
    "overlong": ([HASH, "grpo.overlong_buffer=3", "grpo.overlong_factor=1.0"], _check_overlong),
    "batch_std": ([HASH, "grpo.adv_scale=batch", "optim.grad_accum=2"], _check_batch_std),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_option_runs_through_vlmgrpo_train(name, tiny_vlm_dir, tmp_path):
    overrides, check = OPTIONS[name]
    rows = _train(tiny_vlm_dir, tmp_path / "run", *overrides)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for k in DIAGNOSTICS:
            assert k in r and math.isfinite(r[k]), (name, k)
    check(rows)


# ------------------------------------------------------------------- batch std across ranks and parts


@pytest.mark.slow  # ~60 s on the 2-core machine; the short version is test_batch_std_over_parts_equals_whole_batch
def test_batch_std_two_processes_equal_one_process(tiny_vlm_dir, tmp_path):
    """grpo.adv_scale batch with 2 accumulation parts: 2 gloo processes end with the parameters of
    1 process (one std over the whole step's 16 rewards). Measured (2 steps, lr 1e-3): 2.2e-6 apart
    at most (float summation order, amplified by Adam), 4.0e-3 apart with the old std per part and
    rank; the bound sits between the two."""
    from test_distributed import _load, _run

    extra = ("--set", "grpo.adv_scale=batch", "--set", "optim.grad_accum=2", "--set", "train.save_every=0")
    _run(tiny_vlm_dir, tmp_path / "one", 1, *extra, dump=tmp_path / "d1")
    _run(tiny_vlm_dir, tmp_path / "two", 2, *extra, dump=tmp_path / "d2")
    one, r0, r1 = (_load(tmp_path / d / f"rank-{r}.pt") for d, r in (("d1", 0), ("d2", 0), ("d2", 1)))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # identical on both ranks
    gap = max(float((r0[k] - one[k]).abs().max()) for k in one)
    assert gap < 2e-5, gap


# ------------------------------------------------------------------- the diagnostics panel


def test_diagnostics_panel_from_a_real_run(tiny_vlm_dir, tmp_path):
    from PIL import Image

    from vlmgrpo.cli import main
    from vlmgrpo.report.diagnostics import diagnostics_figure
    from vlmgrpo.report.plots import THEMES, load_run

    run = tmp_path / "run"
    _train(
        tiny_vlm_dir,
        run,
        HALF_FLAT,
        "train.steps=3",
        "grpo.loss=ppo",
        "grpo.num_iterations=2",
        "grpo.beta=0.05",
        "grpo.ref.kind=copy",
        "grpo.dynamic_sampling=true",
        "grpo.overlong_buffer=3",
    )
    assert main(["plot", "--output-dir", str(run), "--formats", "png"]) == 0
    png = run / "plots" / "diagnostics.png"
    assert png.is_file() and Image.open(png).size[0] > 800
    fig = diagnostics_figure(load_run(run), THEMES["plain"], 10)
    titles = {ax.get_title() for ax in fig.axes if ax.get_title()}
    assert {
        "token entropy",
        "groups without signal",
        "completion length",
        "truncation",
        "clip fractions",
        "KL to the reference",
        "dynamic sampling",
    } <= titles
    assert diagnostics_figure(load_run(tmp_path / "missing"), THEMES["plain"], 10) is None  # nothing logged


@pytest.mark.parametrize(
    "override,message",
    [
        ("grpo.num_iterations=0", "grpo.num_iterations: must be at least 1"),
        ("grpo.num_iterations=2", "grpo.num_iterations > 1 needs grpo.loss 'is' or 'ppo'"),
        ("grpo.top_entropy_quantile=0", r"grpo.top_entropy_quantile: must be in \(0, 1\]"),
        ("grpo.delta=1.1", r"grpo.delta: 0 \(off\) or > 1 \+ grpo.clip_high"),
        ("grpo.overlong_buffer=100", r"grpo.overlong_buffer: must be in \[0, rollout.max_new_tokens = 24\]"),
        ("grpo.dynamic_max_extra_rollouts=-1", "grpo.dynamic_max_extra_rollouts: must be >= 0"),
        ("grpo.importance_level=seq", "grpo.importance_level"),
        ("grpo.kl_estimator=k2", "grpo.kl_estimator"),
    ],
)
def test_bad_variant_settings_are_one_line_errors(override, message):
    from vlmgrpo.config import load_config
    from vlmgrpo.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config("demo", [override])


def test_dynamic_sampling_refuses_overlap_and_delta_needs_ppo():
    from vlmgrpo.config import load_config
    from vlmgrpo.errors import ConfigError

    with pytest.raises(ConfigError, match="grpo.dynamic_sampling: not with rollout.overlap"):
        load_config("demo", ["grpo.dynamic_sampling=true", "rollout.overlap=true", "grpo.loss=ppo"])
    with pytest.raises(ConfigError, match="grpo.delta: the two-sided clip applies to grpo.loss 'ppo' only"):
        load_config("demo", ["grpo.delta=2.0", "grpo.loss=is"])


@pytest.mark.slow  # ~40 s: two gloo processes
@pytest.mark.parametrize("reward,extra,bound_hit", [(HALF_FLAT, 8, 0.0), (FLAT, 2, 1.0)])
def test_dynamic_sampling_and_iterations_under_two_processes(
    reward, extra, bound_hit, tiny_vlm_dir, tmp_path
):
    """Every rank runs the same number of rounds and updates (no hang), also when the bound is hit
    and a rank keeps no group at all (it trains on one zero-advantage group)."""
    from test_distributed import _run

    over = [reward, "grpo.dynamic_sampling=true", f"grpo.dynamic_max_extra_rollouts={extra}", "grpo.loss=ppo"]
    over += ["grpo.num_iterations=2", "train.save_every=0"]
    _run(tiny_vlm_dir, tmp_path / "run", 2, *[a for o in over for a in ("--set", o)])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        assert r["dynamic/bound_hit"] == bound_hit and r["update/iterations"] == 2
        assert (r["grad_norm"] > 0) == (bound_hit == 0.0)  # no spread anywhere: nothing to learn


def test_iterations_metrics_when_the_first_update_is_not_finite():
    """grpo.num_iterations = 2 whose first update's loss is non-finite (no lr, no grad_norm in its
    row) and second is fine: one row with the good update's lr, not a KeyError that stops the run;
    the step counts as trained (half its updates skipped), not as a skipped step."""
    from vlmgrpo.trainer import _mean_updates, _skipped

    bad = {"loss": float("nan"), "update/skipped_nonfinite": 1.0}
    good = {"loss": 0.5, "grad_norm": 2.0, "lr": 1e-5, "loss/kl": 0.1}
    row = _mean_updates([bad, good])
    assert row["lr"] == 1e-5 and row["grad_norm"] == 2.0 and row["update/iterations"] == 2.0
    assert row["update/skipped_nonfinite"] == 0.5 and not _skipped(row)
    assert _skipped(_mean_updates([bad, bad])) and _skipped(bad)
    assert _mean_updates([good, bad])["update/skipped_nonfinite"] == 0.5


def test_kl_reference_is_the_warm_started_policy(tiny_vlm_dir, tmp_path):
    """With a warm start, the KL reference is the policy GRPO starts from: at the first on-policy
    step the policy equals it, so the KL is 0. (The copy used to be taken before the warm start:
    beta > 0 then pulled the policy back toward the untrained model.)"""
    rows = _train(
        tiny_vlm_dir, tmp_path / "run", HASH, "warmup.steps=3", "warmup.lr=1e-2", "grpo.beta=0.05",
        "grpo.ref.kind=copy",
    )  # fmt: skip
    assert rows[0]["phase"] == "warmup" and rows[-1]["phase"] == "grpo"
    grpo = [r for r in rows if r["phase"] == "grpo"]
    assert grpo[0]["loss/kl"] == pytest.approx(0.0, abs=1e-9)


def test_adapter_reference_with_a_warm_start_is_refused():
    from vlmgrpo.config import load_config
    from vlmgrpo.errors import ConfigError

    with pytest.raises(ConfigError, match="grpo.ref.kind 'adapter' with warmup.steps > 0"):
        load_config("img2code-tiny", ["warmup.steps=5"])
