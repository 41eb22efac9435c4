"""Geometry3K rewards (seed C, "Visual R1"): format, accuracy, visual grounding, Vision-SR1 blind pass.

Listed in `rewards/__init__.py` as `geometry_format`, `geometry_accuracy`, `geometry_grounding` and
`geometry_blind`. Every value is configurable through the recipe's `{name, weight, kwargs}`
entries. Two presets ship as recipes:

- README weights (recipes `geometry3k`, `geometry3k-sr1`): the functions return values in [0, 1]
  and the weights scale them: format 0.5, accuracy 1.0, grounding 0.1 (blind pass 1.0 in SR1).
- the seed's tiered code (recipe `geometry3k-seed-weights`): weight 1 and the seed's own values as
  kwargs: format 0.1 / 0.08 / 0.02, accuracy 1.0, blind +1.0 / -0.5, grounding min(0.2, 0.02 x score).

Grading is `vlmgrpo.tasks.geometry_grader.grade`; `use_choices` (default off) lets a prediction
name a choice letter. Keep it off unless the prompt shows the choices: a letter the policy was
never shown is a free 25% guess that GRPO would happily learn.

The blind pass (Vision-SR1): a completion that is correct and has a `<scan>` is re-asked to the
current policy text-only (no image, no vision tokens) from its scan and the problem text; one
sample, at the rollout temperature unless `temperature` is set. The scan earns +1.0 when the blind
answer is correct, -0.5 when it is wrong; every other completion gets 0 (not None: a skipped sample
would leave its group). All blind prompts of the batch go through one `ctx.policy.generate` call,
i.e. the policy's own generation path (same weights, same sampler, same suppressed tokens).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from vlmgrpo.errors import VlmgrpoError
from vlmgrpo.rewards.base import RewardContext, RewardRecord, batched
from vlmgrpo.tasks.geometry_grader import extract_answer, grade

DEFAULT_BLIND_TEMPLATE = (
    "Based on this visual description of a geometry diagram, solve the problem:\n\n"
    "[Visual description]\n{scan}\n[End of visual description]\n\n"
    "Problem: {question}\n\n"
    "Think step by step. Provide reasoning in <think>...</think> tags and final answer in "
    "<answer>...</answer> tags."
)

# Words that point at the picture weigh more than generic geometry vocabulary: "as shown in the
# diagram, angle ABC is marked 40" grounds the reasoning, "angle" alone barely does. Each keyword
# counts once (prefix match, case-insensitive), so repeating one word earns nothing.
DEFAULT_KEYWORDS: dict[str, float] = {
    "diagram": 2.0,
    "figure": 2.0,
    "image": 2.0,
    "shown": 2.0,
    "label": 2.0,
    "marked": 2.0,
    "angle": 1.0,
    "triangle": 1.0,
    "circle": 1.0,
    "radius": 1.0,
    "diameter": 1.0,
    "chord": 1.0,
    "tangent": 1.0,
    "arc": 1.0,
    "parallel": 1.0,
    "perpendicular": 1.0,
    "hypotenuse": 1.0,
    "segment": 1.0,
    "vertex": 1.0,
    "vertices": 1.0,
    "midpoint": 1.0,
    "bisect": 1.0,
    "altitude": 1.0,
    "congruent": 1.0,
    "rectangle": 1.0,
    "parallelogram": 1.0,
    "trapezoid": 1.0,
    "rhombus": 1.0,
    "polygon": 1.0,
    "side": 0.5,
    "square": 0.5,
    "similar": 0.5,
    "area": 0.5,
    "perimeter": 0.5,
}


# ------------------------------------------------------------------------------------ structure


def _blocks(text: str, tag: str) -> list[re.Match[str]]:
    return list(re.finditer(rf"<{tag}>(.*?)</{tag}>", text, re.S | re.I))


def structure(text: str) -> str:
    """Which tag layout a completion has: "scan_think_answer", "think_answer", "answer" or "none".

    Each tier needs its blocks closed, non-empty, exactly once, in order; the answer comes last.
    """
    answers = _blocks(text, "answer")
    if len(answers) != 1 or not answers[0].group(1).strip():
        return "none"
    thinks = _blocks(text, "think")
    if len(thinks) != 1 or not thinks[0].group(1).strip() or thinks[0].end() > answers[0].start():
        return "answer"
    scans = _blocks(text, "scan")
    if len(scans) == 1 and scans[0].group(1).strip() and scans[0].end() <= thinks[0].start():
        return "scan_think_answer"
    return "think_answer"


def scan_text(text: str) -> str | None:
    """The closed, non-empty `<scan>` block's text, or None."""
    scans = _blocks(text, "scan")
    return (scans[0].group(1).strip() or None) if scans else None


