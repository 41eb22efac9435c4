"""The offline judge: exact, numeric-tolerance and multiple-choice matching, no API.

Extraction: the answer is the last `<answer>...</answer>` block, else the last `\\boxed{...}`, else
the text after the last "answer is" / "answer:" cue (up to the end of its sentence), else the last
non-empty line. Matching, by the kind of the ground truth:

- number (ground truth parses as a number, `%` and thousands separators allowed): the first number
  of a cued answer (the last number of an uncued one) must equal it within `rel_tol` / `abs_tol`;
- multiple choice (a single letter A-H, or `choices` given): the answer names exactly the right
  option (letter, "(b)", or the option text) and no other;
- text: equal after normalisation (case, punctuation, articles, spaces), or the normalised ground
  truth appears as whole words in the answer.

Non-goals: paraphrases ("goes up" for "increase") and units conversions; use the `llm` judge there.
"""

from __future__ import annotations

import math
import re

from vlmgrpo.judges import JudgeItem, Verdict

_NUM = r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?"
_NUM_RE = re.compile(_NUM)
_TAG_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S | re.I)
_CUE_RE = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*", re.I)
_LETTER_RE = re.compile(r"^\(?([A-Ha-h])\)?[.)]?$")


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return text[i:]


def extract_answer(response: str) -> tuple[str, bool]:
    """(answer text, cued): cued = it came from a tag, a box or an "answer is" phrase."""
    tags = _TAG_RE.findall(response)
    if tags and tags[-1].strip():
        return tags[-1].strip(), True
    boxed = _boxed(response)
    if boxed is not None and boxed.strip():
        return boxed.strip(), True
    cues = list(_CUE_RE.finditer(response))
    if cues:
        rest = response[cues[-1].end() :].strip()
        # up to the end of the sentence: a period followed by a space or the end (not a decimal point)
        sentence = re.split(r"(?<!\d)\.(?:\s|$)|\.(?=\s)|\n", rest, maxsplit=1)[0].strip()
        if sentence:
            return sentence, True
    lines = [ln.strip() for ln in response.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else ""), False


def parse_number(text: str) -> float | None:
    """The number a whole string denotes ("1,200", "45%", "-3.5", "−2"), else None."""
    s = text.strip().replace("−", "-").rstrip("%").strip().replace("$", "")
    if not re.fullmatch(_NUM, s):
        return None
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def numbers_in(text: str) -> list[float]:
    out = []
    for m in _NUM_RE.finditer(text):
        try:
            out.append(float(m.group().replace(",", "").replace("−", "-")))
        except ValueError:
            continue
    return out


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces, articles dropped, spaces collapsed."""
    s = re.sub(r"[^\w\s.%-]", " ", text.lower())
    s = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", s)
    words = [w for w in s.split() if w not in ("a", "an", "the")]
    return " ".join(words)


def _contains_words(haystack: str, needle: str) -> bool:
    return bool(needle) and re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", haystack) is not None


class RulesJudge:
    """Offline matching judge; see the module docstring for the rules."""

    name = "rules"

    def __init__(self, rel_tol: float = 1e-3, abs_tol: float = 1e-6) -> None:
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol

    def grade(self, items: list[JudgeItem]) -> list[Verdict]:
        return [self.grade_one(it) for it in items]

    def grade_one(self, item: JudgeItem) -> Verdict:
        answer, cued = extract_answer(item.response)
        truth = str(item.answer).strip()
        if item.choices or _LETTER_RE.match(truth):
            return self._choice(answer, truth, item.choices)
        gt_num = parse_number(truth)
        if gt_num is not None:
            return self._number(answer, cued, gt_num)
        return self._text(answer, truth)

    def _number(self, answer: str, cued: bool, truth: float) -> Verdict:
        nums = numbers_in(answer)
        if not nums:
            return Verdict(0, answer)
        got = nums[0] if cued else nums[-1]
        ok = math.isclose(got, truth, rel_tol=self.rel_tol, abs_tol=self.abs_tol)
        return Verdict(int(ok), f"{got:g}")

    def _choice(self, answer: str, truth: str, choices: list[str]) -> Verdict:
        letter = _LETTER_RE.match(truth)
        if letter:  # the truth is an option letter: the answer must name that letter alone
            m = _LETTER_RE.match(answer.strip()) or re.match(r"^\(?([A-Ha-h])\)?[.):\s]", answer.strip())
            got = m.group(1).upper() if m else ""
            return Verdict(int(got == letter.group(1).upper()), got or answer)
        norm = normalize(answer)
        named = [c for c in choices if _contains_words(norm, normalize(c))]
        # "Alpha" inside "Alpha Centauri": keep only the longest of overlapping option names
        named = [c for c in named if not any(c != o and normalize(c) in normalize(o) for o in named)]
        if len(named) == 1:
            return Verdict(int(normalize(named[0]) == normalize(truth)), named[0])
        return Verdict(0, answer)

    def _text(self, answer: str, truth: str) -> Verdict:
        a, t = normalize(answer), normalize(truth)
        return Verdict(int(a == t or _contains_words(a, t)), answer)


__all__ = ["RulesJudge", "extract_answer", "normalize", "numbers_in", "parse_number"]
