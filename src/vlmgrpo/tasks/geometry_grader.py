"""Grading geometry answers: is a predicted answer equal to the reference answer?

`grade(pred, answer, choices)` is a pure function (no model, no I/O). It runs a cascade; the first
rule that decides wins:

1. Choice letters. With `choices`, a reference given as a letter ("B") stands for its choice value,
   and a prediction given as a letter ("B", "(B)", "B. 12") is compared by letter. A value that
   matches several choices (a rounded "6.95" against "6.9" and "7.0") counts as the nearest one.
2. Normalised strings equal (LaTeX spacing, `\\left`/`\\right`, `\\dfrac`, `$`, degree signs,
   units such as ft / cm / square units, "x = " in front, thousands separators).
3. Numbers: both sides evaluated through sympy (radicals, `\\frac`, pi multiples, mixed numbers),
   equal within `rel_tol` (default 1e-4, as the seed); or a decimal with at least two significant
   digits matches any value that rounds to it ("6.9" for 4 sqrt 3 = 6.928..., "3.14" for pi),
   because Geometry3K's choices are rounded decimals. One significant digit is not enough ("0.3"
   is not 1/3), and an integer never gets this rounding ("7" is not 6.9).
4. Symbolic: math-verify's `verify` (sympy) for anything that is not a plain number (expressions
   with variables, sets). Two numbers that failed rule 3 are not retried here: math-verify's own
   rounding would be a second, different tolerance.

Several claimed values ("4\\sqrt{3} \\approx 6.93", "x = 3 = 3.0") must all match: a prediction
cannot hedge between two answers. LaTeX is parsed by math-verify (latex2sympy2), never by a
home-made parser. Inputs that could make sympy hang (huge exponents or factorials, very long
strings) are compared as strings only. math-verify's timeouts use SIGALRM, which only works in
the main thread; elsewhere the guards above are the protection.

Answer extraction (`extract_answer`) takes the first closed `<answer>...</answer>` block (a
`\\boxed{}` inside it wins), with lenient fallbacks: an unclosed `<answer>`, the last `\\boxed{}`,
then a trailing "the answer is ...".
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

__all__ = ["extract_answer", "grade", "normalize", "last_boxed", "to_number"]

MAX_LEN = 300  # longer strings are compared as strings only (sympy time is super-linear)
_UNSAFE = re.compile(r"\^\s*\{?\s*[-+]?\d{3,}|\^\s*\{[^{}]*\^|\d{3,}\s*!|\\binom")


class _QuietTimeoutNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # math-verify warns on every untimed call
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader", "math_verify"):
    logging.getLogger(_name).addFilter(_QuietTimeoutNotice())

# ------------------------------------------------------------------------------------- extraction

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_OPEN_ANSWER = re.compile(r"<answer>(.*)$", re.S | re.I)
_ANSWER_IS = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*(.+)$", re.I | re.M)


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (nested braces kept), or None."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1].strip() if depth == 0 else None


def extract_answer(text: str, lenient: bool = True) -> str | None:
    """The answer a completion gives, or None. See the module docstring for the order."""
    m = _ANSWER.search(text)
    if m:
        inner = m.group(1).strip()
        return (last_boxed(inner) or inner) or None
    if not lenient:
        return None
    m = _OPEN_ANSWER.search(text)  # cut off by max_new_tokens after the tag opened
    if m and m.group(1).strip():
        inner = m.group(1).strip()
        return last_boxed(inner) or inner.splitlines()[0].strip()
    boxed = last_boxed(text)
    if boxed:
        return boxed
    found = _ANSWER_IS.findall(text)
    if found:
        return found[-1].strip().rstrip(".").strip() or None
    return None


# ---------------------------------------------------------------------------------- normalisation

_UNIT = (
    r"(?:(?:square|sq\.?|cubic|cu\.?)\s*)?"
    r"(?:units?|feet|foot|ft|inch(?:es)?|in|yards?|yd|miles?|mi|centimet(?:er|re)s?|cm|millimet(?:er|re)s?"
    r"|mm|kilomet(?:er|re)s?|km|met(?:er|re)s?|m|degrees?|deg|radians?|rad)\.?"
    r"(?:\s*\^\s*\{?\s*[23]\s*\}?|²|³)?"
)
_TRAILING_UNIT = re.compile(r"(?<=[\d\s}).])\s*" + _UNIT + r"\s*$", re.I)
_NAME = re.compile(  # what may stand left of "=": x, AB, m\angle ABC, \angle 1, \overline{AB}, y_1
    r"\s*(?:m\s*)?(?:\\(?:angle|measuredangle)\s*\d{1,2}"
    r"|(?:\\(?:angle|measuredangle|overline|widehat|overarc|arc|triangle|odot)\s*)?"
    r"\{?\s*[A-Za-z]{1,4}(?:\s*_\s*\{?\d+\}?|\d)?\s*\}?)\s*"
)


def _light(s: str) -> str:
    """Delimiters, wrappers and unicode out; used before letter detection and normalisation."""
    s = s.strip().replace("**", "")
    s = s.replace("\u2212", "-").replace("\u2013", "-").replace("\u03c0", "\\pi ")
    s = s.replace("\u00d7", "\\times ").replace("\u00b7", "\\cdot ")
    s = re.sub(
        r"\u221a\s*(\d+(?:\.\d+)?|\{[^{}]*\}|\([^()]*\))",
        lambda m: "\\sqrt{" + m.group(1).strip("{}()") + "}",
        s,
    )
    s = s.replace("$", "")
    s = re.sub(r"\\[()\[\]]", "", s)
    s = re.sub(r"\\(?:text|textrm|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}", r" \1 ", s)
    return s.strip()


def _split_claims(s: str) -> list[str]:
    """The values a string claims: "x = 4\\sqrt{3} \\approx 6.93" -> ["4\\sqrt{3}", "6.93"]."""
    parts = re.split(r"=|\\approx|\u2248|\\simeq|\\doteq", s)
    if len(parts) > 1 and _NAME.fullmatch(parts[0]):
        parts = parts[1:]  # "x =", "m\\angle ABC =", "AB =": a name, not a value
    return [p for p in (p.strip() for p in parts) if p]


def normalize(s: str) -> str:
    """A canonical string for one value (no "=" splitting; see `_split_claims`)."""
    s = _light(s)
    s = re.sub(r"\\(?:left|right|displaystyle|big|Big)\b", "", s)
    s = re.sub(r"\\[,!;: ]|~", " ", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|\u00b0|\u00ba", " ", s)
    s = s.strip().rstrip(".").strip()
    for _ in range(3):  # "5 square units", "12 ft.", "30 degrees"
        s2 = _TRAILING_UNIT.sub("", s).strip()
        if s2 == s or not s2:
            break
        s = s2
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # 1,000 -> 1000 (a list "3, 5" keeps its space)
    s = re.sub(r"\s+", " ", s).strip()
    # spacing inside LaTeX carries no meaning: "2 \\sqrt { 221 }" == "2\\sqrt{221}"
    s = re.sub(r"\s*([{}()^_+\-*/])\s*", r"\1", s)
    return s


# -------------------------------------------------------------------------------------- numbers

_DECIMAL = re.compile(r"[-+]?(\d*)\.(\d+)")
_PLAIN = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_FRACTION = re.compile(r"([-+]?\d+)/(\d+)")


def _timeout() -> int | None:
    """math-verify's SIGALRM timeouts only work in the main thread."""
    return 5 if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def _parse(s: str) -> tuple[Any, ...]:
    """math-verify's parse of one normalised value (cached: references repeat every step)."""
    if len(s) > MAX_LEN or _UNSAFE.search(s):
        return ()
    from math_verify import parse

    try:
        return tuple(parse(f"${s}$", parsing_timeout=_timeout()))
    except Exception:  # a parser crash on odd input is "not parseable", never a reward failure
        return ()


