"""Rollout: sample G completions for each prompt and return what the update needs.

`Prompt` is chat messages plus the images they reference; `encode_prompts` turns prompts into
model inputs through the processor's own chat template (images land at the template's vision
markers, never spliced into token positions); `sample` runs a backend (HF `generate` here, the
static-cache engine in `rollout.fast`) and returns a `RolloutBatch` of B = prompts x G rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Prompt:
    messages: list[dict[str, Any]]  # chat messages; image slots as {"type": "image"} content items
    images: list[Any] = field(default_factory=list)  # PIL images, in slot order
    prefill: str = ""  # assistant prefill, part of the prompt tokens
    text: str = ""  # the user text (for rewards and logs)


@dataclass
class RolloutBatch:
    """B rows = len(prompts) x G, grouped consecutively (row i belongs to prompt i // G)."""

    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    completion_ids: torch.Tensor  # [B, C] right-padded with pad id
    completion_mask: torch.Tensor  # [B, C] 1 up to and including the first EOS
    # per-row vision tensors (pixel_values [patches, D], image_grid_thw [n_img, 3]); empty for text
    vision_rows: list[dict[str, torch.Tensor]]
    prompt_extra: dict[str, torch.Tensor]  # [B, P] tensors aligned with prompt_ids (mm_token_type_ids)
    completions: list[str]  # decoded completion text (prefill included), per row
    sample_logps: torch.Tensor | None = None  # [B, C] log-probs at sampling time, if asked for
    group_size: int = 1

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def select(self, rows: list[int]) -> RolloutBatch:
        """A sub-batch of whole rows."""
        idx = torch.tensor(rows, device=self.prompt_ids.device)
        return RolloutBatch(
            prompt_ids=self.prompt_ids[idx],
            prompt_mask=self.prompt_mask[idx],
            completion_ids=self.completion_ids[idx],
            completion_mask=self.completion_mask[idx],
            vision_rows=[self.vision_rows[r] for r in rows],
            prompt_extra={k: v[idx] for k, v in self.prompt_extra.items()},
            completions=[self.completions[r] for r in rows],
            sample_logps=None if self.sample_logps is None else self.sample_logps[idx],
            group_size=self.group_size,
        )

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Forward kwargs for prompt + completion: ids, mask and vision tensors (extras zero-padded
        over the completion: without `mm_token_type_ids` Qwen2.5-VL silently mis-places 3D positions)."""
        ids = torch.cat([self.prompt_ids, self.completion_ids], dim=1)
        mask = torch.cat([self.prompt_mask, self.completion_mask.to(self.prompt_mask.dtype)], dim=1)
        out: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
        for k, v in self.prompt_extra.items():
            out[k] = torch.cat([v, v.new_zeros(v.shape[0], self.completion_ids.shape[1])], dim=1)
        if self.vision_rows and self.vision_rows[0]:
            for k in self.vision_rows[0]:
                out[k] = torch.cat([r[k] for r in self.vision_rows])
        return out
