"""The `scenes-qa` task of `vlmgrpo eval`: questions about held-out scenes, graded by rules.

The run's held-out scenes (its eval dataset when that is `scenes`, else 200 one-object held-out
scenes of seed 0), the first `num_items` of them, three questions each (`data/scene_qa.py`:
colour, shape, position); `num_samples` answers per question under the question prompt (the
image, then the question; no system prompt unless given); each graded by rules. pass@1 / pass@k
as the QA benchmarks (`tasks/qa_eval.py`), plus pass@1 per attribute next to its chance level.
Its default settings (`SCENE_QA_DEFAULTS`) are the cycle demo's transfer check; the system prompt
is the run's `prompt.system`.

For a run trained on scenes it also grades the policy's own descriptions (`describe`): the run's
prompt (`prompt.user`, e.g. "Describe this image."), `num_samples` descriptions per scene, each
graded by the same rules for colour, shape and position. Why: the questions measure transfer to
prompts the run never trained on; the descriptions measure what the run itself learned to say
(for the demo: whether it names the right shape), and the two differ (docs/learning.md).
"""

from __future__ import annotations

from typing import Any

from vlmgrpo.errors import DataError

# `vlmgrpo eval --task scenes-qa`'s defaults (options given win), also the cycle demo's transfer
# check: 32 scenes x 3 questions x 4 sampled answers of at most 24 tokens (a word or two answers a
# question; the demo's policy writes 24-token descriptions), at the demo's eval temperature.
SCENE_QA_DEFAULTS: dict[str, Any] = {
    "num_items": 32,
    "num_samples": 4,
    "ks": (1, 4),
    "temperature": 1.0,
    "max_new_tokens": 24,
}


def scene_qa_task(model: Any, proc: Any, ctx: Any) -> dict[str, Any]:
    """pass@1 / pass@k over the scenes' questions, and `by_attribute` pass@1 with `chance`."""
    from vlmgrpo.data.scene_qa import ATTRIBUTES, CHANCE, grade, questions
    from vlmgrpo.rollout import Prompt
    from vlmgrpo.tasks.qa_eval import item_stats, summarize_items

    o = ctx.opts
    scenes = ctx.samples()
    if "scene" not in scenes[0]:
        raise DataError(f"task {ctx.task}: the items are not scenes (no 'scene' field)")
    items = [q for s in scenes for q in questions(s)]
    if not items:
        raise DataError(f"task {ctx.task}: no one-object scene among the {len(scenes)} items")
    prompts = []
    for q in items:
        text = q["question"] + (f"\n{o.prompt_suffix}" if o.prompt_suffix else "")
        content = [{"type": "image"} for _ in q["images"]] + [{"type": "text", "text": text}]
        messages = ([{"role": "system", "content": o.system}] if o.system else []) + [
            {"role": "user", "content": content}
        ]
        prompts.append(Prompt(messages=messages, images=q["images"], text=text))
    completions = ctx.generate(model, proc, prompts, o.num_samples)
    per_item = []
    for q, comps in zip(items, completions):
        graded = [grade(t, q["attribute"], q["answer"]) for t in comps]
        per_item.append(
            {
                "id": q["id"],
                "question": q["question"],
                "ground_truth": q["answer"],
                "attribute": q["attribute"],
                "completions": [
                    {"text": t, "score": s, "extracted_answer": e} for t, (s, e) in zip(comps, graded)
                ],
            }
            | item_stats([s for s, _ in graded], o.ks)
        )
    out = summarize_items(per_item, o.ks)
    by_attribute = {}
    for a in ATTRIBUTES:
        p1 = [it["pass@1"] for it in per_item if it["attribute"] == a]
        by_attribute[a] = {"pass@1": sum(p1) / len(p1) if p1 else None, "n": len(p1), "chance": CHANCE[a]}
    # flat copies of the per-attribute pass@1: the report's results table shows them as columns
    flat = {a: v["pass@1"] for a, v in by_attribute.items()}
    out |= {"by_attribute": by_attribute} | flat
    if (ctx.cfg.data.eval_dataset or ctx.cfg.data.dataset) == "scenes":
        out["describe"] = describe_scenes(model, proc, ctx, [s for s in scenes if questions(s)])
        out |= {f"describe_{a}": v for a, v in out["describe"]["by_attribute"].items()}
    return out


def describe_scenes(model: Any, proc: Any, ctx: Any, scenes: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's own prompt on one-object `scenes`, `num_samples` descriptions each, graded per
    attribute: {"prompt", "by_attribute": {attribute: share right}, "items": [...]}."""
    from vlmgrpo.data.scene_qa import ATTRIBUTES, grade, questions
    from vlmgrpo.sampling import build_prompt

    prompts = [build_prompt(s, ctx.cfg) for s in scenes]
    completions = ctx.generate(model, proc, prompts, ctx.opts.num_samples)
    items, right = [], {a: [] for a in ATTRIBUTES}
    for s, comps in zip(scenes, completions):
        truth = {q["attribute"]: q["answer"] for q in questions(s)}
        graded = [{a: grade(t, a, truth[a])[0] for a in ATTRIBUTES} for t in comps]
        for g in graded:
            for a in ATTRIBUTES:
                right[a].append(g[a])
        items.append(
            {"id": s.get("id", "scene"), "truth": truth, "completions": list(comps), "grades": graded}
        )
    return {
        "prompt": ctx.cfg.prompt.user,
        "by_attribute": {a: sum(v) / len(v) if v else None for a, v in right.items()},
        "items": items,
    }