def to_number(s: str) -> float | None:
    """A normalised value as a real number, or None (symbols, sets, text)."""
    t = s.replace(" ", "")
    if _PLAIN.fullmatch(t):
        return float(t)
    m = _FRACTION.fullmatch(t)
    if m and int(m.group(2)):
        return float(Fraction(int(m.group(1)), int(m.group(2))))
    parsed = _parse(s)
    if not parsed:
        return None
    expr = parsed[0]
    try:
        if getattr(expr, "free_symbols", True) or not hasattr(expr, "evalf"):
            return None
        z = complex(expr.evalf(20))
    except Exception:  # sets, relations, matrices: not a number
        return None
    if abs(z.imag) > 1e-12 or not math.isfinite(z.real):
        return None
    return z.real


def _rounding_digits(s: str) -> int | None:
    """Decimal places of a plain decimal with >= 2 significant digits ("6.9" -> 1), else None."""
    m = _DECIMAL.fullmatch(s.replace(" ", ""))
    if not m:
        return None
    significant = (m.group(1) + m.group(2)).lstrip("0")
    return len(m.group(2)) if len(significant) >= 2 else None


def _numbers_match(p: float, g: float, p_str: str, g_str: str, rel_tol: float) -> bool:
    if math.isclose(p, g, rel_tol=rel_tol, abs_tol=1e-9):
        return True
    places = [k for k in (_rounding_digits(p_str), _rounding_digits(g_str)) if k]
    if not places:
        return False
    half_unit = 0.5 * 10.0 ** -min(places)  # the coarser side sets the rounding
    return abs(p - g) <= half_unit * (1 + 1e-9)


