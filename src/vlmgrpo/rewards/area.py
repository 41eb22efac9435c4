"""Rewards of the shape-area task (seed D); summed, they range from -3 to 4.

- `correctness_reward` (`area_correctness`): (1 - min(1, |pred - gt| / max(gt, 32))) x 6 - 3, in
  [-3, 3]. `pred` is the number of the `<answer>X.XX</answer>` block (digits, a dot, exactly
  two decimals, optional surrounding whitespace); no such block (missing tags, `12.3`, `-5.00`,
  `1e3`, words) scores -3, and so do blocks with different values (a hedge: the seed took the
  first, so a policy could list guesses). The floor of 32 on the normaliser keeps small shapes (the wide-range
  extension draws areas down to ~12) from turning every small error into the minimum.
- `area_format_reward` (`area_format`): 0.5 when such a two-decimal answer block is present.
- `xml_format_reward` (`xml_format`): 0.5 when a `<reasoning>...</reasoning>` block is followed
  (only whitespace between) by an `<answer>...</answer>` block.

Both format rewards take `partial: true` (off by default, i.e. the seed's all-or-nothing 0.5),
which gives graded credit below 0.5 for partly right output, for policies that never produce the
whole format by chance (the tiny CPU recipe). With it, the all-or-nothing value is still logged as
the sub-score `strict` (`reward/<label>/strict/mean`), so runs stay comparable with the seed.

Hostile input: only the first `MAX_CHARS` characters of a completion are read (a policy's
completion is far shorter; the bound keeps every pattern's time linear and small), and the XML
check finds its tags with `str.find` (a regex with two lazy `.*?` is quadratic on many open tags).
"""

from __future__ import annotations

import functools
import math
import re

from vlmgrpo.rewards.base import RewardContext, RewardRecord

# the seed's patterns
ANSWER_RE = re.compile(r"<answer>\s*(\d+\.\d{2})\s*</answer>")
MAX_CHARS = 20_000  # characters of a completion that are read
MIN_SCORE, MAX_SCORE = -3.0, 3.0
FORMAT_SCORE = 0.5


def parse_area(text: str) -> float | None:
    """The predicted area: the `<answer>` block holding digits '.' two digits, else None (also
    when several such blocks give different values)."""
    values = {float(v) for v in ANSWER_RE.findall(text[:MAX_CHARS])}
    return values.pop() if len(values) == 1 else None


def has_xml_format(text: str) -> bool:
    """The seed's `re.search(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", text, re.DOTALL)`
    in linear time (the regex backtracks quadratically on many `</reasoning>`): a `<reasoning>`, a
    later `</reasoning>` followed (whitespace only) by `<answer>`, and a `</answer>` after that."""
    text = text[:MAX_CHARS]
    start = text.find("<reasoning>")
    if start < 0:
        return False
    i = start + len("<reasoning>")
    while (end := text.find("</reasoning>", i)) >= 0:
        j = end + len("</reasoning>")
        rest = text[j:].lstrip()
        if rest.startswith("<answer>"):
            k = len(text) - len(rest) + len("<answer>")
            return text.find("</answer>", k) >= 0
        i = j
    return False


def correctness(pred: float | None, gt: float, floor: float = 32.0) -> float:
    """(1 - min(1, |pred - gt| / max(gt, floor))) x 6 - 3; -3 for a missing prediction."""
    if pred is None or not math.isfinite(pred):
        return MIN_SCORE
    rel = min(1.0, abs(pred - gt) / max(gt, floor))
    return (1.0 - rel) * (MAX_SCORE - MIN_SCORE) + MIN_SCORE


def correctness_reward(rec: RewardRecord, ctx: RewardContext, floor: float = 32.0) -> dict[str, float]:
    """Score in [-3, 3] plus sub-scores `answered` (0/1) and, when answered, `abs_error`, `rel_error`."""
    gt = float(rec.sample["answer"])
    pred = parse_area(rec.completion)
    out = {"score": correctness(pred, gt, floor), "answered": float(pred is not None)}
    if pred is not None:
        out["abs_error"] = abs(pred - gt)
        out["rel_error"] = abs(pred - gt) / max(gt, 1e-9)
    return out


