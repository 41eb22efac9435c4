"""The static-cache rollout engine (rollout/fast.py) and the fast update pass (grpo/fastpath.py) on
tiny real models, CPU, fp32, graphs off: greedy outputs identical to HF generate, sampling
log-probs equal to the training forward, HF's sampling filters, and gradients equal to the plain
update."""

from __future__ import annotations

import pytest
import torch

from vlmgrpo.config import GRPOConfig, ModelConfig
from vlmgrpo.grpo import fastpath
from vlmgrpo.grpo.logps import LogpModel
from vlmgrpo.models import load_policy
from vlmgrpo.rollout import Prompt, decode_ops, fast
from vlmgrpo.rollout import hf as hf_rollout

VLMS = ["tiny_vlm_dir", "tiny_qwen3_vl_dir"]


def _image(size: int, seed: int):
    from vlmgrpo.data.scenes import SceneDataset

    return SceneDataset(1, seed=seed, size=size)[0]["images"][0]


def _prompts(with_images: bool = True) -> list[Prompt]:
    """Two prompts of different lengths (and image sizes): left padding and per-row 3D positions."""
    qs = ["What is this?", "Describe the picture in great detail: every object, colour and position."]
    if not with_images:
        return [Prompt(messages=[{"role": "user", "content": q}], text=q) for q in qs]
    return [
        Prompt(
            messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            images=[_image(size, seed)],
            text=q,
        )
        for q, size, seed in zip(qs, (56, 84), (3, 4))
    ]


def _load(request, fixture: str, text_only: bool = False):
    torch.manual_seed(0)
    return load_policy(ModelConfig(name_or_path=str(request.getfixturevalue(fixture)), text_only=text_only))


@pytest.mark.parametrize("fixture", [*VLMS, "tiny_text_lm_dir"])
def test_greedy_equals_hf_generate(fixture, request):
    text_only = fixture == "tiny_text_lm_dir"
    model, proc = _load(request, fixture, text_only)
    prompts = _prompts(with_images=not text_only)
    ref = hf_rollout.sample(model, proc, prompts, 3, temperature=0, max_new_tokens=20, return_logps=True)
    out = fast.sample(model, proc, prompts, 3, temperature=0, max_new_tokens=20, return_logps=True)
    assert torch.equal(out.completion_ids, ref.completion_ids)
    assert torch.equal(out.completion_mask, ref.completion_mask)
    assert torch.equal(out.prompt_ids, ref.prompt_ids) and torch.equal(out.prompt_mask, ref.prompt_mask)
    assert out.completions == ref.completions
    assert out.prompt_extra.keys() == ref.prompt_extra.keys()
    assert (out.sample_logps - ref.sample_logps).abs().max() < 1e-5
    assert len(out.vision_rows) == len(ref.vision_rows) == 6
    for a, b in zip(out.vision_rows, ref.vision_rows):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fixture", VLMS)
def test_greedy_per_row_eos_equals_hf_generate(fixture, request):
    """Rows that end at different steps: same tokens, masks, padding and length as HF generate."""
    model, proc = _load(request, fixture)
    prompts = _prompts()
    first = fast.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=16)
    # make a token that greedy emits mid-way in some rows (not all) an extra EOS
    row_tokens = [set(r[2:12].tolist()) for r in first.completion_ids]
    stop = next(t for t in row_tokens[0] if not all(t in s for s in row_tokens))
    model.generation_config.eos_token_id = [model.generation_config.eos_token_id, stop]
    ref = hf_rollout.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=16)
    out = fast.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=16)
    assert ref.completion_mask.sum(1).min() < ref.completion_mask.shape[1]  # some row stopped early
    assert torch.equal(out.completion_ids, ref.completion_ids)
    assert torch.equal(out.completion_mask, ref.completion_mask)


@pytest.mark.parametrize("fixture", VLMS)
@pytest.mark.parametrize("sampling", [dict(temperature=0.8), dict(temperature=0.7, top_k=20, top_p=0.9)])
def test_sampling_logps_equal_training_forward(fixture, sampling, request):
    model, proc = _load(request, fixture)
    torch.manual_seed(1)
    batch = fast.sample(model, proc, _prompts(), 4, max_new_tokens=12, return_logps=True, **sampling)
    assert batch.completion_ids.shape[0] == 8 and batch.group_size == 4
    with torch.no_grad():
        logps = LogpModel(model)(batch, sampling["temperature"])
    mask = batch.completion_mask.bool()
    assert mask.sum() > 0
    assert (logps - batch.sample_logps).abs()[mask].max() < 1e-5
    assert (batch.sample_logps[~mask] == 0).all()
    # never a suppressed id (vision / role tokens, embedding padding)
    vocab = model.get_output_embeddings().weight.shape[0]
    bad = set(hf_rollout.suppressed_ids(proc, vocab))
    assert not bad & set(batch.completion_ids[mask].tolist())


