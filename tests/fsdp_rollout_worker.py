"""Run by tests/test_fast_fsdp.py under torchrun (gloo, CPU): a tiny policy sharded with
`dist.wrap(..., "fsdp2")` samples through the fast engine (weights gathered once per rollout);
each rank saves its tokens and log-probs for the test to compare with one process.

usage: python -m torch.distributed.run --nproc_per_node=2 tests/fsdp_rollout_worker.py MODEL OUT [--lora]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def setup(model_dir: str, lora: bool):
    """The policy (and processor) as every process builds it: same weights, same adapters."""
    from vlmgrpo.config import LoraConfig, ModelConfig
    from vlmgrpo.models import load_policy

    cfg = ModelConfig(name_or_path=model_dir)
    if lora:
        cfg.lora = LoraConfig(
            enabled=True, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj"]
        )
    torch.manual_seed(0)
    model, proc = load_policy(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return model, proc


def rollouts(model, proc, rank: int, synced: bool) -> dict:
    """Rank r's two rollouts (greedy, then sampled with a fixed seed); ranks decode different
    prompts for different numbers of steps, as in training."""
    from test_fast_rollout import _prompts

    from vlmgrpo.rollout import fast

    prompts = _prompts()[rank % 2 :] + _prompts()[: rank % 2]
    new = 10 + 4 * rank
    kw = dict(max_new_tokens=new, return_logps=True, synced_gpus=synced)
    g = fast.sample(model, proc, prompts, 2, temperature=0, **kw)
    torch.manual_seed(100 + rank)
    s = fast.sample(model, proc, prompts, 2, temperature=0.9, top_k=40, **kw)
    return {
        "greedy_ids": g.completion_ids,
        "greedy_logps": g.sample_logps,
        "sampled_ids": s.completion_ids,
        "sampled_logps": s.sample_logps,
    }


def main() -> None:
    from torch.distributed.tensor import DTensor

    from vlmgrpo import dist
    from vlmgrpo.grpo.logps import LogpModel
    from vlmgrpo.rollout import fast
    from vlmgrpo.rollout import hf as hf_rollout

    model_dir, out, lora = sys.argv[1], Path(sys.argv[2]), "--lora" in sys.argv
    info, device = dist.init("cpu")
    model, proc = setup(model_dir, lora)
    dist.wrap(LogpModel(model), "fsdp2", info, device)
    ids = torch.tensor([[hf_rollout.tokenizer_of(proc).pad_token_id]])
    with torch.no_grad():  # FSDP2's lazy init, as the trainer's _root_forward
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    res = rollouts(model, proc, info.rank, synced=True)
    eng = fast.engine_for(model)
    res["fused"] = eng.fused is not None
    res["lora"] = eng.fused is not None and eng.fused.lora
    res["resharded"] = all(isinstance(p, DTensor) for p in model.parameters())
    torch.save(res, out / f"rank{info.rank}.pt")
    dist.barrier(info)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