# The two formats as ordered pieces, for graded (partial) credit: a literal earns its characters
# one by one (`<answ` is 5 of 8), a "re:" piece is all or nothing with the weight given; matched in
# order, they make up exactly the all-or-nothing pattern above.
AREA_PIECES: tuple[tuple[str, float], ...] = (
    ("<answer>", 8),
    (r"re:\s*\d+", 4),
    (r"re:\.\d{2}", 4),
    (r"re:\s*", 0),
    ("</answer>", 9),
)
XML_PIECES: tuple[tuple[str, float], ...] = (
    ("<reasoning>", 11),
    ("re:.*?", 0),
    ("</reasoning>", 12),
    (r"re:\s*", 0),
    ("<answer>", 8),
    ("re:.*?", 0),
    ("</answer>", 9),
)


@functools.lru_cache(maxsize=256)
def _prefix_regex(pieces: tuple[tuple[str, float], ...], n_full: int, n_chars: int) -> re.Pattern:
    """The first `n_full` pieces, then `n_chars` characters of the next (a literal) piece."""
    parts = [p[3:] if p.startswith("re:") else re.escape(p) for p, _ in pieces[:n_full]]
    if n_chars:
        parts.append(re.escape(pieces[n_full][0][:n_chars]))
    return re.compile("".join(parts), re.DOTALL)


def format_progress(text: str, pieces: tuple[tuple[str, float], ...]) -> float:
    """Weighted fraction (0..1) of `pieces` that `text` contains in order: 1 = the whole format."""
    total = sum(w for _, w in pieces)
    done = 0.0
    # a literal followed by ".*?": a match from a later occurrence of the literal is also one from
    # the first, so only the first is tried (searching from every start is quadratic)
    anchored = len(pieces) > 1 and pieces[1][0] == "re:.*?" and not pieces[0][0].startswith("re:")
    first = text.find(pieces[0][0]) if anchored else -1

    def found(rx: re.Pattern) -> bool:
        return bool(rx.match(text, first) if first >= 0 else rx.search(text))

    for i, (piece, weight) in enumerate(pieces):
        if found(_prefix_regex(pieces, i + 1, 0)):
            done += weight
            continue
        if not piece.startswith("re:"):  # credit for the longest prefix of this literal
            for k in range(len(piece) - 1, 0, -1):
                if found(_prefix_regex(pieces, i, k)):
                    done += weight * k / len(piece)
                    break
        break
    return done / total


def area_format_score(text: str, partial: bool = False) -> float:
    """0.5 for a two-decimal answer block; with `partial`, 0.5 x the fraction of that format that
    is present in order (`<answer>12.3` earns 0.5 x 16/25)."""
    text = text[:MAX_CHARS]
    if ANSWER_RE.search(text):
        return FORMAT_SCORE
    return FORMAT_SCORE * format_progress(text, AREA_PIECES) if partial else 0.0


def xml_format_score(text: str, partial: bool = False) -> float:
    """0.5 for `<reasoning>...</reasoning>` then `<answer>...</answer>`; with `partial`, 0.5 x the
    fraction of that structure present in order (`<reasoning>x</reason` earns 0.5 x 19/40)."""
    if has_xml_format(text):
        return FORMAT_SCORE
    return FORMAT_SCORE * format_progress(text[:MAX_CHARS], XML_PIECES) if partial else 0.0


def area_format_reward(
    rec: RewardRecord, ctx: RewardContext, partial: bool = False
) -> float | dict[str, float]:
    """0.5 if `<answer>\\s*\\d+\\.\\d{2}\\s*</answer>` occurs (graded below 0.5 with `partial`)."""
    if not partial:
        return area_format_score(rec.completion)
    return {"score": area_format_score(rec.completion, True), "strict": area_format_score(rec.completion)}


def xml_format_reward(
    rec: RewardRecord, ctx: RewardContext, partial: bool = False
) -> float | dict[str, float]:
    """0.5 if a reasoning block is followed by an answer block (graded below 0.5 with `partial`)."""
    if not partial:
        return xml_format_score(rec.completion)
    return {"score": xml_format_score(rec.completion, True), "strict": xml_format_score(rec.completion)}


# Per-call bound (seconds) when the trainer runs these rewards (`rewards[].timeout_s`): each call
# runs in a deadline worker (`vlmgrpo.rewards.deadline`).
correctness_reward.timeout_s = area_format_reward.timeout_s = xml_format_reward.timeout_s = 5.0  # type: ignore[attr-defined]
