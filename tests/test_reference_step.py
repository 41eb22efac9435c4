"""The trainer's update against an independent plain-PyTorch GRPO step.

The reference below uses no code from `grpo/core.py`, `grpo/fastpath.py`, `grpo/logps.py` or the
trainer: per row, one forward of an fp64 copy of the model on the unpadded prompt + completion,
log_softmax of the logits at temperature T, gather of the completion tokens, and the loss written
from the formulas (on-policy, ratio 1, so d loss = -A d logp):

    grpo:    1/N sum_i 1/|o_i| sum_t -A_i logp_it          (per-sequence mean, length-biased)
    bnpo:    1/sum_i |o_i| sum_i sum_t -A_i logp_it        (global token mean: the trainer's choice)
    dapo:    same as bnpo
    dr_grpo: 1/(N * max_new_tokens) sum_i sum_t -A_i logp_it

N and sum_i |o_i| count the whole optimiser step: every micro-batch, every rank. Advantages are
(r - mean_g) / (std_g + eps) with the unbiased std, from rewards recomputed here from the
completion text. Completions end at different steps (EOS forced per row, some rows truncated at
max_new_tokens), so the four aggregations differ; grad_accum and micro_batch_seqs split the step
into several micro-batches of unequal size, and the 2-process case gives the ranks unequal token
counts.

Tolerance: the trainer runs in fp32 (batched, padded, chunked LM head), the reference in fp64
(one row at a time, no padding). Each gradient tensor must agree to rtol 1e-5 plus atol 2e-5 x the
largest |reference gradient| of the model; measured worst case 1.3e-6 of the largest gradient
(fp32's 6e-8 per operation over the tiny model's forward and backward; VLMGRPO_SHOW_ERR=1 prints
it). Mutations each of these tests caught (tried by hand, 2026-12-04): the token all-reduce in
`Trainer.update` deleted (two-process test), bnpo's normaliser or accumulation scale replaced by
grpo's (bnpo cases), advantages shifted by one row (every case).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from reward_fns_for_tests import completion_value

from vlmgrpo.config import load_config
from vlmgrpo.rollout import hf as hf_rollout
from vlmgrpo.trainer import Trainer

TESTS = Path(__file__).parent
REWARD = f"rewards=[{{name: '{TESTS / 'reward_fns_for_tests.py'}:hashed_slow'}}]"
MAX_NEW = 8
GROUP = 4


def cfg_for(model_dir, out, aggregation, *extra):
    return load_config(
        "demo",
        [
            f"model.name_or_path={model_dir}",
            f"train.output_dir={out}",
            "train.steps=1",
            "train.eval_every=0",
            "train.save_every=0",
            "train.log_samples_every=0",
            "train.tensorboard=false",
            "train.threads=1",
            "train.device=cpu",
            "warmup.steps=0",
            "data.kwargs={n: 64, size: 56}",
            "data.eval_kwargs={n: 8, size: 56}",
            "rollout.prompts_per_step=2",
            f"rollout.group_size={GROUP}",
            f"rollout.max_new_tokens={MAX_NEW}",
            "grpo.loss=pg",
            "grpo.beta=0",
            "grpo.adv_scale=group",
            "grpo.adv_unbiased=true",
            "grpo.adv_eps=1e-4",
            f"grpo.aggregation={aggregation}",
            "optim.max_grad_norm=0",
            REWARD,
            *extra,
        ],
    )


# ----------------------------------------------------------------------------------- uneven lengths


def lengths_for(n_rows: int, offset: int = 0, lo: int = 1, hi: int = MAX_NEW) -> list[int]:
    """Completion lengths in [lo, hi], a different one for neighbouring rows (rows of a group
    differ, and the pattern does not repeat with the group size)."""
    span = hi - lo + 1
    return [lo + (3 * i + offset) % span for i in range(n_rows)]


def force_lengths(batch, lengths, tok, eos_id):
    """The rollout with row i ending after lengths[i] tokens: EOS at step lengths[i] (a row of
    max_new_tokens tokens is left truncated, without EOS), pad after, mask 1 up to and including
    the EOS, texts decoded again. Earlier EOS tokens the random model sampled are replaced, so the
    length is exactly the one asked for."""
    ids = batch.completion_ids.clone()
    c = ids.shape[1]
    mask = torch.zeros_like(batch.completion_mask)
    eos_set = set(hf_rollout.eos_ids(tok, None))
    plain = tok.convert_tokens_to_ids("a")
    for i, n in enumerate(lengths):
        assert 1 <= n <= c
        for t in range(n):
            if int(ids[i, t]) in eos_set:
                ids[i, t] = plain
        if n < c:
            ids[i, n - 1] = eos_id
        ids[i, n:] = tok.pad_token_id
        mask[i, :n] = 1
    texts = tok.batch_decode([ids[i, :n] for i, n in enumerate(lengths)], skip_special_tokens=True)
    return dataclasses.replace(
        batch, completion_ids=ids, completion_mask=mask, completions=texts, sample_logps=None
    )


def install_lengths(tr, rank: int = 0, lo: int = 1, hi: int = MAX_NEW):
    """Make every rollout of `tr` end at forced, uneven lengths."""
    tok = hf_rollout.tokenizer_of(tr.proc)
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    real = tr.rollout

    def rollout(prompts, seeds=None):
        b = real(prompts, seeds)
        return force_lengths(b, lengths_for(len(b), offset=rank, lo=lo, hi=hi), tok, eos_id)

    tr.rollout = rollout


def spy_update(tr):
    """Record the batches each update sees and the gradients right before the optimizer step."""
    seen = {"batches": [], "grads": None}
    real_update, real_step = tr.update, tr.optimizer.step

    def update(batches, advantages):
        seen["batches"] = [dataclasses.replace(b) for b in batches]
        return real_update(batches, advantages)

    def step(*a, **kw):
        seen["grads"] = {
            n: p.grad.detach().clone() for n, p in tr.model.named_parameters() if p.grad is not None
        }
        return real_step(*a, **kw)

    tr.update = update
    tr.optimizer.step = step
    return seen


# ----------------------------------------------------------------------------------- the reference


def rows_of(batch):
    """Per row: (prompt ids without padding, extras without padding, vision tensors, completion
    ids up to its length, length, text). Lengths are read off the forced mask (1s then 0s)."""
    out = []
    for i in range(len(batch)):
        keep = batch.prompt_mask[i].bool()
        n = int(batch.completion_mask[i].sum())
        assert bool(batch.completion_mask[i, :n].all()) and not bool(batch.completion_mask[i, n:].any())
        extra = {k: v[i][keep] for k, v in batch.prompt_extra.items()}
        vision = batch.vision_rows[i] if batch.vision_rows else {}
        out.append(
            (batch.prompt_ids[i][keep], extra, vision, batch.completion_ids[i, :n], n, batch.completions[i])
        )
    return out


def reference_advantages(rewards: list[float], group: int, eps: float = 1e-4) -> list[float]:
    """(r - group mean) / (unbiased group std + eps), in fp64."""
    r = torch.tensor(rewards, dtype=torch.float64).view(-1, group)
    dev = r - r.mean(1, keepdim=True)
    std = (dev.pow(2).sum(1, keepdim=True) / (group - 1)).sqrt()
    return (dev / (std + eps)).view(-1).tolist()


def weights(rows, aggregation, max_new=MAX_NEW) -> list[float]:
    """The factor of each row's token sum in the loss (see the module docstring)."""
    n_rows, n_tokens = len(rows), sum(r[4] for r in rows)
    if aggregation == "grpo":
        return [1.0 / (n_rows * r[4]) for r in rows]
    if aggregation in ("bnpo", "dapo"):
        return [1.0 / n_tokens] * n_rows
    return [1.0 / (n_rows * max_new)] * n_rows  # dr_grpo