def test_repeated_calls_reuse_the_engine_and_stay_correct(tiny_vlm_dir):
    """Different group sizes, prompt lengths and token budgets through one engine (its cached
    states) give the same greedy tokens as HF generate each time."""
    model, proc = load_policy(ModelConfig(name_or_path=str(tiny_vlm_dir)))
    prompts = _prompts()
    for ps, g, new in [(prompts, 2, 8), (prompts[:1], 3, 12), (prompts, 2, 8), (prompts[1:], 1, 30)]:
        ref = hf_rollout.sample(model, proc, ps, g, temperature=0, max_new_tokens=new)
        out = fast.sample(model, proc, ps, g, temperature=0, max_new_tokens=new)
        assert torch.equal(out.completion_ids, ref.completion_ids)
    eng = fast.engine_for(model)
    assert eng.use_graphs is False and 1 <= len(eng.states) <= eng.max_states


@pytest.mark.parametrize("fixture", VLMS)
def test_module_path_and_lora_equal_hf_generate(fixture, request):
    """The module-by-module decode step (used for LoRA layers) gives HF generate's greedy tokens,
    with and without LoRA adapters (non-zero, so they change the outputs)."""
    from vlmgrpo.config import LoraConfig

    model, proc = _load(request, fixture)
    prompts = _prompts()
    eng = fast.FastEngine(model, fused=False)
    assert eng.fused is None
    ref = hf_rollout.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=12)
    assert torch.equal(
        eng.sample(proc, prompts, 2, temperature=0, max_new_tokens=12).completion_ids, ref.completion_ids
    )

    cfg = ModelConfig(name_or_path=str(request.getfixturevalue(fixture)))
    cfg.lora = LoraConfig(enabled=True, r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"])
    torch.manual_seed(0)
    lora, proc = load_policy(cfg)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    ref = hf_rollout.sample(lora, proc, prompts, 2, temperature=0, max_new_tokens=12)
    eng = fast.FastEngine(lora, fused=False)  # LoRA layers through their own modules
    out = eng.sample(proc, prompts, 2, temperature=0, max_new_tokens=12)
    assert eng.fused is None
    assert torch.equal(out.completion_ids, ref.completion_ids)


class _SwiGLUNoActFn(torch.nn.Module):
    """An MLP shaped like Liger's LigerSwiGLUMLP: the same projections, SiLU fused into its own
    forward, no `act_fn` attribute."""

    def __init__(self, mlp: torch.nn.Module) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def test_mlp_without_act_fn_runs_the_module_step(tiny_vlm_dir):
    """Liger's kernels replace the MLP with one that has no `act_fn`: the engine used to read
    `mlp.act_fn` unconditionally and fail to build (H200 run, 2026-12-05); now it takes the
    module step, with HF generate's greedy tokens."""
    model, proc = load_policy(ModelConfig(name_or_path=str(tiny_vlm_dir)))
    for ly in model.model.language_model.layers:
        ly.mlp = _SwiGLUNoActFn(ly.mlp)
    prompts = _prompts()
    ref = hf_rollout.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=12)
    eng = fast.FastEngine(model)
    assert eng.fused is None
    assert torch.equal(
        eng.sample(proc, prompts, 2, temperature=0, max_new_tokens=12).completion_ids, ref.completion_ids
    )


def test_weight_updates_reach_the_fused_copies(tiny_vlm_dir):
    """q/k/v are copied into one matrix for the fused step: an in-place update (what the optimiser
    does between rollouts) must be seen by the next rollout."""
    model, proc = load_policy(ModelConfig(name_or_path=str(tiny_vlm_dir)))
    prompts = _prompts()
    fast.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=10)
    assert fast.engine_for(model).fused is not None
    with torch.no_grad():
        for ly in fast.engine_for(model).layers:
            ly.self_attn.k_proj.weight.mul_(3.0)
            ly.self_attn.q_proj.bias.add_(0.5)
    ref = hf_rollout.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=10)
    out = fast.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=10)
    assert torch.equal(out.completion_ids, ref.completion_ids)


@pytest.mark.slow
def test_compiled_layers_equal_hf_generate(tiny_vlm_dir):
    model, proc = load_policy(ModelConfig(name_or_path=str(tiny_vlm_dir)))
    eng = fast.FastEngine(model, compile=True)
    prompts = _prompts()
    out = eng.sample(proc, prompts, 2, temperature=0, max_new_tokens=12)
    assert eng.compile and not eng.compile_error
    ref = hf_rollout.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=12)
    assert torch.equal(out.completion_ids, ref.completion_ids)


