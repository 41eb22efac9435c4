"""Judges: grade free-text answers against a ground truth, behind one interface.

    judge = build_judge("rules")            # or "llm", or "path/to/file.py:MyJudge"
    verdicts = judge.grade([JudgeItem(question, response, answer, inst_category)])

A judge returns one `Verdict` per item, in order: `score` is 1 (correct), 0 (wrong) or -1
(ungraded: the judge failed on this item after its retries; evaluation excludes it from pass@k and
counts it), plus the answer the judge extracted from the response.

Built in: `rules` (offline exact / numeric-tolerance / multiple-choice matching) and `llm` (any
OpenAI-compatible chat-completions endpoint, CharXiv's reasoning-grading rules per question
category). Judges are classes constructed with keyword arguments (`build_judge(name, **kwargs)`);
the `llm` judge imports httpx only when selected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from vlmgrpo.registry import Registry

UNGRADED = -1

# CharXiv's reasoning-question categories (`inst_category`)
CATEGORIES = {
    1: "text-in-chart",
    2: "text-in-general",
    3: "number-in-chart",
    4: "number-in-general",
}


@dataclass
class JudgeItem:
    """One response to grade."""

    question: str  # the question as the model saw it (without answer-format instructions)
    response: str  # the model's full completion
    answer: str  # ground truth
    inst_category: int = 1  # 1 text-in-chart, 2 text-in-general, 3 number-in-chart, 4 number-in-general
    choices: list[str] = field(default_factory=list)  # candidate answers, when the question has them
    id: str = ""  # for logs only


@dataclass
class Verdict:
    score: int  # 1 correct, 0 wrong, -1 ungraded
    extracted_answer: str = ""
    error: str = ""  # why an item is ungraded (empty when graded)

    @property
    def graded(self) -> bool:
        return self.score != UNGRADED


class Judge(Protocol):
    name: str

    def grade(self, items: list[JudgeItem]) -> list[Verdict]: ...


JUDGES: Registry[Any] = Registry("judge")
JUDGES.register("rules", "vlmgrpo.judges.rules:RulesJudge")
JUDGES.register("llm", "vlmgrpo.judges.llm:LLMJudge")


def build_judge(name: str, **kwargs: Any) -> Judge:
    """Construct the judge registered as `name` (or given as "module:Class") with `kwargs`."""
    return JUDGES.get(name)(**kwargs)


__all__ = ["CATEGORIES", "JUDGES", "Judge", "JudgeItem", "UNGRADED", "Verdict", "build_judge"]