def reference_grads(model, rows, advantages, aggregation, temperature=1.0) -> dict[str, torch.Tensor]:
    """{name: fp64 gradient} of the GRPO loss over `rows` (all micro-batches and ranks of a step)."""
    ref = copy.deepcopy(model).double()
    ref.zero_grad(set_to_none=True)
    loss = torch.zeros((), dtype=torch.float64)
    for (p_ids, extra, vision, c_ids, n, _), adv, w in zip(
        rows, advantages, weights(rows, aggregation), strict=True
    ):
        ids = torch.cat([p_ids, c_ids])[None]
        kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        for k, v in extra.items():
            kw[k] = torch.cat([v, v.new_zeros(n)])[None]
        for k, v in vision.items():
            kw[k] = v.double() if v.is_floating_point() else v
        logits = ref(**kw).logits[0]  # [P + n, V]
        p = len(p_ids)
        logp = torch.log_softmax(logits[p - 1 : p - 1 + n] / temperature, dim=-1)  # position t predicts t + 1
        logp = logp.gather(-1, c_ids[:, None]).squeeze(-1)  # [n]
        loss = loss + w * (-adv * logp).sum()
    loss.backward()
    return {k: p.grad for k, p in ref.named_parameters() if p.grad is not None}


def reference_loss_value(rows, advantages, aggregation) -> float:
    """The pg loss's value: -A per token (the ratio is 1 in value), aggregated."""
    return float(sum(-a * r[4] * w for r, a, w in zip(rows, advantages, weights(rows, aggregation))))


