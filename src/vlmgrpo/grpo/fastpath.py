"""A faster update pass: token-budget micro-batches, one vision forward per image, fp32 Adam states.

Same loss and normalisation as `Trainer.update` (`grpo_loss` per micro-batch, scaled by
`loss_scale_for_accumulation`, so the accumulated gradient equals the whole batch's); what changes
is only how the work is cut and where the optimiser keeps its state:

- `plan_micro_batches`: rows sorted by length and packed into micro-batches of at most
  `token_budget` padded tokens (length bucketing: a micro-batch of short completions is not padded
  to the longest one in the step); each micro-batch is trimmed of all-pad prompt and completion
  columns. The budget, not a fixed row count, bounds activation memory.
- `SharedVision`: the G rows of a group share their images, yet the model's forward runs the vision
  tower once per row (G times per image). Inside the context, the tower runs once per unique image
  without grad, the micro-batches read those features as leaves that collect gradients, and
  `backward()` re-runs the tower with grad once per image and back-propagates the summed gradient.
  Exact (same gradients), G-fold less vision work; works through the model's own
  `get_image_features`, so Qwen2.5-VL and Qwen3-VL (deepstack features) both work.
- `AdamWFP32State`: AdamW with fp32 moments for bf16 parameters; the fp32 update is rounded back
  to bf16 stochastically (unbiased), so lr x update far below bf16 resolution still moves the
  weights on average. 12 bytes per parameter instead of 16 for fp32 master weights.
- `accumulate`: the forward/backward loop over micro-batches that `Trainer.update` runs
  (`optim.token_budget`, `optim.share_vision`, `optim.optimizer: adamw_fp32_state` select the
  pieces above); `update`: the same loop and an optimiser step in one process, for `bench/`.

Non-goals: padding-free packing (varlen attention needs flash-attn, absent on the target machine);
sequence parallelism; offload.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vlmgrpo.grpo.core import grpo_loss, high_entropy_mask, loss_scale_for_accumulation
from vlmgrpo.rollout import RolloutBatch

# ------------------------------------------------------------------------------------ micro-batches


@dataclass
class MicroBatch:
    batch: RolloutBatch  # trimmed rows
    advantages: Tensor  # [rows]
    image_keys: list[tuple[int, int]]  # (rollout index, group index) of each row's images


def trim(batch: RolloutBatch) -> RolloutBatch:
    """Drop prompt columns that are padding in every row (left padding) and completion columns past
    the longest completion. Shapes shrink; values and masks of kept positions are unchanged."""
    pm, cm = batch.prompt_mask, batch.completion_mask
    keep_p = pm.bool().any(0)
    first = int(keep_p.nonzero()[0]) if keep_p.any() else pm.shape[1] - 1
    c_len = max(1, int(cm.sum(1).max()))
    return RolloutBatch(
        prompt_ids=batch.prompt_ids[:, first:],
        prompt_mask=pm[:, first:],
        completion_ids=batch.completion_ids[:, :c_len],
        completion_mask=cm[:, :c_len],
        vision_rows=batch.vision_rows,
        prompt_extra={k: v[:, first:] for k, v in batch.prompt_extra.items()},
        completions=batch.completions,
        sample_logps=None if batch.sample_logps is None else batch.sample_logps[:, :c_len],
        group_size=batch.group_size,
    )


def plan_micro_batches(
    batches: list[RolloutBatch], advantages: list[Tensor], token_budget: int
) -> list[MicroBatch]:
    """Cut every rollout batch into micro-batches of at most `token_budget` padded tokens.

    Rows are sorted by (prompt length, completion length), longest first, and added while
    rows x (longest prompt + longest completion) stays within the budget (at least one row each).
    returns micro-batches in processing order; every row appears exactly once.
    """
    out: list[MicroBatch] = []
    for bi, (b, adv) in enumerate(zip(batches, advantages)):
        p_len = b.prompt_mask.sum(1).tolist()
        c_len = b.completion_mask.sum(1).tolist()
        order = sorted(range(len(b)), key=lambda r: (p_len[r], c_len[r]), reverse=True)
        cur: list[int] = []
        mp = mc = 0
        for r in order:
            np_, nc = max(mp, p_len[r]), max(mc, c_len[r])
            if cur and (len(cur) + 1) * (np_ + nc) > token_budget:
                out.append(_micro(b, adv, cur, bi))
                cur, np_, nc = [], p_len[r], c_len[r]
            cur.append(r)
            mp, mc = np_, nc
        if cur:
            out.append(_micro(b, adv, cur, bi))
    return out


def fixed_micro_batches(batches: list[RolloutBatch], advantages: list[Tensor], rows: int) -> list[MicroBatch]:
    """Cut every rollout batch into consecutive slices of `rows` rows (0 = the whole batch), in
    order and untrimmed: `optim.micro_batch_seqs`, the trainer's cutting without a token budget."""
    out: list[MicroBatch] = []
    for bi, (b, adv) in enumerate(zip(batches, advantages)):
        size, g = rows or len(b), max(1, b.group_size)
        for s in range(0, len(b), size):
            idx = list(range(s, min(len(b), s + size)))
            sub = b.select(idx) if len(idx) < len(b) else b
            out.append(MicroBatch(sub, adv[idx], [(bi, r // g) for r in idx]))
    return out


def _micro(b: RolloutBatch, adv: Tensor, rows: list[int], bi: int) -> MicroBatch:
    rows = sorted(rows)  # keep groups together: consecutive rows share images
    sub = b.select(rows) if len(rows) < len(b) else b
    g = max(1, b.group_size)
    return MicroBatch(trim(sub), adv[rows], [(bi, r // g) for r in rows])


def batch_tokens(batch: RolloutBatch) -> int:
    """Real (unpadded) tokens of a batch: prompt tokens + completion tokens that count."""
    return int(batch.prompt_mask.sum()) + int(batch.completion_mask.sum())


def padded_tokens(batch: RolloutBatch) -> int:
    """Tokens the forward computes: rows x (prompt columns + completion columns)."""
    return len(batch) * (batch.prompt_ids.shape[1] + batch.completion_ids.shape[1])


# ------------------------------------------------------------------------------------ shared vision


def _trunk(model: Any) -> Any:
    m = getattr(model, "module", model)
    m = m.get_base_model() if hasattr(m, "get_base_model") else m
    return getattr(m, "model", m)


class SharedVision:
    """Run the vision tower once per unique image for a whole update (see module docstring).

    with SharedVision(model, batches) as sv:      # features of every unique image, no grad
        for mb in micro_batches:
            sv.use(mb.image_keys)                 # the next forward reads these rows' features
            loss(model(mb.batch)).backward()      # grads stop at the feature leaves
        sv.backward()                             # tower forward+backward once per image

    Outside `use` (or under no_grad, e.g. a reference forward) the model's own path runs.
    """

    def __init__(self, model: Any, batches: list[RolloutBatch]) -> None:
        self.trunk = _trunk(model)
        self.batches = batches
        self.enabled = hasattr(self.trunk, "get_image_features") and any(
            b.vision_rows and b.vision_rows[0] for b in batches
        )
        tower = getattr(self.trunk, "visual", None)
        # a frozen tower (LoRA on the language model, say) needs no second pass in backward()
        self.tower_trains = tower is None or any(p.requires_grad for p in tower.parameters())
        self.feats: dict[tuple[int, int], Any] = {}  # key -> per-image output (leaves with grad)
        self.current: list[tuple[int, int]] | None = None
        self._orig: Callable | None = None

    def __enter__(self) -> SharedVision:
        if not self.enabled:
            return self
        self._orig = self.trunk.get_image_features
        with torch.no_grad():
            for bi, b in enumerate(self.batches):
                g = max(1, b.group_size)
                for r in range(0, len(b), g):
                    vr = b.vision_rows[r]
                    out = self._orig(vr["pixel_values"], vr["image_grid_thw"])
                    self.feats[(bi, r // g)] = _leafify(out)
                    self.feats[(bi, r // g)]["_n_patches"] = vr["pixel_values"].shape[0]
        self.trunk.get_image_features = self._patched
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._orig is not None and "get_image_features" in self.trunk.__dict__:
            del self.trunk.get_image_features
        self.current = None

    def use(self, keys: list[tuple[int, int]]) -> None:
        self.current = keys if self.enabled else None

    def _patched(self, pixel_values: Tensor, image_grid_thw: Tensor | None = None, **kw: Any) -> Any:
        if self.current is None or not torch.is_grad_enabled():
            return self._orig(pixel_values, image_grid_thw, **kw)
        keys, self.current = self.current, None  # one forward per `use`
        outs = [self.feats[k] for k in keys]
        if sum(int(o["_n_patches"]) for o in outs) != pixel_values.shape[0]:
            raise RuntimeError("SharedVision: the rows' images do not match the forward's pixel_values")
        return _concat_outputs(outs)

    def backward(self) -> None:
        """Back-propagate the gradients collected on the feature leaves through the vision tower,
        one image at a time (peak memory: one image's tower activations)."""
        if not (self.enabled and self.tower_trains):
            self.feats.clear()
            return
        for (bi, gi), feat in self.feats.items():
            grads = [(t, t.grad) for t in feat["_leaves"] if t.grad is not None]
            if not grads:
                continue
            b = self.batches[bi]
            vr = b.vision_rows[gi * max(1, b.group_size)]
            with torch.enable_grad():
                out = _leafify(self._orig(vr["pixel_values"], vr["image_grid_thw"]), detach=False)
            pairs = [(o, t.grad) for o, t in zip(out["_leaves"], feat["_leaves"]) if t.grad is not None]
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        self.feats.clear()


def _leafify(out: Any, detach: bool = True) -> dict[str, Any]:
    """The image-feature output as {field: value} with every tensor a fresh leaf (requires_grad)
    when `detach`; "_leaves" lists them in a fixed order, "_n_patches" the input patch count."""
    fields: dict[str, Any] = {}
    leaves: list[Tensor] = []

    def conv(x: Any) -> Any:
        if isinstance(x, Tensor):
            y = x.detach().requires_grad_(x.is_floating_point()) if detach else x
            if x.is_floating_point():
                leaves.append(y)
            return y
        if isinstance(x, (list, tuple)):
            return type(x)(conv(v) for v in x) if isinstance(x, tuple) else [conv(v) for v in x]
        return x

    keys = [k for k in ("pooler_output", "deepstack_features") if getattr(out, k, None) is not None]
    for k in keys:
        fields[k] = conv(getattr(out, k))
    fields["_leaves"] = leaves
    fields["_type"] = type(out)
    fields["_n_patches"] = 0  # set by the caller: input patches, for a consistency check
    return fields


def _concat_outputs(outs: list[dict[str, Any]]) -> Any:
    """Stack the per-image outputs of several rows into one output, in the layout the model's own
    get_image_features returns (per-image tuples stay tuples, concatenated tensors are concatenated)."""
    typ = outs[0]["_type"]
    kw: dict[str, Any] = {}
    for k in ("pooler_output", "deepstack_features"):
        if k not in outs[0]:
            continue
        vals = [o[k] for o in outs]
        kw[k] = _join(vals)
    return typ(**kw)


def _join(vals: list[Any]) -> Any:
    v0 = vals[0]
    if isinstance(v0, Tensor):
        return torch.cat(vals, dim=0)
    if isinstance(v0, tuple):  # per-image tuple (pooler_output): concatenate the tuples
        return tuple(t for v in vals for t in v)
    if isinstance(v0, list):  # per-layer list (deepstack): join layer by layer
        return [_join([v[i] for v in vals]) for i in range(len(v0))]
    return v0


# ------------------------------------------------------------------------------------ optimiser


class AdamWFP32State(torch.optim.Optimizer):
    """AdamW whose moments are fp32 whatever the parameter dtype; for bf16/fp16 parameters the fp32
    result is rounded back stochastically (`stochastic_round=True`) or to nearest.

    For fp32 parameters it is exactly torch's AdamW. Memory: params + grads (model dtype) + 8 bytes
    per parameter. The step runs one tensor at a time, so temporaries are one tensor's fp32 copy.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        stochastic_round: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.stochastic_round = stochastic_round
        self.seed = seed

    def _noise_generator(self, device: torch.device, index: int, step: int) -> torch.Generator:
        """The rounding noise of parameter `index` at `step`: a function of (seed, index, step) only,
        so DDP replicas (whose global RNGs differ after sampling different prompts) round alike and
        stay identical, a resume draws the same noise, and the global RNG is not touched."""
        gen = torch.Generator(device=device)
        gen.manual_seed(((self.seed * 1_000_003 + index) * 1_000_033 + step) % 2**63)
        return gen

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> Any:
        loss = closure() if closure is not None else None
        index = -1
        for group in self.param_groups:
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    st["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                st["step"] += 1
                # in slices of <= CHUNK elements: bounded, same-sized fp32 temporaries (a 311M-entry
                # embedding would otherwise need several 1.2 GB buffers and fragment the allocator)
                views = (p.view(-1), p.grad.view(-1), st["exp_avg"].view(-1), st["exp_avg_sq"].view(-1))
                gen = None
                if self.stochastic_round and p.dtype == torch.bfloat16:
                    gen = self._noise_generator(p.device, index, st["step"])
                for pc, gc, mc, vc in zip(*(v.split(self.CHUNK) for v in views)):
                    self._update(pc, gc, mc, vc, group, st["step"], gen)
        return loss

    CHUNK = 1 << 25

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loader casts floating state to each parameter's dtype (bf16 moments for bf16
        weights); the moments are put back in fp32, from the saved values, so a resume is exact."""
        saved = {i: dict(s) for i, s in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for i, s in saved.items():
            st = self.state[params[int(i)]]
            if "step" in s:  # torch's AdamW saves a tensor (a run resumed with the other optimizer)
                st["step"] = int(s["step"])
            for k in ("exp_avg", "exp_avg_sq"):
                if k in s:
                    st[k] = s[k].to(device=params[int(i)].device, dtype=torch.float32)

    def _update(
        self, p: Tensor, grad: Tensor, m: Tensor, v: Tensor, group: dict, t: int, gen: torch.Generator | None
    ) -> None:
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        g = grad.float()
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        del g
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        denom = (v.sqrt() / math.sqrt(bc2)).add_(eps)
        if p.dtype == torch.float32:
            p.mul_(1 - lr * wd).addcdiv_(m, denom, value=-lr / bc1)
            return
        w = p.float().mul_(1 - lr * wd).addcdiv_(m, denom, value=-lr / bc1)
        del denom
        p.copy_(_round_to(w, p.dtype, self.stochastic_round, gen))


def _round_to(w: Tensor, dtype: torch.dtype, stochastic: bool, gen: torch.Generator | None = None) -> Tensor:
    """fp32 -> bf16 rounding; stochastic: add uniform noise below bf16's last kept bit, truncate."""
    if not stochastic or dtype != torch.bfloat16:
        return w.to(dtype)
    bits = w.view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=bits.device, generator=gen)
    bits = (bits + noise) & -65536  # keep the top 16 bits (sign, exponent, 7 mantissa bits)
    return bits.view(torch.float32).to(torch.bfloat16)  # exact: low bits are zero


# ------------------------------------------------------------------------------------ the update


def policy_loss(
    logp: Tensor,
    chunk: RolloutBatch,
    adv: Tensor,
    ref: Tensor | None,
    grpo: Any,
    max_new_tokens: int,
    global_tokens: float,
    entropy: Tensor | None = None,
) -> tuple[Tensor, dict]:
    """`grpo_loss` of one micro-batch with the recipe's choices (grpo: the `GRPOConfig`).
    logp, ref, entropy [rows, C]; adv [rows]. On-policy with one update per rollout the behaviour
    policy IS the current one, so its log-probs are logp.detach() (ratio 1 in value; TRL does the
    same); the sampling-time log-probs are used when a rollout carries them (is/ppo: off-policy
    overlap, or grpo.num_iterations > 1). grpo.top_entropy_quantile < 1 keeps the policy term of the
    micro-batch's highest-entropy tokens only (`high_entropy_mask`)."""
    old = chunk.sample_logps if chunk.sample_logps is not None and grpo.loss != "pg" else logp.detach()
    mask = chunk.completion_mask.to(logp.dtype)
    quantile = getattr(grpo, "top_entropy_quantile", 1.0)
    weight = None
    if quantile < 1.0:
        if entropy is None:
            raise ValueError("grpo.top_entropy_quantile < 1 needs the token entropies")
        weight = high_entropy_mask(entropy, mask, quantile)
    delta = getattr(grpo, "delta", 0.0)
    return grpo_loss(
        logp,
        old,
        ref,
        adv.to(logp.device),
        mask,
        kind=grpo.loss,
        aggregation=grpo.aggregation,
        beta=grpo.beta,
        clip_low=grpo.clip_low,
        clip_high=grpo.clip_high,
        max_tokens=max_new_tokens,
        num_items_in_batch=global_tokens,
        level=getattr(grpo, "importance_level", "token"),
        delta=delta if delta and delta > 0 else None,
        kl_estimator=getattr(grpo, "kl_estimator", "k3"),
        token_weight=weight,
        entropy=entropy,
    )


def accumulate(
    logp_model: Any,
    micro: list[MicroBatch],
    *,
    grpo: Any,
    temperature: float,
    max_new_tokens: int,
    global_seqs: float,
    global_tokens: float,
    ref_logps: Callable[[RolloutBatch], Tensor | None] | None = None,
    shared_vision: SharedVision | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Forward and backward every micro-batch, each loss scaled so that the accumulated gradient is
    the whole batch's (`loss_scale_for_accumulation`). A DDP-wrapped `logp_model` all-reduces once,
    in the last backward. returns (the batch loss as a 0-d tensor: no host sync per micro-batch,
    the loss statistics weighted by rows / all rows in `micro`; "entropy" is weighted by completion
    tokens instead: the token mean of the whole batch)."""
    stats: dict[str, float] = {}
    total: Any = 0.0
    rows = sum(len(m.batch) for m in micro)
    tokens = sum(float(m.batch.completion_mask.sum()) for m in micro)
    for i, mb in enumerate(micro):
        chunk = mb.batch
        sync = i == len(micro) - 1 or not hasattr(logp_model, "no_sync")
        with contextlib.nullcontext() if sync else logp_model.no_sync():
            if shared_vision is not None:
                shared_vision.use(mb.image_keys)
            # the token entropies come from the logits this forward computes anyway
            logp, entropy = logp_model(chunk, temperature, with_entropy=True)
            ref = ref_logps(chunk) if ref_logps is not None else None
            loss, st = policy_loss(
                logp, chunk, mb.advantages, ref, grpo, max_new_tokens, global_tokens, entropy=entropy
            )
            n_tok = float(chunk.completion_mask.sum())
            scale = loss_scale_for_accumulation(
                grpo.aggregation, len(chunk), global_seqs, n_tok, global_tokens
            )
            (loss * scale).backward()
        total = total + loss.detach().float() * scale
        for k, v in st.items():
            w = n_tok / max(tokens, 1.0) if k in ("entropy", "entropy_kept_frac") else len(chunk) / rows
            stats[k] = stats.get(k, 0.0) + float(v) * w
    if shared_vision is not None:
        shared_vision.backward()
    return torch.as_tensor(total), stats


def update(
    model: Any,
    logp_model: Any,
    optimizer: torch.optim.Optimizer,
    batches: list[RolloutBatch],
    advantages: list[Tensor],
    *,
    grpo: Any,
    temperature: float,
    max_new_tokens: int,
    max_grad_norm: float,
    token_budget: int = 8192,
    share_vision: bool = True,
    ref_logps: Callable[[RolloutBatch], Tensor | None] | None = None,
    scheduler: Any = None,
) -> dict[str, float]:
    """One optimiser step over all rows of `batches`, one process (`bench/`; the trainer runs the
    same `accumulate` with `optim.token_budget` / `optim.share_vision`, plus its ranks and checks).

    grpo: the `GRPOConfig` (loss, aggregation, beta, clip_low, clip_high). Returns the trainer's
    metric keys ("loss", "grad_norm", "lr", "loss/<stat>") plus "update/micro_batches",
    "update/tokens" and "update/padded_tokens". A non-finite loss or gradient skips the step
    ("update/skipped_nonfinite": 1) and leaves the weights untouched.
    """
    micro = plan_micro_batches(batches, advantages, token_budget)
    global_seqs = sum(len(m.batch) for m in micro)
    global_tokens = float(sum(int(m.batch.completion_mask.sum()) for m in micro))
    sv = SharedVision(model, batches) if share_vision else None
    with sv if sv is not None else contextlib.nullcontext():
        total_t, stats = accumulate(
            logp_model,
            micro,
            grpo=grpo,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            global_seqs=global_seqs,
            global_tokens=global_tokens,
            ref_logps=ref_logps,
            shared_vision=sv,
        )
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    total = float(total_t)
    info = {
        "update/micro_batches": float(len(micro)),
        "update/tokens": float(sum(batch_tokens(m.batch) for m in micro)),
        "update/padded_tokens": float(sum(padded_tokens(m.batch) for m in micro)),
    }
    if not (math.isfinite(total) and torch.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        return {"loss": total, "update/skipped_nonfinite": 1.0, **info}
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    lr = scheduler.get_last_lr()[0] if scheduler is not None else optimizer.param_groups[0]["lr"]
    return {
        "loss": total,
        "grad_norm": float(grad_norm),
        "lr": lr,
        **{f"loss/{k}": v for k, v in stats.items()},
        **info,
    }
