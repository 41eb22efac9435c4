"""GRPO as small pure tensor functions: advantages, token log-probs, policy losses, KL, aggregation.

Every function here is stateless and vectorised over the batch; the trainer composes them in one
readable step (rollout -> rewards -> `group_advantages` -> `chunked_token_logps` -> `grpo_loss`).
To try a variant, swap one function rather than copying the trainer. Plain-loop reference versions
of each live only in `tests/test_grpo_core.py`.

Shapes: B sequences (completions), T (or C) completion tokens, V vocabulary, H hidden size,
N = B rewards laid out as consecutive groups of `group_size` completions of the same prompt.

Variants and their biases are named where they are chosen:
- advantage scaling `group` (GRPO, divides by each group's std: groups with nearly equal rewards
  get amplified), `batch` (one std for the batch), `none` (Dr. GRPO: no std division);
- policy loss `pg` (on-policy REINFORCE, one update per rollout, seeds A and D), `is` (importance
  ratio to the sampling policy, unclipped), `ppo` (clipped ratio, asymmetric clip allowed);
- aggregation `grpo` (per-sequence mean: length-biased), `bnpo`, `dr_grpo`, `dapo` (token-level);
- importance level `token` (PPO/GRPO) or `sequence` (GSPO's length-normalised sequence ratio);
- KL estimator `k3` or `k3_ratio` (k3 weighted by the importance ratio: TRL's default);
- two-sided `delta` clip, top-entropy-quantile token masks, truncated-completion masks, DAPO's soft
  overlong penalty and zero-spread group detection (dynamic sampling).
docs/algorithms.md has one table of every option, its formula, paper and TRL name.

Non-goals: no model calls, no distributed communication (callers pass global token / sequence
counts in), no value function.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

AdvantageScale = Literal["group", "batch", "none"]
PolicyLossKind = Literal["pg", "is", "ppo"]
Aggregation = Literal["grpo", "bnpo", "dr_grpo", "dapo"]

ADVANTAGE_SCALES = ("group", "batch", "none")
POLICY_LOSS_KINDS = ("pg", "is", "ppo")
AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")
ImportanceLevel = Literal["token", "sequence"]
IMPORTANCE_LEVELS = ("token", "sequence")
KlEstimator = Literal["k3", "k3_ratio"]
KL_ESTIMATORS = ("k3", "k3_ratio")

# Elements (rows x vocab) of fp32 logits that `selective_log_softmax` upcasts at once by default:
# 2**26 fp32 values = 256 MiB, small next to a 3B-7B model yet large enough to keep the loop short.
_DEFAULT_CHUNK_ELEMS = 2**26


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half types, unchanged for fp32/fp64 (fp64 stays exact for tests and debugging)."""
    return torch.promote_types(dtype, torch.float32)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")


# ---------------------------------------------------------------------------------------- advantages