# -------------------------------------------------------------------------------------- grading


@functools.lru_cache(maxsize=8192)
def _grade_cached(pred: str | None, answer: str, choices: tuple[str, ...] | None, rel_tol: float) -> bool:
    # three rewards grade the same completion: sympy work is done once
    return grade(pred, answer, list(choices) if choices else None, rel_tol=rel_tol)


def is_correct(
    text: str, sample: dict[str, Any], rel_tol: float = 1e-4, lenient: bool = True, use_choices: bool = False
) -> bool:
    """Does `text` (a completion) answer `sample` correctly?"""
    choices = sample.get("choices") if use_choices else None
    pred = extract_answer(text, lenient)
    return _grade_cached(pred, str(sample.get("answer", "")), tuple(choices) if choices else None, rel_tol)


def grounding_score(text: str, keywords: dict[str, float] | None = None) -> float:
    """Sum of the weights of the distinct keywords found in `text`."""
    kw = DEFAULT_KEYWORDS if keywords is None else keywords
    low = text.lower()
    return float(sum(w for k, w in kw.items() if re.search(rf"\b{re.escape(k.lower())}", low)))


# -------------------------------------------------------------------------------------- rewards


def format_reward(
    rec: RewardRecord,
    ctx: RewardContext,
    scan_think_answer: float = 1.0,
    think_answer: float = 1.0,
    answer_only: float = 0.0,
) -> float:
    """Tiered tag format (see `structure`): scan+think+answer / think+answer / answer only / 0.
    Defaults suit the think/answer prompt; the SR1 recipes rank the tiers."""
    tiers = {"scan_think_answer": scan_think_answer, "think_answer": think_answer, "answer": answer_only}
    return float(tiers.get(structure(rec.completion), 0.0))


def accuracy_reward(
    rec: RewardRecord,
    ctx: RewardContext,
    correct: float = 1.0,
    wrong: float = 0.0,
    rel_tol: float = 1e-4,
    lenient: bool = True,
    use_choices: bool = False,
) -> dict[str, float]:
    """`correct` when the extracted answer grades equal to the sample's answer, else `wrong`.
    Sub-score `extracted`: whether any answer could be extracted (a format signal of its own)."""
    ok = is_correct(rec.completion, rec.sample, rel_tol, lenient, use_choices)
    rec.extras["correct"] = ok
    return {
        "score": correct if ok else wrong,
        "extracted": float(extract_answer(rec.completion, lenient) is not None),
    }


def grounding_reward(
    rec: RewardRecord,
    ctx: RewardContext,
    per_point: float = 0.1,
    cap: float = 1.0,
    only_when_correct: bool = True,
    keywords: dict[str, float] | None = None,
    rel_tol: float = 1e-4,
    lenient: bool = True,
    use_choices: bool = False,
) -> float:
    """min(cap, per_point x weighted keyword score), only for correct completions by default (a
    keyword bonus on wrong answers would reward vocabulary instead of solving)."""
    if only_when_correct and not is_correct(rec.completion, rec.sample, rel_tol, lenient, use_choices):
        return 0.0
    return float(min(cap, per_point * grounding_score(rec.completion, keywords)))