def assert_grads_match(got: dict, want: dict):
    """rtol 1e-5, atol 2e-5 x max |want| (see the module docstring)."""
    assert got.keys() == want.keys()
    scale = max(float(g.abs().max()) for g in want.values())
    assert scale > 0
    if os.environ.get("VLMGRPO_SHOW_ERR"):  # how close: the worst error relative to the largest gradient
        worst = max(float((got[k].double() - want[k]).abs().max()) for k in want) / scale
        print(f"worst |got - want| / max|want| = {worst:.2e}")
    for k in want:
        torch.testing.assert_close(got[k].double(), want[k], rtol=1e-5, atol=2e-5 * scale, msg=k)


def rewards_and_advantages(rows):
    rewards = [completion_value(r[5]) for r in rows]
    return rewards, reference_advantages(rewards, GROUP)


# ----------------------------------------------------------------------------------- one process


def _prompts(tr, n):
    from vlmgrpo.sampling import build_prompt

    return [build_prompt(tr.sampler.next(), tr.cfg) for _ in range(n)]


CUTS = {
    # fixed row slices: 8 rows per rollout part -> 3 + 3 + 2, twice
    "rows": (("optim.micro_batch_seqs=3",), 6),
    # the fast path: length-bucketed, trimmed micro-batches of <= 60 padded tokens, one vision
    # pass per image (grpo/fastpath.py)
    "tokens": (("optim.token_budget=60", "optim.share_vision=true"), None),
}