def group_advantages(
    rewards: Tensor,
    group_size: int,
    scale: AdvantageScale = "group",
    eps: float = 1e-4,
    unbiased: bool = True,
    valid: Tensor | None = None,
    batch_std: float | None = None,
) -> Tensor:
    """Group-relative advantages: each reward minus its group's mean, optionally divided by a std.

    rewards: [N] float, consecutive groups of `group_size` (N % group_size == 0).
    valid:   [N] bool or None. False marks a skipped sample (a reward returned None); its reward may
             be NaN. NaN rewards are treated as skipped even when `valid` says True, so a NaN can
             never leak into the loss.
    returns: [N] float (rewards' dtype, at least fp32).

    scale:
    - "group": (r - mean_g) / (std_g + eps), the GRPO paper's form; seed A uses eps 1e-4, seed D 1e-8.
      Biased toward prompts whose rewards barely differ (tiny std -> large advantages).
    - "batch": (r - mean_g) / (std_batch + eps), std of all valid rewards of the batch. The batch is
      the whole step's generation batch (every accumulation part, every rank, as TRL): a caller that
      holds only part of it passes that std as `batch_std` (see `batch_reward_std`).
    - "none":  r - mean_g (Dr. GRPO), no std division.

    Skipped samples are left out of every mean and std and get advantage 0 (no gradient). A group with
    fewer than two valid members has no baseline to compare with, so all its advantages are 0; with
    `unbiased=True` the std divides by max(n - 1, 1) so that case never produces NaN.
    """
    _check_choice("scale", scale, ADVANTAGE_SCALES)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    n = rewards.numel()
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} rewards do not split into groups of {group_size}")
    r = rewards.to(_at_least_fp32(rewards.dtype))
    ok = ~torch.isnan(r)
    if valid is not None:
        ok = ok & valid.to(device=r.device, dtype=torch.bool)
    ddof = int(unbiased)

    # [G, group_size] views; skipped entries are zeroed (not NaN) so sums stay finite.
    rg = torch.where(ok, r, 0.0).view(-1, group_size)
    okg = ok.view(-1, group_size)
    count = okg.sum(dim=1, keepdim=True)  # [G, 1] valid members per group
    mean = rg.sum(dim=1, keepdim=True) / count.clamp(min=1)
    dev = torch.where(okg, rg - mean, 0.0)  # [G, group_size]

    if scale == "group":
        var = dev.pow(2).sum(dim=1, keepdim=True) / (count - ddof).clamp(min=1)
        adv = dev / (var.sqrt() + eps)
    elif scale == "batch":
        if batch_std is None:
            total = ok.sum()
            bdev = torch.where(okg, rg - rg.sum() / total.clamp(min=1), 0.0)
            bstd = (bdev.pow(2).sum() / (total - ddof).clamp(min=1)).sqrt()
        else:
            bstd = torch.as_tensor(float(batch_std), dtype=r.dtype, device=r.device)
        adv = dev / (bstd + eps)
    else:
        adv = dev
    # A lone valid member would get (r - r) = 0 anyway; the explicit mask also guards eps=0.
    adv = torch.where(okg & (count >= 2), adv, 0.0)
    return adv.reshape(n)


def batch_reward_std(count: float, sq_dev: float, unbiased: bool = True) -> float:
    """Std of the valid rewards of a batch split over parts or ranks, from summed moments (two passes,
    so no sum-of-squares cancellation): first every part sums (count, sum of rewards); with the global
    mean m = total / count, every part sums (r - m)^2 and that sum comes back as `sq_dev`.

    count: valid rewards of the whole batch; sq_dev: their summed (r - m)^2.
    returns: the std (divisor count - 1 when `unbiased`, at least 1), 0.0 for an empty batch.
    """
    return math.sqrt(sq_dev / max(count - int(unbiased), 1.0)) if count > 0 else 0.0


def zero_std_groups(
    rewards: Tensor, group_size: int, valid: Tensor | None = None, tol: float = 0.0
) -> Tensor:
    """Groups that carry no learning signal: every valid reward equal (within `tol`), or fewer
    than two valid members. Their advantages are all 0 under every `group_advantages` scale.

    rewards: [N] (NaN = skipped), consecutive groups of `group_size`; valid: [N] bool or None.
    returns: [N // group_size] bool, True = zero spread.

    DAPO's dynamic sampling (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System
    at Scale", arXiv 2503.14476, section 3.2) drops these groups and samples more prompts until the
    batch is full; the share of them is a health metric of its own (a task that is too easy or too
    hard for the policy shows up as a share near 1).
    """
    r = rewards.to(_at_least_fp32(rewards.dtype))
    ok = ~torch.isnan(r)
    if valid is not None:
        ok = ok & valid.to(device=r.device, dtype=torch.bool)
    rg, okg = r.view(-1, group_size), ok.view(-1, group_size)
    hi = torch.where(okg, rg, -math.inf).amax(dim=1)
    lo = torch.where(okg, rg, math.inf).amin(dim=1)
    return (okg.sum(dim=1) < 2) | ((hi - lo) <= tol)


