"""QA checkpoint evaluation (seed A's): n completions per chart question, judged; pass@1 and pass@k.

`qa_task(model, proc, ctx)` is the `charts` / `charxiv` task of `vlmgrpo eval` (`vlmgrpo.evaluate`):
per item every completion, its score and the extracted answer; pass@1 = c/n; overall = mean over
items; pass@k by the unbiased estimator; ungraded completions (score -1) are excluded from n and
counted. `regrade` re-asks the judge about a stored result's ungraded completions only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from vlmgrpo.errors import DataError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n graded samples with c correct: 1 - C(n-c, k) / C(n, k).

    Exact integer binomials, so large n loses no precision; k = 1 gives c / n."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n graded samples, got n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def qa_task(model: Any, proc: Any, ctx: Any) -> dict[str, Any]:
    """Seed A's checkpoint eval: n completions per chart question, judged; pass@1 and pass@k."""
    from vlmgrpo.judges import JudgeItem
    from vlmgrpo.rollout import Prompt

    o = ctx.opts
    items = ctx.samples()
    missing = [k for k in ("question", "answer") if k not in items[0]]
    if missing:
        raise DataError(
            f"task {ctx.task}: the items have no {'/'.join(missing)} field; use --task charts (offline "
            "benchmark) or --data a CharXiv-style test_set.json"
        )
    prompts = []
    for s in items:
        text = str(s["question"]) + (f"\n{o.prompt_suffix}" if o.prompt_suffix else "")
        images = list(s.get("images") or [])
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
        messages = ([{"role": "system", "content": o.system}] if o.system else []) + [
            {"role": "user", "content": content}
        ]
        prompts.append(Prompt(messages=messages, images=images, text=text))
    completions = ctx.generate(model, proc, prompts, o.num_samples)
    judge_items = [
        JudgeItem(
            question=str(s["question"]),
            response=c,
            answer=str(s["answer"]),
            inst_category=int(s.get("inst_category") or 1),
            choices=list(s.get("choices") or []),
            id=f"{s.get('id', i)}#{j}",
        )
        for i, (s, comps) in enumerate(zip(items, completions))
        for j, c in enumerate(comps)
    ]
    verdicts = ctx.judge.grade(judge_items)
    per_item, errors = [], Counter()
    for i, (s, comps) in enumerate(zip(items, completions)):
        vs = verdicts[i * o.num_samples : (i + 1) * o.num_samples]
        errors.update(v.error for v in vs if not v.graded)
        per_item.append(
            {
                "id": str(s.get("id", i)),
                "question": str(s["question"]),
                "ground_truth": str(s["answer"]),
                "inst_category": int(s.get("inst_category") or 1),
                "choices": list(s.get("choices") or []),
                "completions": [
                    {"text": t, "score": v.score, "extracted_answer": v.extracted_answer}
                    | ({"error": v.error} if v.error else {})
                    for t, v in zip(comps, vs)
                ],
            }
            | item_stats([v.score for v in vs], o.ks)
        )
    return summarize_items(per_item, o.ks) | {"judge_errors": dict(errors.most_common(10))}


def item_stats(scores: Sequence[int], ks: Sequence[int]) -> dict[str, Any]:
    """One item's counts from its completions' scores (1/0, -1 = ungraded, excluded from n)."""
    n = sum(x != -1 for x in scores)
    c = sum(x == 1 for x in scores)
    return {
        "graded": n,
        "correct": c,
        "ungraded": len(scores) - n,
        "pass@1": c / n if n else None,
        "pass@k": {str(k): pass_at_k(n, c, k) for k in sorted(set(ks) | {1}) if 1 <= k <= n},
    }


def summarize_items(per_item: list[dict[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """Overall pass@1 (mean of per-item c/n over items with a graded sample) and pass@k."""
    p1 = [it["pass@1"] for it in per_item if it["pass@1"] is not None]
    overall: dict[str, Any] = {
        "pass@1": sum(p1) / len(p1) if p1 else None,
        "pass@k": {},
        "graded": sum(it["graded"] for it in per_item),
        "ungraded": sum(it["ungraded"] for it in per_item),
        "items_without_grades": sum(it["pass@1"] is None for it in per_item),
        "items": per_item,
    }
    for k in sorted(set(ks) | {1}):
        vals = [it["pass@k"][str(k)] for it in per_item if str(k) in it["pass@k"]]
        if vals:
            overall["pass@k"][str(k)] = sum(vals) / len(vals)
    return overall


def regrade(result: dict[str, Any], judge: Any, ks: Sequence[int]) -> dict[str, Any]:
    """Grade again only the ungraded completions of a stored QA result (no model needed)."""
    from vlmgrpo.judges import JudgeItem

    todo = [
        (it, c)
        for it in result.get("items", [])
        for c in it.get("completions", [])
        if c.get("score", -1) == -1
    ]
    verdicts = judge.grade(
        [
            JudgeItem(
                it["question"],
                c["text"],
                it["ground_truth"],
                it.get("inst_category", 1),
                it.get("choices", []),
                it["id"],
            )
            for it, c in todo
        ]
    )
    for (_, c), v in zip(todo, verdicts):
        c.update(score=v.score, extracted_answer=v.extracted_answer)
        c.pop("error", None)
        if v.error:
            c["error"] = v.error
    for it in result.get("items", []):
        it.update(item_stats([c["score"] for c in it["completions"]], ks))
    return result | summarize_items(result.get("items", []), ks)
