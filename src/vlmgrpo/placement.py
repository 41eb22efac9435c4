"""Moving frozen reward models and the optimizer's state to host memory between the phases of a step.

Seed A on one 80 GB GPU: the policy's full fine-tune (Qwen2.5-VL-3B: ~7.5 GB bf16 weights,
7.5 GB gradients, 30 GB fp32 AdamW moments) and FLUX.1-schnell (24 GB transformer + 9.5 GB T5)
do not fit side by side with activations. They are never needed at the same time, though:

    phase      on the GPU                                  in pinned host memory
    rollout    policy weights, KV cache                    AdamW moments, reward models
    reward     policy weights, generator + embedder        AdamW moments
    update     weights, gradients, activations             reward models
    opt step   weights, gradients, AdamW moments           reward models

`ModuleOffloader` serves frozen modules: their weights never change, so the host copy is made
once and moving out is a pointer swap (no copy); moving in is one host-to-device copy from pinned
memory. `OptimizerOffloader` serves state that changes every step: out and in are both copies,
into host buffers allocated (and pinned) once. On a machine without CUDA both still copy, so the
bookkeeping runs in the CPU tests; nothing is pinned there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def _host_like(t: torch.Tensor) -> torch.Tensor:
    """An uninitialised host tensor shaped like t, pinned when CUDA is there (fast, async copies)."""
    return torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=torch.cuda.is_available())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ModuleOffloader:
    """Swap the parameters and buffers of frozen modules between their device and host memory."""

    def __init__(self, modules: Iterable[torch.nn.Module]) -> None:
        self.tensors: list[torch.Tensor] = []
        for m in modules:
            self.tensors += list(m.parameters()) + list(m.buffers())
        self.devices = [t.device for t in self.tensors]  # where each one lives when loaded
        self.host: list[torch.Tensor | None] = [None] * len(self.tensors)
        self.on_device = True

    def _sync(self) -> None:
        for d in set(self.devices):
            _sync(d)

    def offload(self) -> None:
        if not self.on_device:
            return
        for i, t in enumerate(self.tensors):
            if self.host[i] is None:  # first time: copy once; the weights are frozen afterwards
                h = _host_like(t)
                h.copy_(t.data, non_blocking=True)
                self.host[i] = h
        self._sync()
        for t, h in zip(self.tensors, self.host):
            t.data = h  # drops the device copy: its memory returns to the caching allocator
        self.on_device = False

    def onload(self) -> None:
        if self.on_device:
            return
        for t, h, d in zip(self.tensors, self.host, self.devices):
            t.data = h.to(d, non_blocking=True)
        self._sync()
        self.on_device = True


class OffloadableModels:
    """Mixin for reward models (generators, embedders) with frozen weights: `offload()` and
    `onload()` over the modules that `offload_modules()` names (the trainer calls them around the
    reward phase with placement.offload_reward_models)."""

    _offloader: ModuleOffloader | None = None

    def offload_modules(self) -> list[torch.nn.Module]:
        raise NotImplementedError

    def offload(self) -> None:
        """Weights to (pinned) host memory; their device memory is free for the policy."""
        if self._offloader is None:
            self._offloader = ModuleOffloader(self.offload_modules())
        self._offloader.offload()

    def onload(self) -> None:
        if self._offloader is not None:
            self._offloader.onload()


class OptimizerOffloader:
    """Move an optimizer's per-parameter state tensors (AdamW moments) to host memory and back.

    Step counters stay where they are (tiny; fused AdamW wants them on the device)."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: Any) -> None:
        self.optimizer = optimizer
        self.device = torch.device(device)
        self.host: dict[tuple[int, str], torch.Tensor] = {}
        self.on_device = True

    def _items(self) -> Iterable[tuple[dict, str, torch.Tensor]]:
        for st in self.optimizer.state.values():
            for k, v in st.items():
                if k != "step" and isinstance(v, torch.Tensor) and v.numel() > 1:
                    yield st, k, v

    def offload(self) -> None:
        if not self.on_device:
            return
        moved = []
        for st, k, v in self._items():
            key = (id(st), k)  # each parameter's state dict lives as long as the optimizer
            h = self.host.get(key)
            if h is None or h.shape != v.shape or h.dtype != v.dtype:
                h = self.host[key] = _host_like(v)
            h.copy_(v, non_blocking=True)
            moved.append((st, k, h))
        _sync(self.device)
        for st, k, h in moved:
            st[k] = h
        self.on_device = False

    def onload(self) -> None:
        if self.on_device:
            return
        for st, k, h in list(self._items()):
            st[k] = h.to(self.device, non_blocking=True)
        _sync(self.device)
        self.on_device = True

    def state_bytes(self) -> int:
        return sum(v.numel() * v.element_size() for _, _, v in self._items())


def offloadable(obj: Any) -> bool:
    """Whether a reward model (generator, embedder) can move between device and host."""
    return callable(getattr(obj, "offload", None)) and callable(getattr(obj, "onload", None))