def overlong_penalty(lengths: Tensor, max_tokens: int, buffer_tokens: int, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment, added to the reward (Yu et al. 2025, arXiv 2503.14476, eq. 13).

    lengths: [N] completion lengths in tokens (float or int); max_tokens L_max (= max_new_tokens);
    buffer_tokens L_cache. returns: [N], factor x
        0                                   if |y| <= L_max - L_cache
        ((L_max - L_cache) - |y|) / L_cache if L_max - L_cache < |y| <= L_max
        -1                                  if |y| > L_max
    so the penalty ramps linearly from 0 to -factor over the last L_cache tokens. A sampler capped at
    max_new_tokens never exceeds L_max, so a truncated completion gets exactly -factor.
    """
    if not 0 < buffer_tokens <= max_tokens:
        raise ValueError(f"buffer_tokens must be in (0, max_tokens={max_tokens}], got {buffer_tokens}")
    n = lengths.to(_at_least_fp32(lengths.dtype) if lengths.is_floating_point() else torch.float32)
    start = float(max_tokens - buffer_tokens)
    ramp = (start - n) / buffer_tokens
    out = torch.where(
        n <= start, torch.zeros_like(n), torch.where(n <= max_tokens, ramp, -torch.ones_like(n))
    )
    return factor * out


def truncated_rows(
    completion_ids: Tensor, completion_mask: Tensor, eos_ids: list[int] | int | Tensor
) -> Tensor:
    """Completions cut at max_new_tokens: no EOS among their counted tokens and counted up to the
    last column (a row that ended on a pad that is not an EOS id ended on its own).

    completion_ids, completion_mask: [B, C] (mask as `completion_mask_from_eos` builds it).
    returns: [B] bool. TRL's test is "last token is neither EOS nor pad" (`mask_truncated_completions`);
    the two agree on right-padded batches.
    """
    eos = torch.as_tensor(eos_ids, device=completion_ids.device, dtype=completion_ids.dtype).reshape(-1)
    m = completion_mask.bool()
    has_eos = (torch.isin(completion_ids, eos) & m).any(dim=1)
    full = m[:, -1] if m.shape[1] else torch.zeros(m.shape[0], dtype=torch.bool, device=m.device)
    return full & ~has_eos


# ---------------------------------------------------------------------------------------- log-probs


def selective_log_softmax(logits: Tensor, index: Tensor, *, chunk_rows: int | None = None) -> Tensor:
    """log softmax(logits)[index] without a full-batch fp32 log_softmax.

    logits: [..., V] any float dtype (bf16 from the model is typical).
    index:  [...] int64 token ids, same leading shape as `logits`.
    returns: [...] fp32 (fp64 for fp64 logits).

    Rows of the first (batch) dim are processed `chunk_rows` at a time (default: as many as fit
    in 2**26 fp32 values); each chunk is upcast to fp32 and reduced as gathered logit minus logsumexp,
    so the largest temporary is one chunk, not a [B, T, V] fp32 tensor (which for Qwen's 152k vocab
    and B*T = 8k tokens would be 5 GB). fp32 matters: a bf16 log-prob near -20 is only resolved to
    ~0.1 nats, which turns importance ratios into noise.

    Differentiable, but backward keeps each chunk's fp32 copy; for the training forward prefer
    `chunked_token_logps`, which recomputes the logits chunk by chunk instead.
    """
    if logits.shape[:-1] != index.shape:
        raise ValueError(f"index shape {tuple(index.shape)} does not match logits {tuple(logits.shape)}")
    if logits.dim() == 1:
        logits, index = logits.unsqueeze(0), index.unsqueeze(0)
        return selective_log_softmax(logits, index, chunk_rows=chunk_rows).squeeze(0)
    if chunk_rows is None:
        row_elems = max(1, logits[0].numel())
        chunk_rows = max(1, _DEFAULT_CHUNK_ELEMS // row_elems)
    out = []
    for lg, ix in zip(logits.split(chunk_rows), index.split(chunk_rows)):
        lg = lg.to(_at_least_fp32(lg.dtype))
        chosen = lg.gather(-1, ix.unsqueeze(-1)).squeeze(-1)
        out.append(chosen - torch.logsumexp(lg, dim=-1))
    return torch.cat(out)


def entropy_from_logits(logits: Tensor, lse: Tensor | None = None) -> Tensor:
    """Shannon entropy (nats) of softmax(logits) per row: H = logsumexp(z) - sum_v p_v z_v.

    logits: [..., V] (upcast to at least fp32); lse: [...] logsumexp(logits) when the caller has it
    (saves a pass over V). returns: [...], no gradient (a diagnostic and a mask).
    """
    with torch.no_grad():
        flat = logits.reshape(-1, logits.shape[-1])
        lse_flat = None if lse is None else lse.detach().reshape(-1)
        # rows in slices of <= 2**26 elements and the products in place: one temporary of one slice
        # (a [4096, 152k] fp32 chunk would otherwise cost two more 2.5 GB tensors)
        rows = max(1, _DEFAULT_CHUNK_ELEMS // max(1, flat.shape[-1]))
        out = []
        for i, z in enumerate(flat.split(rows)):
            z = z.to(_at_least_fp32(z.dtype))
            m = (
                torch.logsumexp(z, dim=-1)
                if lse_flat is None
                else lse_flat[i * rows : i * rows + len(z)].to(z.dtype)
            )
            p = (z - m[:, None]).exp_()
            out.append(m - p.mul_(z).sum(dim=-1))
        return torch.cat(out).view(logits.shape[:-1]) if out else logits.new_zeros(logits.shape[:-1])


def _token_logps_chunk(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    temperature: float,
    entropy_out: list[Tensor] | None = None,
) -> Tensor:
    """hidden [n, H], weight [V, H], bias [V] | None, targets [n] -> log-probs [n] fp32. With
    `entropy_out` (an empty list) the token entropies [n] (no grad) of the same logits are appended
    to it (no second head matmul); only on the first call, so the backward's recomputation of a
    checkpointed chunk does not compute them again."""
    # The matmul runs in the model's dtype, as the model's own lm_head does, so these log-probs match
    # `model(...).logits`; upcasting W itself would copy a [V, H] fp32 matrix (1.2 GB for Qwen-3B)
    # per chunk. Temperature and logsumexp run in fp32.
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(_at_least_fp32(logits.dtype))
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if entropy_out is not None and not entropy_out:
        entropy_out.append(entropy_from_logits(logits.detach(), lse))
    return logps


def chunked_token_logps(
    hidden: Tensor,
    lm_head_weight: Tensor,
    targets: Tensor,
    chunk_tokens: int = 4096,
    temperature: float = 1.0,
    lm_head_bias: Tensor | None = None,
    with_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Log-probs of `targets` under softmax(hidden @ W.T + b) / temperature, never holding full logits.

    hidden:  [B, T, H] last hidden states at the positions that predict `targets`.
    lm_head_weight: [V, H]; lm_head_bias: [V] or None.
    targets: [B, T] int64 token ids (valid ids: put pad_id, not -100, where the mask is 0).
    returns: [B, T] fp32 (fp64 for fp64 inputs), differentiable w.r.t. hidden, weight and bias.

    The B*T tokens are flattened and processed `chunk_tokens` at a time, so only one [chunk, V]
    logits tensor exists in the forward. When autograd is recording, each chunk runs under
    `torch.utils.checkpoint`, so the backward recomputes that chunk's logits instead of keeping all
    chunks' logits alive: peak memory is O(chunk * V), not O(B * T * V).

    `temperature` should be the sampling temperature, so that these log-probs are of the
    distribution the completions were drawn from (as in TRL).

    with_entropy: also return the token entropies [B, T] (no grad) of the same tempered
    distribution, computed from each chunk's logits while they exist: no extra forward.
    """
    if hidden.dim() != 3 or hidden.shape[:2] != targets.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} must be [B, T, H] with targets [B, T], got {tuple(targets.shape)}"
        )
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    b, t, h = hidden.shape
    flat_h = hidden.reshape(b * t, h)
    flat_t = targets.reshape(b * t)
    params = (hidden, lm_head_weight) if lm_head_bias is None else (hidden, lm_head_weight, lm_head_bias)
    recompute = torch.is_grad_enabled() and any(p.requires_grad for p in params)
    out, ents = [], []
    for hc, tc in zip(flat_h.split(chunk_tokens), flat_t.split(chunk_tokens)):
        ent: list[Tensor] | None = [] if with_entropy else None
        args = (hc, lm_head_weight, lm_head_bias, tc, temperature, ent)
        res = (
            checkpoint(_token_logps_chunk, *args, use_reentrant=False)
            if recompute
            else _token_logps_chunk(*args)
        )
        if ent is not None:
            ents.append(ent[0])
        out.append(res)
    logps = torch.cat(out).view(b, t)
    return (logps, torch.cat(ents).view(b, t)) if with_entropy else logps


