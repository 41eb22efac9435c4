"""Per-token log-probs of the completion tokens under the policy (the training forward).

Only completion positions reach the LM head, and the head runs in token chunks
(`core.chunked_token_logps`), so no [B, T, V] fp32 logits tensor ever exists. `LogpModel` is an
`nn.Module` so that DDP/FSDP wrap the whole computation and see every parameter it uses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlmgrpo.grpo.core import chunked_token_logps
from vlmgrpo.rollout import RolloutBatch


def _split_head(model: Any) -> tuple[Any, Any] | None:
    """(trunk returning hidden states, lm_head) for HF causal/VLM models, through peft."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    trunk, head = getattr(base, "model", None), getattr(base, "lm_head", None)
    if trunk is None or head is None:
        return None
    return trunk, head


class LogpModel(nn.Module):
    """forward(batch) -> [B, C] log-probs of `batch.completion_ids` at `temperature`;
    forward(batch, t, with_entropy=True) -> (log-probs, token entropies [B, C], no grad), the
    entropies taken from the same logits (no second forward)."""

    def __init__(self, policy: nn.Module, chunk_tokens: int = 4096) -> None:
        super().__init__()
        self.policy = policy
        self.chunk_tokens = chunk_tokens
        # FSDP2 shards the root's own parameters (lm_head, embeddings): the forward must then go
        # through the root module so that its hooks gather them (set by vlmgrpo.dist.wrap)
        self.full_forward = False

    def forward(
        self, batch: RolloutBatch, temperature: float = 1.0, with_entropy: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        inputs = batch.model_inputs()
        p_len, c_len = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
        temp = temperature if temperature > 0 else 1.0
        split = None if self.full_forward else _split_head(self.policy)
        if split is None:  # unknown layout: fall back to logits of the completion positions
            logits = self.policy(**inputs, logits_to_keep=c_len + 1).logits[:, :-1]
            from vlmgrpo.grpo.core import entropy_from_logits, selective_log_softmax

            logps = selective_log_softmax(logits.float() / temp, batch.completion_ids)
            return (logps, entropy_from_logits(logits.float() / temp)) if with_entropy else logps
        trunk, head = split
        hidden = trunk(**inputs, use_cache=False).last_hidden_state  # [B, P + C, H]
        hidden = hidden[:, p_len - 1 : p_len + c_len - 1]  # position t predicts token t + 1
        return chunked_token_logps(
            hidden,
            head.weight,
            batch.completion_ids,
            chunk_tokens=self.chunk_tokens,
            temperature=temp,
            lm_head_bias=getattr(head, "bias", None),
            with_entropy=with_entropy,
        )
