"""LoRA through the fused decode step of the static-cache engine (rollout/fast.py): the adapters are
merged into sampling copies of the weights (W + s B A), never into the trained weights. Tiny real
models with real peft adapters, CPU, fp32: greedy tokens identical to HF generate on the unmerged
adapter model, log-probs within fp32 rounding, base weights bit-identical."""

from __future__ import annotations

import pytest
import torch
from test_fast_rollout import VLMS, _prompts

from vlmgrpo.config import LoraConfig, ModelConfig
from vlmgrpo.grpo.logps import LogpModel
from vlmgrpo.models import load_policy
from vlmgrpo.rollout import decode_ops, fast
from vlmgrpo.rollout import hf as hf_rollout

TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]  # the q/k/v copy, o_proj and an MLP weight


def _lora(request, fixture: str, targets=TARGETS, text_only: bool = False, **kw):
    cfg = ModelConfig(name_or_path=str(request.getfixturevalue(fixture)), text_only=text_only)
    cfg.lora = LoraConfig(enabled=not kw, r=4, alpha=8, dropout=0.1, target_modules=targets)
    torch.manual_seed(0)
    model, proc = load_policy(cfg)
    if kw:  # a peft option the vlmgrpo config does not expose (use_dora)
        from peft import LoraConfig as PeftLora
        from peft import get_peft_model

        model = get_peft_model(model, PeftLora(r=4, target_modules=targets, **kw))
    with torch.no_grad():  # non-zero B: the adapters change the outputs
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return model, proc


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("fixture", [*VLMS, "tiny_text_lm_dir"])
def test_lora_merged_sampling_equals_unmerged_adapter(fixture, request):
    text_only = fixture == "tiny_text_lm_dir"
    model, proc = _lora(request, fixture, text_only=text_only)
    prompts = _prompts(with_images=not text_only)
    before = _snapshot(model)
    ref = hf_rollout.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=16, return_logps=True)
    out = fast.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=16, return_logps=True)
    eng = fast.engine_for(model)
    assert eng.fused is not None and eng.fused.lora  # the fused step, with merged copies
    assert torch.equal(out.completion_ids, ref.completion_ids)
    assert torch.equal(out.completion_mask, ref.completion_mask)
    assert (out.sample_logps - ref.sample_logps).abs().max() < 1e-5
    # the adapters matter here: the base model alone decodes differently
    with model.disable_adapter():
        base = hf_rollout.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=16)
    assert not torch.equal(base.completion_ids, ref.completion_ids)
    after = _snapshot(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)  # nothing written, bit for bit


@pytest.mark.parametrize("fixture", VLMS)
def test_lora_sampling_logps_equal_training_forward(fixture, request):
    model, proc = _lora(request, fixture)
    torch.manual_seed(1)
    batch = fast.sample(
        model, proc, _prompts(), 3, temperature=0.9, top_k=30, max_new_tokens=10, return_logps=True
    )
    assert fast.engine_for(model).fused is not None
    model.eval()  # LoRA dropout off, as during sampling
    with torch.no_grad():
        logps = LogpModel(model)(batch, 0.9)
    mask = batch.completion_mask.bool()
    assert mask.sum() > 0 and (logps - batch.sample_logps).abs()[mask].max() < 1e-5


def test_adapter_updates_and_disable_reach_the_merged_copies(tiny_vlm_dir, request):
    """The optimiser steps the adapters (and possibly the base) in place between rollouts; a rollout
    inside peft's disable_adapter() samples the base model (the KL reference)."""
    model, proc = _lora(request, "tiny_vlm_dir")
    prompts = _prompts()
    fast.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=10)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_A" in n:
                p.mul_(-2.0)
    ref = hf_rollout.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=10)
    out = fast.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=10)
    assert torch.equal(out.completion_ids, ref.completion_ids)
    with model.disable_adapter():
        ref = hf_rollout.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=10)
        out = fast.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=10)
    assert torch.equal(out.completion_ids, ref.completion_ids)
    out = fast.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=10)  # adapters back on
    assert not torch.equal(out.completion_ids, ref.completion_ids)


def test_dora_falls_back_to_the_module_step(tiny_vlm_dir, request):
    """DoRA's output is not x (W + s B A)^T: no merged copy, the layers' own modules decode."""
    model, proc = _lora(request, "tiny_vlm_dir", targets=["q_proj", "v_proj"], use_dora=True)
    assert not decode_ops.FusedWeights.supported(fast.FastEngine(model, fused=False).layers)
    prompts = _prompts()
    ref = hf_rollout.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=10)
    out = fast.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=10)
    assert fast.engine_for(model).fused is None
    assert torch.equal(out.completion_ids, ref.completion_ids)
    with pytest.raises(ValueError, match="mergeable LoRA"):
        fast.FastEngine(model, fused=True)


def test_merge_into_bf16_copy_rounds_once_and_leaves_w_alone(tiny_vlm_dir, request):
    model, _ = _lora(request, "tiny_vlm_dir", targets=["q_proj"])
    model.to(torch.bfloat16)
    layer = fast.FastEngine(model, fused=False).layers[0].self_attn.q_proj
    w = layer.base_layer.weight
    w0 = w.detach().clone()
    out = torch.empty_like(w)
    decode_ops.merged_weight_into(layer, out)
    a, b = layer.lora_A["default"].weight.float(), layer.lora_B["default"].weight.float()
    want = (w0.float() + layer.scaling["default"] * (b @ a)).to(torch.bfloat16)
    assert torch.equal(out, want) and torch.equal(w, w0)
    assert not torch.equal(out, w0)


def test_lora_with_checkpointing_loads_without_a_deprecation_warning(tiny_vlm_dir):
    """peft reads transformers' deprecated `is_gradient_checkpointing`: every LoRA run with
    gradient checkpointing (geometry3k) printed a FutureWarning that is not the user's to fix."""
    import warnings

    cfg = ModelConfig(name_or_path=str(tiny_vlm_dir), gradient_checkpointing=True)
    cfg.lora = LoraConfig(enabled=True, r=4, alpha=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_policy(cfg)
    assert not [w for w in caught if "checkpointing" in str(w.message)]
