"""Compaction in the static-cache engine (rollout/fast.py): once rows end, the ones still decoding
move to the front and the step runs on fewer rows. Tiny real models, CPU, fp32: outputs equal
with and without compaction, and equal to HF generate, when rows end at different steps."""

from __future__ import annotations

import pytest
import torch
from test_fast_rollout import VLMS, _prompts

from vlmgrpo.config import ModelConfig
from vlmgrpo.grpo.logps import LogpModel
from vlmgrpo.models import load_policy
from vlmgrpo.rollout import fast
from vlmgrpo.rollout import hf as hf_rollout

LENGTHS = [3, 17, 1, 9, 24, 2, 12, 5]  # forced EOS positions of 8 rows: several compactions


def _engines(model):
    """Compaction at every step down to one row, and none; host checks every step."""
    on = fast.FastEngine(model, check_every=1, compact=True, compact_min=1)
    off = fast.FastEngine(model, check_every=1, compact=False)
    return on, off


@pytest.mark.parametrize("fixture", VLMS)
def test_forced_lengths_equal_with_and_without_compaction(fixture, request):
    torch.manual_seed(0)
    model, proc = load_policy(ModelConfig(name_or_path=str(request.getfixturevalue(fixture))))
    on, off = _engines(model)
    kw = dict(temperature=0, max_new_tokens=28, return_logps=True, stop_at=LENGTHS)
    a = on.sample(proc, _prompts(), 4, **kw)
    b = off.sample(proc, _prompts(), 4, **kw)
    assert a.completion_mask.sum(1).tolist() == LENGTHS  # each row ended where forced
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    assert a.completions == b.completions
    assert (a.sample_logps - b.sample_logps).abs().max() < 1e-5
    # the work: 8 rows stepped throughout without compaction, far fewer with it
    assert off.stats["decode_rows_frac"] == 1.0
    assert on.stats["decode_rows_frac"] < 0.6
    # the tokens before the forced EOS are the model's own greedy tokens (HF generate's)
    ref = hf_rollout.sample(model, proc, _prompts(), 4, temperature=0, max_new_tokens=28)
    for r, n in enumerate(LENGTHS):
        assert torch.equal(a.completion_ids[r, : n - 1], ref.completion_ids[r, : n - 1]), r


@pytest.mark.parametrize("fixture", VLMS)
def test_natural_eos_with_compaction_equals_hf_generate(fixture, request):
    """Rows that end by sampling an EOS id at different steps (no forcing), compacted as they go."""
    torch.manual_seed(0)
    model, proc = load_policy(ModelConfig(name_or_path=str(request.getfixturevalue(fixture))))
    prompts = _prompts()
    first = hf_rollout.sample(model, proc, prompts, 3, temperature=0, max_new_tokens=24)
    row_tokens = [r[1:20].tolist() for r in first.completion_ids]
    # an extra EOS id that some rows emit early and others late or never
    stop = max(
        {t for r in row_tokens for t in r},
        key=lambda t: len({r.index(t) if t in r else 99 for r in row_tokens}),
    )
    model.generation_config.eos_token_id = [model.generation_config.eos_token_id, stop]
    ref = hf_rollout.sample(model, proc, prompts, 3, temperature=0, max_new_tokens=24, return_logps=True)
    lengths = ref.completion_mask.sum(1).tolist()
    if lengths[0] > lengths[-1]:  # the rows still decoding last: compaction has rows to move
        prompts = prompts[::-1]
        ref = hf_rollout.sample(model, proc, prompts, 3, temperature=0, max_new_tokens=24, return_logps=True)
        lengths = ref.completion_mask.sum(1).tolist()
    assert lengths[0] < lengths[-1]  # the first group ends early, the second decodes on
    on, _ = _engines(model)
    out = on.sample(proc, prompts, 3, temperature=0, max_new_tokens=24, return_logps=True)
    assert torch.equal(out.completion_ids, ref.completion_ids)
    assert torch.equal(out.completion_mask, ref.completion_mask)
    assert (out.sample_logps - ref.sample_logps).abs().max() < 1e-5
    assert on.stats["decode_rows_frac"] < 1.0


def test_compacted_sampling_logps_equal_training_forward(tiny_vlm_dir):
    """Sampled tokens (not greedy) with rows moved around: each row's log-probs are still its own
    tokens' under the training forward (a row mix-up would break this)."""
    torch.manual_seed(0)
    model, proc = load_policy(ModelConfig(name_or_path=str(tiny_vlm_dir)))
    on, _ = _engines(model)
    torch.manual_seed(3)
    batch = on.sample(
        proc, _prompts(), 4, temperature=0.9, max_new_tokens=28, return_logps=True, stop_at=LENGTHS
    )
    assert batch.completion_mask.sum(1).tolist() == LENGTHS
    assert on.stats["decode_rows_frac"] < 0.6
    with torch.no_grad():
        logps = LogpModel(model)(batch, 0.9)
    mask = batch.completion_mask.bool()
    assert (logps - batch.sample_logps).abs()[mask].max() < 1e-5
    assert (batch.sample_logps[~mask] == 0).all()


def test_compaction_sizes_and_reuse(tiny_vlm_dir):
    model, proc = load_policy(ModelConfig(name_or_path=str(tiny_vlm_dir)))
    eng = fast.FastEngine(model, check_every=1, compact_min=2)
    assert eng._compact_sizes(8) == [8, 4, 2] and eng._compact_sizes(6) == [6, 3, 2]
    assert eng._compact_sizes(2) == [2] and fast.FastEngine(model, compact=False)._compact_sizes(8) == [8]
    # a second rollout through the same (permuted, then re-prefilled) state gives the same result
    kw = dict(temperature=0, max_new_tokens=28, stop_at=LENGTHS)
    a = eng.sample(proc, _prompts(), 4, **kw)
    b = eng.sample(proc, _prompts(), 4, **kw)
    assert torch.equal(a.completion_ids, b.completion_ids)
    with pytest.raises(ValueError, match="stop_at"):
        eng.sample(proc, _prompts(), 4, temperature=0, max_new_tokens=8, stop_at=[3, 4])
