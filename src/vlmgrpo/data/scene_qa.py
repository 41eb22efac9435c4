"""Questions about synthetic scenes, graded by rules: the cycle demo's transfer benchmark.

Why: seed A's claim is that learning to describe images transfers to answering questions about
them. The demo's policy describes one-object scenes (`data/scenes.py`); this module asks it about
the same held-out scenes ("What colour is the shape?", "What shape is it?", "Where is the
shape?") and grades each answer by rules against the scene generator's ground truth, so the
check needs no judge model and is exact.

- `questions(sample)`: the three questions of a scenes sample, each a dict {"id", "question",
  "answer", "attribute", "images"}; a scene with more than one object gives none (which object a
  question means is a non-goal here).
- `grade(response, attribute, answer)`: 1 when the response names exactly one value of the asked
  attribute and it is the true one, else 0. Naming several values (a hedge: "red or blue") is
  wrong; so is naming none. A description answers all three: "a large red circle at the top left"
  names one colour, one shape and one position.
- Chance (one value drawn uniformly): colour 1/6, shape 1/3, position 1/9 (`CHANCE`).

Positions match longest first ("top left" before "top" and "left"), so "top left" is one value.
"""

from __future__ import annotations

import re
from typing import Any

from vlmgrpo.data.scenes import COLORS, POSITIONS, SHAPES

ATTRIBUTES = ("colour", "shape", "position")
QUESTIONS = {
    "colour": "What colour is the shape?",
    "shape": "What shape is it: a circle, a square or a triangle?",
    "position": "Where is the shape?",
}
CHANCE = {"colour": 1 / len(COLORS), "shape": 1 / len(SHAPES), "position": 1 / len(POSITIONS)}
_SYNONYMS = {"centre": "center", "middle": "center"}


def _values(attribute: str) -> list[str]:
    if attribute == "colour":
        return list(COLORS)
    if attribute == "shape":
        return list(SHAPES)
    if attribute == "position":
        return sorted(POSITIONS.values(), key=len, reverse=True)  # longest first
    raise ValueError(f"unknown attribute {attribute!r}; choose from {', '.join(ATTRIBUTES)}")


def mentioned(response: str, attribute: str) -> list[str]:
    """The distinct values of `attribute` named in `response`, in order of first mention.

    Shapes also match their plural ("circles"); positions match longest first, each stretch of
    text counted once, and "centre" / "middle" read as "center"."""
    text = " " + re.sub(r"[^a-z]+", " ", response.lower()) + " "
    for word, canon in _SYNONYMS.items():
        text = text.replace(f" {word} ", f" {canon} ")
    found: list[tuple[int, str]] = []
    for value in _values(attribute):
        pattern = rf" {value}s? " if attribute == "shape" else f" {value} "
        while (m := re.search(pattern, text)) is not None:
            found.append((m.start(), value))
            # blank the match (keeping its spaces) so a shorter position inside it is not re-read
            text = text[: m.start()] + " " + "#" * (m.end() - m.start() - 2) + " " + text[m.end() :]
    out: list[str] = []
    for _, v in sorted(found):
        if v not in out:
            out.append(v)
    return out


def grade(response: str, attribute: str, answer: str) -> tuple[int, str | None]:
    """(1 if the response names exactly the true value of `attribute` and no other, else 0; the
    value it named, or None when it named none or several)."""
    named = mentioned(response, attribute)
    extracted = named[0] if len(named) == 1 else None
    return int(extracted == answer), extracted


def questions(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """The colour, shape and position questions of a one-object scenes sample (none otherwise)."""
    objects = sample["scene"]["objects"]
    if len(objects) != 1:
        return []
    o = objects[0]
    truth = {"colour": o["color"], "shape": o["shape"], "position": POSITIONS[(o["row"], o["col"])]}
    return [
        {
            "id": f"{sample.get('id', 'scene')}-{a}",
            "question": QUESTIONS[a],
            "answer": truth[a],
            "attribute": a,
            "images": list(sample.get("images") or []),
        }
        for a in ATTRIBUTES
    ]