@pytest.mark.parametrize("cut", sorted(CUTS))
@pytest.mark.parametrize("aggregation", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_train_step_equals_the_reference_step(aggregation, cut, tiny_vlm_dir, tmp_path):
    """A whole train_step (rollout -> rewards -> advantages -> update) with grad_accum 2, each
    rollout part cut into several micro-batches (by rows or by a token budget, see CUTS): the
    gradient before the optimizer step equals the reference over all 16 rows, and plain SGD moves
    every parameter by -lr x that gradient."""
    sets, n_micro = CUTS[cut]
    cfg = cfg_for(tiny_vlm_dir, tmp_path, aggregation, "optim.grad_accum=2", *sets)
    torch.manual_seed(0)
    tr = Trainer(cfg)
    lr = 0.5
    tr.optimizer = torch.optim.SGD([p for p in tr.model.parameters() if p.requires_grad], lr=lr)
    tr.scheduler = torch.optim.lr_scheduler.LambdaLR(tr.optimizer, lambda s: 1.0)
    install_lengths(tr)
    seen = spy_update(tr)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    metrics = tr.train_step()
    if n_micro is not None:
        assert metrics["update/micro_batches"] == n_micro
    assert metrics["update/micro_batches"] > 2  # more than one micro-batch per rollout part
    assert metrics["grad_norm"] > 0
    rows = [r for b in seen["batches"] for r in rows_of(b)]
    assert len(rows) == 16 and {r[4] for r in rows} == set(range(1, MAX_NEW + 1))
    rewards, adv = rewards_and_advantages(rows)
    assert len(set(rewards)) > 4  # the reward has spread within groups
    want = reference_grads(_at(tr.model, before), rows, adv, aggregation)
    assert_grads_match(seen["grads"], want)
    assert metrics["loss"] == pytest.approx(reference_loss_value(rows, adv, aggregation), rel=1e-5, abs=1e-6)
    # the step itself: p - lr * g for every parameter with a gradient (fp32 rounding of p)
    moved = 0
    for n, p in tr.model.named_parameters():
        if n in want:
            expect = before[n].double() - lr * want[n]
            torch.testing.assert_close(p.detach().double(), expect, rtol=1e-5, atol=1e-6, msg=n)
            moved += int(not torch.equal(p, before[n]))
    assert moved > 0.9 * len(want), (moved, len(want))


def _at(model, state):
    """A copy of `model` with the parameters `state` (the weights before the step)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(state[n])
    return m


def test_the_aggregations_differ_on_uneven_lengths(tiny_vlm_dir, tmp_path):
    """The reference itself separates grpo, bnpo (= dapo, by the trainer's accumulation choice) and
    dr_grpo on these lengths, so the parametrised test above is three different checks."""
    torch.manual_seed(0)
    tr = Trainer(cfg_for(tiny_vlm_dir, tmp_path, "grpo"))
    install_lengths(tr)
    rows = rows_of(tr.rollout(_prompts(tr, 2)))
    _, adv = rewards_and_advantages(rows)
    flat = {}
    for a in ("grpo", "bnpo", "dr_grpo"):
        g = reference_grads(tr.model, rows, adv, a)
        v = torch.cat([x.flatten() for x in g.values()])
        flat[a] = v / v.norm()  # direction only: dr_grpo is bnpo scaled when all rows are long
    for a, b in (("grpo", "bnpo"), ("grpo", "dr_grpo")):
        assert float((flat[a] - flat[b]).norm()) > 0.05, (a, b)


# ----------------------------------------------------------------------------------- two processes

RANK_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    sys.path.insert(0, {tests!r})
    from test_reference_step import cfg_for, install_lengths, spy_update
    from vlmgrpo.trainer import Trainer

    rank = int(os.environ["RANK"])
    out = {out!r}
    cfg = cfg_for({model!r}, out + "/run", "dapo", "optim.grad_accum=2", "rollout.prompts_per_step=2",
                  "train.dist_strategy=ddp", "rollout.seed_per_prompt=true")
    tr = Trainer(cfg)
    # rank 0's rows end after 1-4 tokens, rank 1's after 5-8: unequal token counts per rank
    install_lengths(tr, rank=rank, lo=1 + 4 * rank, hi=4 + 4 * rank)
    seen = spy_update(tr)
    dump = []
    for agg in ("grpo", "bnpo", "dr_grpo", "dapo"):
        tr.cfg.grpo.aggregation = agg
        weights = {{n: p.detach().clone() for n, p in tr.model.named_parameters()}}
        metrics = tr.train_step()
        dump.append(dict(agg=agg, metrics=metrics, batches=seen["batches"], grads=seen["grads"], weights=weights))
    torch.save(dump, f"{{out}}/rank-{{rank}}.pt")
    torch.distributed.destroy_process_group()
    """
)


def test_two_processes_with_unequal_tokens_equal_the_reference(tiny_vlm_dir, tmp_path):
    """2 gloo ranks under DDP, grad_accum 2, 1 prompt x 4 rows per rank and micro-batch; rank 0's
    rows hold 1-4 tokens, rank 1's 5-8. For each aggregation (one train_step each, AdamW stepping
    in between) both ranks hold the same gradient before the step, equal to the reference over
    both ranks' 16 rows at the weights of that step."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.format(tests=str(TESTS), out=str(tmp_path), model=str(tiny_vlm_dir)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    dumps = [torch.load(tmp_path / f"rank-{k}.pt", weights_only=False) for k in (0, 1)]
    model = _fresh_model(tiny_vlm_dir)
    for d0, d1 in zip(*dumps):
        assert d0["metrics"]["update/micro_batches"] == 2 and d0["metrics"]["grad_norm"] > 0
        rows0 = [r for b in d0["batches"] for r in rows_of(b)]
        rows1 = [r for b in d1["batches"] for r in rows_of(b)]
        n0, n1 = sum(r[4] for r in rows0), sum(r[4] for r in rows1)
        assert len(rows0) == len(rows1) == 8 and n0 < n1, (n0, n1)
        for k, g in d0["grads"].items():
            torch.testing.assert_close(g, d1["grads"][k], rtol=0, atol=0, msg=k)  # DDP: one gradient
        rows = rows0 + rows1  # groups never span ranks: the order of the groups does not matter
        _, adv = rewards_and_advantages(rows)
        want = reference_grads(_at(model, d0["weights"]), rows, adv, d0["agg"])
        assert_grads_match(d0["grads"], want)


def _fresh_model(model_dir):
    from vlmgrpo.config import ModelConfig
    from vlmgrpo.models import load_policy

    model, _ = load_policy(ModelConfig(name_or_path=str(model_dir), dtype="float32"))
    return model
