"""Geometry3K evaluation: greedy answers on held-out items, graded like the training rewards.

`evaluate_geometry(model, proc, items, cfg)` returns the seed's report (accuracy, format rate,
grounding rate, predictions table) plus the Vision-SR1 blind-pass success rate:

- accuracy: greedy completion graded correct (`geometry_grader.grade`);
- format_rate: completions with the layout the prompt asks for (scan+think+answer when the
  recipe's prompt or prefill mentions `<scan>`, else think+answer);
- grounding_rate: completions whose reasoning names at least one grounding keyword (correct or not:
  a diagnostic of looking, not the reward, which pays only correct answers);
- blind_success_rate: among correct completions with a scan, the share whose text-only blind
  re-ask (greedy, from the scan) is also correct; None when none was attempted (`blind_attempts`);
- predictions: one dict per item (id, question, answer, prediction, correct, format, grounding,
  completion, blind_completion, blind_correct).

Grading and blind-pass settings come from the recipe's reward entries (`geometry_accuracy`,
`geometry_grounding`, `geometry_blind` kwargs), so evaluation grades as training rewards.
The blind pass runs for every recipe, so a think/answer policy reports 0 attempts. Rates are None
(not NaN) when undefined, so the result dumps as strict JSON. `pass@1` and `score` repeat the
accuracy for `vlmgrpo eval`, which calls task functions as `fn(model, proc, ctx)` with a
`TaskContext` (its `samples()` and `cfg`); both call forms are accepted.
"""

from __future__ import annotations

from typing import Any

from vlmgrpo.rewards.geometry import (
    DEFAULT_BLIND_TEMPLATE,
    grounding_score,
    is_correct,
    run_blind_pass,
    scan_text,
    structure,
)
from vlmgrpo.tasks.geometry_grader import extract_answer


def _reward_kwargs(cfg: Any, name: str) -> dict[str, Any]:
    for r in getattr(cfg, "rewards", []) or []:
        if r.name == name:
            return dict(r.kwargs)
    return {}


def _rate(hits: int, n: int) -> float | None:
    return hits / n if n else None


def evaluate_geometry(
    model: Any, proc: Any, items: Any, cfg: Any = None, batch_size: int = 8
) -> dict[str, Any]:
    """Greedy evaluation of `model` on `items` (dataset samples); see the module docstring.
    `cfg` is the run's `Config` (prompt templates, max_new_tokens, reward kwargs). `items` may be
    `vlmgrpo eval`'s TaskContext instead, with `cfg` left out."""
    import torch

    if cfg is None and hasattr(items, "samples"):
        items, cfg = items.samples(), items.cfg
    items = list(items)

    from vlmgrpo.rollout import hf as hf_rollout
    from vlmgrpo.sampling import PolicyHandle, build_prompt

    acc_kw = _reward_kwargs(cfg, "geometry_accuracy")
    grade_kw = {k: acc_kw[k] for k in ("rel_tol", "lenient", "use_choices") if k in acc_kw}
    keywords = _reward_kwargs(cfg, "geometry_grounding").get("keywords")
    blind_kw = _reward_kwargs(cfg, "geometry_blind")
    wants_scan = "<scan>" in cfg.prompt.prefill or "<scan>" in cfg.prompt.user
    expected = "scan_think_answer" if wants_scan else "think_answer"
    max_new = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens

    completions: list[str] = []
    with torch.no_grad():
        for s in range(0, len(items), batch_size):
            chunk = items[s : s + batch_size]
            batch = hf_rollout.sample(
                model, proc, [build_prompt(x, cfg) for x in chunk], 1, temperature=0.0, max_new_tokens=max_new
            )
            completions += batch.completions

    rows: list[dict[str, Any]] = []
    blind_items: list[tuple[str, dict[str, Any]]] = []
    blind_rows: list[int] = []
    for i, (item, text) in enumerate(zip(items, completions)):
        ok = is_correct(text, item, **grade_kw)
        scan = scan_text(text)
        rows.append(
            {
                "id": item.get("id", str(i)),
                "question": item.get("question", ""),
                "answer": item.get("answer", ""),
                "prediction": extract_answer(text, grade_kw.get("lenient", True)),
                "correct": ok,
                "format": structure(text),
                "grounding": grounding_score(text, keywords),
                "completion": text,
                "blind_completion": None,
                "blind_correct": None,
            }
        )
        if ok and scan:
            blind_items.append((scan, item))
            blind_rows.append(i)
    if blind_items:
        policy = PolicyHandle(model, proc, cfg)
        _, blind_texts = run_blind_pass(
            blind_items,
            policy,
            template=blind_kw.get("template", DEFAULT_BLIND_TEMPLATE),
            system=blind_kw.get("system", ""),
            temperature=0.0,  # greedy, like the first pass
            max_new_tokens=blind_kw.get("max_new_tokens") or max_new,
            batch_size=batch_size,
        )
        for i, text in zip(blind_rows, blind_texts):
            rows[i]["blind_completion"] = text
            rows[i]["blind_correct"] = is_correct(text, items[i], **grade_kw)
    n = len(rows)
    attempts = [r["blind_correct"] for r in rows if r["blind_correct"] is not None]
    accuracy = _rate(sum(r["correct"] for r in rows), n)
    return {
        "n": n,
        "accuracy": accuracy,
        "pass@1": accuracy,
        "score": accuracy,
        "format_rate": _rate(sum(r["format"] == expected for r in rows), n),
        "grounding_rate": _rate(sum(r["grounding"] > 0 for r in rows), n),
        "blind_attempts": len(attempts),
        "blind_success_rate": _rate(sum(attempts), len(attempts)),
        "predictions": rows,
    }