def _value_match(p: str, g: str, rel_tol: float) -> bool:
    """One normalised predicted value against one normalised reference value."""
    if p == g:
        return True
    if not p or not g:
        return False
    pn, gn = to_number(p), to_number(g)
    if pn is not None and gn is not None:
        return _numbers_match(pn, gn, p, g, rel_tol)
    pp, gp = _parse(p), _parse(g)
    if not pp or not gp:
        return False
    from math_verify import verify

    try:
        return bool(verify(list(gp), list(pp), timeout_seconds=_timeout()))
    except Exception:
        return False


def _claims_match(pred: str, gold: str, rel_tol: float) -> bool:
    """Every value the prediction claims matches one of the reference's."""
    preds = [normalize(c) for c in _split_claims(_light(pred))]
    golds = [normalize(c) for c in _split_claims(_light(gold))] or [normalize(gold)]
    if not preds:
        return False
    return all(any(_value_match(p, g, rel_tol) for g in golds) for p in preds)


def _distance(pred: str, choice: str) -> float:
    p = [to_number(normalize(c)) for c in _split_claims(_light(pred))]
    c = to_number(normalize(choice))
    p = [x for x in p if x is not None]
    return abs(p[0] - c) if p and c is not None else math.inf


# --------------------------------------------------------------------------------------- letters

_LETTER = re.compile(r"\(?([A-Z])\)?(?:[.:)]\s*(.*))?", re.S)
_LETTER_WORD = re.compile(r"(?:option|choice)\s+\(?([A-Z])\)?", re.I)


def _letter(s: str, n_choices: int) -> tuple[int, str] | None:
    """(choice index, rest) when `s` names a choice letter ("B", "(B)", "B. 12", "option B")."""
    t = _light(s).strip()
    m = _LETTER.fullmatch(t) or _LETTER_WORD.fullmatch(t)
    if not m:
        return None
    idx = ord(m.group(1).upper()) - ord("A")
    if n_choices and idx >= n_choices:
        return None
    rest = m.group(2) if m.re is _LETTER and m.lastindex == 2 else ""
    return idx, (rest or "").strip()


# ------------------------------------------------------------------------------------------ grade


def grade(pred: str | None, answer: str, choices: Sequence[str] | None = None, rel_tol: float = 1e-4) -> bool:
    """True when `pred` gives the same answer as `answer` (see the module docstring)."""
    if pred is None or not str(pred).strip() or answer is None or not str(answer).strip():
        return False
    pred, answer = str(pred), str(answer)
    choices = [str(c) for c in choices] if choices else None
    n = len(choices) if choices else 0
    gold_letter = _letter(answer, n)
    gold_idx = gold_letter[0] if gold_letter and not gold_letter[1] else None
    gold = choices[gold_idx] if choices and gold_idx is not None else answer
    if choices and gold_idx is None:  # which choice is the reference value?
        hits = [i for i, c in enumerate(choices) if _claims_match(c, answer, 1e-9)]
        gold_idx = hits[0] if len(hits) == 1 else None
    pred_letter = _letter(pred, n)
    if pred_letter is not None:
        idx, rest = pred_letter
        if rest and not _claims_match(rest, gold, rel_tol):
            return False  # "B. 12" where the reference is not 12
        if gold_idx is not None:
            return idx == gold_idx
        if gold_letter is not None and not choices:
            return idx == gold_letter[0]
        return bool(choices) and _claims_match(choices[idx], gold, rel_tol)
    if gold_letter is not None and not choices:
        return False  # a letter reference with no choices cannot be compared with a value
    if not _claims_match(pred, gold, rel_tol):
        return False
    if choices and gold_idx is not None:
        # a loosely matching value may match another choice better: count it as the nearest one
        matching = [i for i, c in enumerate(choices) if _claims_match(pred, c, rel_tol)]
        if len(matching) > 1:
            return min(matching, key=lambda i: _distance(pred, choices[i])) == gold_idx
    return True