def test_filters_match_hf_warpers():
    from transformers.generation.logits_process import (
        SuppressTokensLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(16, 50) * 3
    logits[3, :10] = 1.0  # ties at the top-k boundary
    sup_ids = [0, 7, 49]
    sup = torch.zeros(50, dtype=torch.bool)
    sup[sup_ids] = True
    for t, k, p in [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.9, 10, 0.5), (1.0, 1, 1.0)]:
        ref = SuppressTokensLogitsProcessor(sup_ids)(None, logits.clone())
        ref = TemperatureLogitsWarper(t)(None, ref)
        if k:
            ref = TopKLogitsWarper(k)(None, ref)
        if p < 1:
            ref = TopPLogitsWarper(p)(None, ref)
        ours = decode_ops.filter_scores(logits / t, sup, k, p)
        assert torch.equal(torch.isinf(ours), torch.isinf(ref)), (t, k, p)
        assert torch.allclose(ours[~torch.isinf(ours)], ref[~torch.isinf(ref)])


def test_exponential_race_draws_from_p():
    torch.manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    draws = decode_ops.draw(p.expand(40000, -1).contiguous())
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    assert (freq - p).abs().max() < 0.01
    assert freq[4] == 0


def test_unsupported_architecture_falls_back_to_hf(tiny_vlm_dir, monkeypatch):
    model, proc = load_policy(ModelConfig(name_or_path=str(tiny_vlm_dir)))
    monkeypatch.setattr(fast, "SUPPORTED", ("qwen3",))
    assert "qwen2_5_vl" in fast.unsupported_reason(model)
    assert fast.choose_backend("auto", model) == "hf"
    prompts = _prompts()
    out = fast.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=6)
    ref = hf_rollout.sample(model, proc, prompts, 2, temperature=0, max_new_tokens=6)
    assert torch.equal(out.completion_ids, ref.completion_ids)
    with pytest.raises(ValueError, match="fast rollout engine"):
        fast.FastEngine(model)
    # FSDP (synced_gpus): sharded weights, so HF generate with synced_gpus, even when supported
    monkeypatch.setattr(fast, "SUPPORTED", fast.MROPE)
    calls = []
    monkeypatch.setattr(fast.hf_rollout, "sample", lambda *a, **kw: calls.append(kw) or "hf")
    assert fast.sample(model, proc, prompts, 2, max_new_tokens=6, synced_gpus=True) == "hf"
    assert calls[0]["synced_gpus"] is True


def test_choose_backend(tiny_vlm_dir):
    model, _ = load_policy(ModelConfig(name_or_path=str(tiny_vlm_dir)))
    assert fast.choose_backend("auto", model) == "hf"  # CPU: HF generate
    assert fast.choose_backend("fast", model) == "fast"
    assert fast.choose_backend("hf", model) == "hf"


# ---------------------------------------------------------------------------------------- fastpath


class _GradCapture:
    """An 'optimiser' that records the gradients it would have stepped with."""

    def __init__(self, model) -> None:
        self.model, self.grads = model, None
        self.param_groups = [{"lr": 0.0}]

    def step(self) -> None:
        self.grads = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("fixture", VLMS)
@pytest.mark.parametrize("aggregation", ["grpo", "dapo"])
def test_fast_update_gradients_equal_plain_update(fixture, aggregation, request):
    """Token-budget micro-batches + one vision pass per image give the gradients of one forward
    over each whole rollout batch (the trainer's update with micro_batch_seqs=0)."""
    model, proc = _load(request, fixture)
    torch.manual_seed(0)
    b1 = fast.sample(model, proc, _prompts(), 3, temperature=1.0, max_new_tokens=10)
    b2 = fast.sample(model, proc, _prompts()[:1], 3, temperature=1.0, max_new_tokens=7)
    advs = [torch.randn(len(b1)), torch.randn(len(b2))]
    lm, grpo = LogpModel(model), GRPOConfig(aggregation=aggregation)
    kw = dict(grpo=grpo, temperature=1.0, max_new_tokens=10, max_grad_norm=0.0)
    ref_opt, opt = _GradCapture(model), _GradCapture(model)
    ref = fastpath.update(model, lm, ref_opt, [b1, b2], advs, token_budget=10**9, share_vision=False, **kw)
    out = fastpath.update(model, lm, opt, [b1, b2], advs, token_budget=60, share_vision=True, **kw)
    assert out["update/micro_batches"] > ref["update/micro_batches"] == 2
    assert (
        ref["grad_norm"] > 0
    )  # real gradients are compared    assert out["update/tokens"] == ref["update/tokens"]
    assert out["update/padded_tokens"] <= ref["update/padded_tokens"]
    assert abs(out["loss"] - ref["loss"]) < 1e-5 and abs(out["grad_norm"] - ref["grad_norm"]) < 1e-4
    assert ref_opt.grads.keys() == opt.grads.keys()
    assert any("visual" in k for k in opt.grads)  # the vision tower gets its gradient
    for k, g in ref_opt.grads.items():
        assert torch.allclose(opt.grads[k], g, atol=1e-6, rtol=1e-4), k
    assert "get_image_features" not in fastpath._trunk(model).__dict__  # patch removed