# ---------------------------------------------------------------------------------------------- KL


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token KL(policy || ref) estimate, k3 = exp(ref - logp) - (ref - logp) - 1.

    logp, ref_logp: [B, T] log-probs of the sampled tokens under the policy and the reference.
    returns: [B, T], >= 0, exactly 0 where the two agree.

    k3 is unbiased for KL(pi || ref) on samples from pi and, unlike k1 = logp - ref, never negative,
    so it has far lower variance (Schulman, http://joschu.net/blog/kl-approx.html). Gradients flow
    through `logp`; the reference is treated as a constant.
    """
    delta = ref_logp.detach() - logp
    return torch.exp(delta) - delta - 1.0


def kl_k3_ratio(logp: Tensor, ref_logp: Tensor, ratio: Tensor) -> Tensor:
    """Bias-corrected k3: ratio x k3, ratio = pi_theta / pi_old (with grad; [B, T] or [B, 1]).

    returns: [B, T]. Samples come from pi_old, not pi_theta, so plain k3's gradient is a biased
    estimate of grad KL(pi_theta || ref) once the policy has moved (and, through the ratio's
    gradient, even on-policy where the ratio is 1 in value); weighting by the ratio makes it the
    unbiased reverse-KL gradient (DeepSeek-AI 2025, "DeepSeek-V3.2", arXiv 2512.02556). TRL's
    `use_bias_correction_kl=True`, its default. On-policy its value equals k3, its gradient is
    grad k3 + k3 x grad logp.
    """
    return ratio * kl_k3(logp, ref_logp)


# ------------------------------------------------------------------------------------ policy losses


def importance_log_ratio(
    logp: Tensor, old_logp: Tensor, mask: Tensor | None, level: ImportanceLevel = "token"
) -> Tensor:
    """log(pi_theta / pi_old) at the chosen level.

    logp [B, T] (with grad), old_logp [B, T] (no grad), mask [B, T] (needed for "sequence").
    returns: "token": [B, T], logp - old_logp (PPO / GRPO);
             "sequence": [B, 1], sum_t mask (logp - old_logp) / max(1, sum_t mask), the log of GSPO's
             length-normalised sequence ratio s_i = (pi_theta(y_i) / pi_old(y_i))^(1 / |y_i|)
             (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071, eq. 7).
    One ratio per sequence removes the token-level ratios' noise that GSPO found to destabilise
    long-sequence and MoE training; TRL: `importance_sampling_level`.
    """
    _check_choice("importance level", level, IMPORTANCE_LEVELS)
    log_ratio = logp - old_logp.detach()
    if level == "token":
        return log_ratio
    if mask is None:
        raise ValueError("importance level 'sequence' needs the completion mask")
    m = mask.to(logp.dtype)
    return ((log_ratio * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)).unsqueeze(-1)


def high_entropy_mask(entropy: Tensor, mask: Tensor, top_quantile: float) -> Tensor:
    """Tokens among the `top_quantile` share with the highest entropy: entropy >= the
    (1 - top_quantile) quantile (linear interpolation, as torch.quantile) of the masked entropies.

    entropy, mask: [B, T]. returns: [B, T] bool (False on padding; all False for an empty mask).
    Wang et al. 2025 ("Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective RL for
    LLM Reasoning", arXiv 2506.01939) train on the top 20 % only; TRL: `top_entropy_quantile`
    (TRL takes the quantile over the micro-batch gathered across processes; here over the tokens
    passed in, one micro-batch of one rank).
    """
    if not 0.0 < top_quantile <= 1.0:
        raise ValueError(f"top_quantile must be in (0, 1], got {top_quantile}")
    m = mask.bool()
    vals = entropy[m]
    if vals.numel() == 0:
        return torch.zeros_like(m)
    threshold = torch.quantile(vals.to(_at_least_fp32(vals.dtype)), 1.0 - top_quantile).to(entropy.dtype)
    return (entropy >= threshold) & m


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of x [B, T] over mask [B, T] (all tokens when None); 0 when the mask is empty."""
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def policy_loss_per_token(
    logp: Tensor,
    old_logp: Tensor | None,
    advantages: Tensor,
    kind: PolicyLossKind,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    *,
    mask: Tensor | None = None,
    level: ImportanceLevel = "token",
    delta: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token policy-gradient loss (to be minimised) and detached 0-d stats.

    logp:       [B, T] log-probs of the sampled tokens under the current policy (with grad).
    old_logp:   [B, T] log-probs under the policy that sampled them (no grad); unused for "pg".
    advantages: [B] per sequence (broadcast over tokens) or [B, T] per token.
    mask:       [B, T] or None: the stats' tokens (the loss is masked by `aggregate_loss`); needed
                for level "sequence".
    level:      "token" or "sequence" (`importance_log_ratio`); with "sequence" every token of a
                sequence shares its GSPO ratio, and its clip.
    delta:      TRL's two-sided clip (`delta`; Prime Intellect 2025, "INTELLECT-2: A Reasoning Model
                Trained Through Globally Decentralized RL", arXiv 2505.07291): for "ppo", the unclipped term uses min(ratio, delta), so a token
                with A < 0 whose ratio exploded past delta contributes -delta x A, bounded. None = off.
    returns: loss [B, T], stats {"ratio_mean", "clip_frac" (= region: low or high),
             "clip_low_frac", "clip_high_frac", "clip_delta_frac"} as 0-d tensors (no device sync here;
             `grpo_loss` converts them once).

    kind:
    - "pg":  -exp(logp - logp.detach()) * A. Value -A, gradient of -A * logp: the on-policy
      REINFORCE estimator, exact when each rollout gets one update (seeds A and D).
    - "is":  -exp(logp - old_logp) * A. Importance-sampling ratio to the sampling policy, no clipping;
      unbiased for a few steps off-policy but its variance grows with the ratio.
    - "ppo": -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A). Clipping removes the
      gradient of tokens that already moved past the trust region in the advantage's direction;
      clip_high > clip_low is DAPO's "clip-higher".
    """
    _check_choice("kind", kind, POLICY_LOSS_KINDS)
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # [B, 1] or [B, T]
    adv = adv.detach().to(logp.dtype)
    zero = logp.new_zeros(())
    clipped = low = high = over = None
    if kind == "pg":
        # old = logp.detach(): the ratio is 1 in value and carries d logp (d mean logp for "sequence")
        ratio = torch.exp(importance_log_ratio(logp, logp.detach(), mask, level))
        loss = -ratio * adv
    else:
        if old_logp is None:
            raise ValueError(f"policy loss {kind!r} needs old_logp")
        ratio = torch.exp(importance_log_ratio(logp, old_logp, mask, level))
        if kind == "is":
            loss = -ratio * adv
        else:
            clipped_obj = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
            capped = ratio if delta is None else torch.clamp(ratio, max=delta)
            unclipped = capped * adv
            loss = -torch.minimum(unclipped, clipped_obj)
            # Tokens whose gradient the clip removed: the clipped objective is the smaller one.
            clipped = (clipped_obj < ratio * adv).to(logp.dtype)
            low = ((ratio < 1.0 - clip_low) & (adv < 0)).to(logp.dtype)
            high = ((ratio > 1.0 + clip_high) & (adv > 0)).to(logp.dtype)
            if delta is not None:
                over = ((ratio > delta) & (adv < 0)).to(logp.dtype)
    loss = loss.expand(logp.shape) if loss.shape != logp.shape else loss  # "sequence": [B, 1] -> [B, T]
    with torch.no_grad():

        def mean(x: Tensor | None) -> Tensor:
            return zero if x is None else _masked_mean(x.expand(logp.shape), mask)

        stats = {
            "ratio_mean": mean(ratio.detach()),
            "clip_frac": mean(clipped),
            "clip_low_frac": mean(low),
            "clip_high_frac": mean(high),
            "clip_delta_frac": mean(over),
        }
    return loss, stats


# -------------------------------------------------------------------------------------- aggregation


def aggregate_loss(
    per_token: Tensor,
    mask: Tensor,
    kind: Aggregation,
    max_tokens: int | None = None,
    num_items_in_batch: float | None = None,
) -> Tensor:
    """Reduce a per-token loss [B, T] over completion tokens mask [B, T] (1 = counts) to a scalar.

    kind (to make gradient accumulation exact, multiply each micro-batch's result by
    `loss_scale_for_accumulation(kind, ...)` and sum over micro-batches):
    - "grpo": mean over each sequence's tokens, then mean over sequences (the GRPO paper, seed A).
      LENGTH-BIASED: a token of a 10-token answer weighs 10x a token of a 100-token answer, so long
      wrong answers are penalised less per token and short right ones rewarded more. Accumulation:
      scale by micro_seqs / global_seqs. Sequences with no masked tokens contribute 0 but count.
    - "bnpo": sum over all tokens / number of tokens in this micro-batch (TRL's definition). Unbiased
      in length within the micro-batch. Accumulation: scale by micro_tokens / global_tokens, which
      makes the accumulated loss the global token mean, i.e. equal to "dapo".
    - "dr_grpo": sum / (B * max_tokens), a constant normaliser (Dr. GRPO; max_tokens =
      max_new_tokens), no length bias and no dependence on the batch's lengths. Accumulation: scale
      by micro_seqs / global_seqs.
    - "dapo": sum / num_items_in_batch, the completion-token count of the whole optimiser step
      (all micro-batches; see `loss_scale_for_accumulation` for ranks). Each micro-batch then already
      carries its exact share, so accumulation scale is 1. Without num_items_in_batch it falls back
      to this micro-batch's count (same value as "bnpo").
    returns: 0-d tensor.
    """
    _check_choice("aggregation", kind, AGGREGATIONS)
    if per_token.shape != mask.shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match per-token loss {tuple(per_token.shape)}")
    m = mask.to(per_token.dtype)
    masked = per_token * m
    if kind == "grpo":
        return (masked.sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)).mean()
    if kind == "bnpo":
        return masked.sum() / m.sum().clamp(min=1.0)
    if kind == "dr_grpo":
        if not max_tokens:
            raise ValueError("aggregation 'dr_grpo' needs max_tokens (the max_new_tokens of the rollout)")
        return masked.sum() / (per_token.shape[0] * max_tokens)
    denom = m.sum().clamp(min=1.0) if num_items_in_batch is None else max(float(num_items_in_batch), 1.0)
    return masked.sum() / denom


def loss_scale_for_accumulation(
    kind: Aggregation,
    micro_batch_seqs: int,
    global_batch_seqs: int,
    micro_tokens: float,
    global_tokens: float,
) -> float:
    """Factor for one micro-batch's `aggregate_loss` so that the sum over micro-batches equals the
    loss of the whole optimiser step computed at once.

    micro_* count this micro-batch's sequences / completion tokens (mask sum); global_* count the
    whole optimiser step (every micro-batch of the accumulation). Under DDP, which averages gradients
    over ranks, pass global_* = all-rank count / world_size (and likewise num_items_in_batch for
    "dapo"), so the rank average is again the global loss.

    - "grpo", "dr_grpo": micro_seqs / global_seqs (both are means over sequences).
    - "bnpo": micro_tokens / global_tokens. Choice: this makes accumulated "bnpo" the exact global
      token mean (== "dapo"), independent of how the batch is split. TRL instead averages the
      micro-batch token means (scale 1 / num_micro_batches), which depends on the split; use that
      factor yourself if you need TRL's numbers.
    - "dapo": 1.0, assuming `aggregate_loss` got num_items_in_batch = global_tokens.
    """
    _check_choice("aggregation", kind, AGGREGATIONS)
    if kind in ("grpo", "dr_grpo"):
        if global_batch_seqs <= 0:
            raise ValueError(f"global_batch_seqs must be > 0, got {global_batch_seqs}")
        return micro_batch_seqs / global_batch_seqs
    if kind == "bnpo":
        # An all-empty step has loss 0 whatever the factor; avoid 0 / 0.
        return float(micro_tokens) / float(global_tokens) if global_tokens > 0 else 0.0
    return 1.0


# ---------------------------------------------------------------------------------------- full loss


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    kind: PolicyLossKind,
    aggregation: Aggregation,
    beta: float = 0.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    max_tokens: int | None = None,
    num_items_in_batch: float | None = None,
    level: ImportanceLevel = "token",
    delta: float | None = None,
    kl_estimator: KlEstimator = "k3",
    token_weight: Tensor | None = None,
    entropy: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Policy loss + beta * KL to the reference, aggregated over completion tokens.

    logp [B, T] (with grad), old_logp [B, T] | None (needed for "is"/"ppo"), ref_logp [B, T] | None,
    advantages [B] (or [B, T]), mask [B, T] (1 = completion token that counts).
    returns: loss 0-d tensor; stats {"kl", "clip_frac", "clip_low_frac", "clip_high_frac",
    "ratio_mean"} as floats, masked means over this micro-batch's tokens ("kl" is 0.0 without a
    reference; it is logged whenever ref_logp is given, even with beta = 0).

    Per token, in TRL's order: policy_loss_per_token(kind, level, delta) x token_weight + beta x KL
    (seed D: -(ratio * A - beta * KL)). The KL term is added only when beta > 0 and ref_logp is given;
    kl_estimator "k3" is `kl_k3`, "k3_ratio" is `kl_k3_ratio` with the level's ratio before the
    delta cap. token_weight [B, T] | None multiplies the policy term only (the
    `high_entropy_mask`; the normalisers still count every masked token, as TRL).
    entropy [B, T] | None (no grad): logged as "entropy" (masked mean) and, with token_weight,
    "entropy_kept_frac" (share of tokens the weight keeps).
    """
    _check_choice("kl_estimator", kl_estimator, KL_ESTIMATORS)
    per_token, st = policy_loss_per_token(
        logp, old_logp, advantages, kind, clip_low, clip_high, mask=mask, level=level, delta=delta
    )
    if token_weight is not None:
        per_token = per_token * token_weight.to(per_token.dtype)
    kl_mean = logp.new_zeros(())
    if ref_logp is not None:
        kl = kl_k3(logp, ref_logp)
        if kl_estimator == "k3_ratio":
            old = logp.detach() if kind == "pg" or old_logp is None else old_logp
            kl = kl_k3_ratio(logp, ref_logp, torch.exp(importance_log_ratio(logp, old, mask, level)))
        if beta > 0:
            per_token = per_token + beta * kl
        with torch.no_grad():
            kl_mean = _masked_mean(kl.detach(), mask)
    loss = aggregate_loss(per_token, mask, aggregation, max_tokens, num_items_in_batch)
    extra: dict[str, Tensor] = {}
    with torch.no_grad():
        if entropy is not None:
            extra["entropy"] = _masked_mean(entropy.detach().to(logp.dtype), mask)
        if token_weight is not None:
            extra["entropy_kept_frac"] = _masked_mean(token_weight.detach().to(logp.dtype), mask)
    names = ["kl", *st, *extra]
    # One stack + tolist: a single device sync for all stats instead of one per .item().
    values = torch.stack([kl_mean, *st.values(), *extra.values()]).float().tolist()
    return loss, dict(zip(names, values))


# ---------------------------------------------------------------------------------------------- mask


def completion_mask_from_eos(
    completion_ids: Tensor, eos_ids: list[int] | int | Tensor, pad_id: int | None
) -> Tensor:
    """Which completion tokens count: 1 up to and including the first EOS, 0 after.

    completion_ids: [B, C] int; eos_ids: ids that end a completion (Qwen2.5-VL: <|im_end|> and
    <|endoftext|>); pad_id: the right-padding id (may equal an EOS id, as in seed A).
    returns: [B, C] int64.

    The first EOS is kept because the policy must learn to stop (seed A). A completion without EOS
    (truncated at max_new_tokens) counts in full, except that a pad_id that is not an EOS id ends it,
    exclusive: rollout backends that return ragged completions right-pad them with pad_id.
    """
    eos = torch.as_tensor(eos_ids, device=completion_ids.device, dtype=completion_ids.dtype).reshape(-1)
    is_eos = torch.isin(completion_ids, eos).long()
    # Exclusive cumsum: number of EOS strictly before each position; 0 means "not yet ended".
    keep = (is_eos.cumsum(dim=1) - is_eos) == 0
    if pad_id is not None:
        is_pad = (completion_ids == pad_id) & ~is_eos.bool()
        keep &= is_pad.long().cumsum(dim=1) == 0
    return keep.long()