def blind_prompt(
    scan: str, sample: dict[str, Any], template: str = DEFAULT_BLIND_TEMPLATE, system: str = ""
) -> list[dict]:
    """Text-only chat messages for the blind pass (content is a plain string: no image slot)."""
    fields = {k: v for k, v in sample.items() if k != "images"}
    fields.setdefault("question", str(sample.get("problem", "")).replace("<image>", "").strip())
    text = template.format_map({**fields, "scan": scan})
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    return messages


def _blind_temperature(ctx: RewardContext, temperature: float | None) -> float | None:
    """The configured value, else the one the policy itself samples at in this phase."""
    if temperature is not None:
        return float(temperature)
    cfg = getattr(ctx.policy, "cfg", None)
    if cfg is None:
        return None  # the policy handle's own default
    return float(cfg.eval.temperature if ctx.phase == "eval" else cfg.rollout.temperature)


def run_blind_pass(
    items: list[tuple[str, dict[str, Any]]],
    policy: Any,
    *,
    template: str = DEFAULT_BLIND_TEMPLATE,
    system: str = "",
    temperature: float | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 0,
) -> tuple[list[list[dict]], list[str]]:
    """Ask `policy` each (scan, sample) text-only; returns (messages, completions)."""
    messages = [blind_prompt(scan, sample, template, system) for scan, sample in items]
    sampling: dict[str, Any] = {}
    if temperature is not None:
        sampling["temperature"] = temperature
    if max_new_tokens:
        sampling["max_new_tokens"] = int(max_new_tokens)
    size = batch_size or len(messages) or 1
    outputs: list[str] = []
    for s in range(0, len(messages), size):
        chunk = messages[s : s + size]
        outputs += list(policy.generate(chunk, [[] for _ in chunk], **sampling))
    if len(outputs) != len(messages):
        raise VlmgrpoError(
            f"geometry_blind: the policy returned {len(outputs)} texts for {len(messages)} prompts"
        )
    return messages, outputs


@batched
def blind_pass_reward(
    records: list[RewardRecord],
    ctx: RewardContext,
    correct: float = 1.0,
    wrong: float = -0.5,
    template: str = DEFAULT_BLIND_TEMPLATE,
    system: str = "",
    temperature: float | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 0,
    rel_tol: float = 1e-4,
    lenient: bool = True,
    use_choices: bool = False,
) -> list[dict[str, float]]:
    """Vision-SR1 blind pass over the whole batch (see the module docstring). Sub-scores:
    `attempted` (1 where the blind pass ran) and `success` (blind correct, only where attempted:
    its logged mean is the blind-pass success rate)."""
    if ctx.policy is None:
        raise VlmgrpoError("geometry_blind: needs the policy (RewardContext.policy is None)")
    todo: list[int] = []
    items: list[tuple[str, dict[str, Any]]] = []
    for i, rec in enumerate(records):
        scan = scan_text(rec.completion)
        if scan and is_correct(rec.completion, rec.sample, rel_tol, lenient, use_choices):
            todo.append(i)
            items.append((scan, rec.sample))
    out: list[dict[str, float]] = [{"score": 0.0, "attempted": 0.0} for _ in records]
    if not items:
        return out
    _, texts = run_blind_pass(
        items,
        ctx.policy,
        template=template,
        system=system,
        temperature=_blind_temperature(ctx, temperature),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    for i, text in zip(todo, texts):
        ok = is_correct(text, records[i].sample, rel_tol, lenient, use_choices)
        records[i].extras["blind_completion"] = text
        records[i].extras["blind_correct"] = ok
        out[i] = {"score": correct if ok else wrong, "attempted": 1.0, "success": float(ok)}
    return out


# Per-call bound (seconds) when the trainer runs these rewards (`rewards[].timeout_s`): each call
# runs in a deadline worker (`vlmgrpo.rewards.deadline`). The blind pass uses the policy and runs
# in-process; its grading is bounded by the grader's own deadline.
format_reward.timeout_s = accuracy_reward.timeout_s = grounding_reward.timeout_s = 10.0  # type: ignore[attr-defined]