def test_plan_micro_batches_covers_rows_within_budget(tiny_vlm_dir):
    model, proc = load_policy(ModelConfig(name_or_path=str(tiny_vlm_dir)))
    torch.manual_seed(0)
    batch = fast.sample(model, proc, _prompts(), 4, temperature=1.0, max_new_tokens=12)
    adv = torch.arange(len(batch), dtype=torch.float32)
    budget = 3 * (batch.prompt_ids.shape[1] + batch.completion_ids.shape[1])
    plan = fastpath.plan_micro_batches([batch], [adv], budget)
    assert sorted(a for mb in plan for a in mb.advantages.tolist()) == adv.tolist()
    for mb in plan:
        b = mb.batch
        assert len(b) == 1 or len(b) * (b.prompt_ids.shape[1] + b.completion_ids.shape[1]) <= budget
        assert b.prompt_mask[:, 0].any() and b.completion_mask[:, -1].any()  # trimmed
        assert [k for k in mb.image_keys] == [(0, int(r) // 4) for r in mb.advantages.tolist()]
    # trimming keeps the training log-probs of the kept tokens
    t = fastpath.trim(batch.select([0]))
    with torch.no_grad():
        full, cut = LogpModel(model)(batch.select([0])), LogpModel(model)(t)
    n = t.completion_ids.shape[1]
    assert torch.allclose(full[:, :n], cut, atol=1e-5)


def test_adamw_fp32_state_matches_torch_adamw_and_rounds_unbiased():
    torch.manual_seed(0)
    w = torch.randn(64, 32)
    p1, p2 = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    o1, o2 = fastpath.AdamWFP32State([p1], **kw), torch.optim.AdamW([p2], **kw)
    o1.CHUNK = 100  # several slices per tensor
    for _ in range(5):
        g = torch.randn_like(w)
        p1.grad, p2.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    assert torch.allclose(p1, p2, atol=1e-6)
    # bf16 weights: an update far below bf16 resolution still moves the weights on average
    x = torch.full((200_000,), 1.0)
    lifted = x + 1e-4  # bf16 spacing at 1.0 is 2**-7 ~ 0.0078: round-to-nearest loses it
    r = fastpath._round_to(lifted, torch.bfloat16, stochastic=True).float()
    assert abs(r.mean().item() - (1.0 + 1e-4)) < 2e-5
    assert (fastpath._round_to(lifted, torch.bfloat16, stochastic=False).float() == 1.0).all()
    pb = torch.nn.Parameter(torch.randn(8, 8).to(torch.bfloat16))
    pb.grad = torch.randn(8, 8).to(torch.bfloat16)
    o = fastpath.AdamWFP32State([pb], lr=1e-3)
    o.step()
    assert o.state[pb]["exp_avg"].dtype == torch.float32 and pb.dtype == torch.bfloat16


def test_adamw_fp32_state_rounding_ignores_the_global_rng():
    """DDP replicas sample different prompts, so their global RNGs part ways; the rounding noise
    depends only on (seed, parameter, step), so the replicas' bf16 weights stay identical."""
    torch.manual_seed(0)
    w, grads = (
        torch.randn(64, 64).to(torch.bfloat16),
        [torch.randn(64, 64).to(torch.bfloat16) for _ in range(3)],
    )
    finals = []
    for rank in (0, 1):
        p = torch.nn.Parameter(w.clone())
        opt = fastpath.AdamWFP32State([p], lr=1e-5, seed=7)
        for g in grads:
            torch.manual_seed(100 + rank)  # a different global RNG state on each "rank"
            torch.rand(1000 * (rank + 1))
            p.grad = g.clone()
            opt.step()
        finals.append(p.detach().clone())
    assert torch.equal(finals[0], finals[1])
    assert not torch.equal(finals[0], w)  # lr 1e-5 is below bf16's spacing: only the rounding moved it
    other = torch.nn.Parameter(w.clone())
    opt = fastpath.AdamWFP32State([other], lr=1e-5, seed=8)
    for g in grads:
        other.grad = g.clone()
        opt.step()
    assert not torch.equal(other.detach(), finals[0])  # the seed does choose the noise
