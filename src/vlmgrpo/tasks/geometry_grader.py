"""Grading geometry answers: is a predicted answer equal to the reference answer?

`grade(pred, answer, choices)` is a pure function (no model, no I/O). It runs a cascade; the first
rule that decides wins:

1. Choice letters. With `choices`, a reference given as a letter ("B") stands for its choice value,
   and a prediction given as a letter ("B", "(B)", "B. 12") is compared by letter. A value that
   matches several choices (a rounded "6.95" against "6.9" and "7.0") counts as the nearest one.
2. Normalised strings equal (LaTeX spacing, `\\left`/`\\right`, `\\dfrac`, `$`, degree signs,
   units such as ft / cm / square units, "x = " in front, thousands separators).
3. Numbers: both sides evaluated through sympy (radicals, `\\frac`, pi multiples, mixed numbers,
   scientific notation), equal within `rel_tol` (default 1e-4, as the seed). Rounding is allowed
   only at the precision the reference itself gives: a decimal reference with at least two
   significant digits accepts any value that rounds to it ("6.9" accepts 4 sqrt 3 = 6.928... and
   "6.93"), because Geometry3K's choices are rounded decimals; an exact reference (integer,
   fraction, radical, pi multiple) needs the prediction within `rel_tol` ("3.14" is not pi, "3.46"
   is not 2 sqrt 3), so answering with fewer digits earns nothing. A value after `\\approx` next
   to an exact value ("4\\sqrt{3} \\approx 6.93") must round to it at its own digits.
4. Symbolic: math-verify's `verify` (sympy) for anything that is not a plain number (expressions
   with variables, sets). Two numbers that failed rule 3 are not retried here: math-verify's own
   rounding would be a second, different tolerance.

Several claimed values ("4\\sqrt{3} \\approx 6.93", "x = 3 = 3.0", two `\\boxed{}`) must all
match: a prediction cannot hedge between two answers. Written forms are recognised: a leading
"approximately" / "about" / "~", thousands separators, "1.5e2" and "1.5 \\times 10^{2}",
`\\boxed{}` inside the answer. LaTeX is parsed by math-verify (latex2sympy2), never by a home-made
parser.

Untrusted input is bounded: a prediction over `MAX_PRED` characters earns nothing; a value over
`MAX_LEN` characters, nested deeper than `MAX_DEPTH` braces, or with huge exponents or nested
factorials is compared as a string only; and every sympy evaluation runs under
`vlmgrpo.rewards.deadline` (a worker process killed after `SYMBOLIC_TIMEOUT_S`), so no answer can
hold the caller, in any thread. Every regular expression here is linear in its input.

Answer extraction (`extract_answer`) takes the closed `<answer>...</answer>` block (a `\\boxed{}`
inside it wins; several blocks that differ give no answer), with lenient fallbacks: an unclosed
`<answer>`, the last `\\boxed{}`, then a trailing "the answer is ..." (in the last 2,000 characters).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from vlmgrpo.rewards import deadline

log = logging.getLogger(__name__)

__all__ = ["extract_answer", "grade", "normalize", "last_boxed", "to_number"]

MAX_LEN = 300  # longer values are compared as strings only (sympy time is super-linear)
MAX_PRED = 1000  # a longer prediction is no answer (checked before any parsing)
MAX_DEPTH = 6  # brace nesting beyond this is compared as a string only (nested \\frac)
SYMBOLIC_TIMEOUT_S = 1.0  # one sympy parse / evaluation / comparison, in a worker process
# huge exponents (>= 3 digits, or a power of a power), factorials of >= 3 digits or of factorials
_UNSAFE = re.compile(r"\^\s*\{?\s*[-+]?\d{3,}|\^\s*\{[^{}]*\^|\^[^^]{0,12}\^|\d{3,}\s*!|![\s)}]*!|\\binom")


class _QuietTimeoutNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # math-verify warns on every untimed call
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader", "math_verify"):
    logging.getLogger(_name).addFilter(_QuietTimeoutNotice())

# ------------------------------------------------------------------------------------- extraction

_ANSWER_IS = re.compile(
    r"(?:final answer|the answer|answer)[ \t]{0,8}(?:is|:|=)[ \t]{0,8}:?[ \t]*(.+)$", re.I | re.M
)
TAIL = 2000  # "the answer is ..." is looked for in the completion's last characters only


def _answer_blocks(text: str) -> tuple[list[str], str | None]:
    """(contents of the closed <answer> blocks, the text after an unclosed last one); str.find,
    linear in the text (a regex `<answer>(.*?)</answer>` is quadratic on many unclosed tags)."""
    low, blocks, i = text.lower(), [], 0
    while True:
        start = low.find("<answer>", i)
        if start < 0:
            return blocks, None
        end = low.find("</answer>", start + 8)
        if end < 0:
            return blocks, text[start + 8 :]
        blocks.append(text[start + 8 : end])
        i = end + 9


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
    blocks, unclosed = _answer_blocks(text)
    answers = {b.strip() for b in blocks}
    if len(answers) > 1:
        return None  # two different answers: a hedge, not an answer
    if answers:
        inner = answers.pop()
        return (last_boxed(inner) or inner) or None
    if not lenient:
        return None
    if unclosed and unclosed.strip():  # cut off by max_new_tokens after the tag opened
        inner = unclosed.strip()
        return last_boxed(inner) or inner.splitlines()[0].strip()
    boxed = last_boxed(text)
    if boxed:
        return boxed
    found = _ANSWER_IS.findall(text[-TAIL:])
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
_TRAILING_UNIT = re.compile(r"(?<=[\d}).])\s?" + _UNIT + r"\s?$", re.I)
_NAME = re.compile(  # what may stand left of "=": x, AB, m\angle ABC, \angle 1, \overline{AB}, y_1
    r"\s*(?:m\s*)?(?:\\(?:angle|measuredangle)\s*\d{1,2}"
    r"|(?:\\(?:angle|measuredangle|overline|widehat|overarc|arc|triangle|odot)\s*)?"
    r"\{?\s*[A-Za-z]{1,4}(?:\s*_\s*\{?\d+\}?|\d)?\s*\}?)\s*"
)


def _unbox(s: str) -> str:
    """Every `\\boxed{X}` / `\\fbox{X}` replaced by X (nested braces kept)."""
    for _ in range(8):
        start = max(s.find("\\boxed{"), s.find("\\fbox{"))
        if start < 0:
            break
        i = s.index("{", start) + 1
        depth, j = 1, i
        while j < len(s) and depth:
            depth += {"{": 1, "}": -1}.get(s[j], 0)
            j += 1
        s = s[:start] + " " + s[i : j - 1 if depth == 0 else j] + " " + s[j:]
    return s


_APPROX_WORD = re.compile(r"^(?:approximately|approx\.?|about|around|roughly|nearly|~)\s*", re.I)
_SCI = re.compile(r"(\d+(?:\.\d+)?)\s*(?:\\times|\\cdot|\*|x|×)\s*10\s*\^\s*\{?\s*([-+]?\d{1,3})\s*\}?")


def _light(s: str) -> str:
    """Delimiters, wrappers and unicode out; used before letter detection and normalisation."""
    s = _unbox(s.strip()).strip().replace("**", "")
    s = _APPROX_WORD.sub("", s)
    s = s.replace("\u2212", "-").replace("\u2013", "-").replace("\u03c0", "\\pi ")
    s = s.replace("\u00d7", "\\times ").replace("\u00b7", "\\cdot ")
    s = re.sub(
        r"\u221a\s*(\d+(?:\.\d+)?|\{[^{}]*\}|\([^()]*\))",
        lambda m: "\\sqrt{" + m.group(1).strip("{}()") + "}",
        s,
    )
    s = s.replace("$", "")
    s = re.sub(r"\\[()\[\]]", "", s)
    s = _SCI.sub(r"\1e\2", s)  # 1.5 \times 10^{2} -> 1.5e2
    s = re.sub(r"\\(?:text|textrm|textbf|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}", r" \1 ", s)
    return s.strip()


_CLAIM_SEP = re.compile(r"(=|\\approx|\u2248|\\simeq|\\doteq)")


def _split_claims(s: str) -> list[str]:
    """The values a string claims: "x = 4\\sqrt{3} \\approx 6.93" -> ["4\\sqrt{3}", "6.93"]."""
    return [c for c, _ in _split_claims_marked(s)]


def _split_claims_marked(s: str) -> list[tuple[str, bool]]:
    """(value, approximate) per claim: approximate = it follows an approximation sign."""
    pieces = _CLAIM_SEP.split(s)
    parts = [(pieces[0], False)] + [(pieces[k + 1], pieces[k] != "=") for k in range(1, len(pieces) - 1, 2)]
    if len(parts) > 1 and _NAME.fullmatch(parts[0][0]):
        parts = parts[1:]  # "x =", "m\\angle ABC =", "AB =": a name, not a value
    return [(p.strip(), a) for p, a in parts if p.strip()]


def normalize(s: str) -> str:
    """A canonical string for one value (no "=" splitting; see `_split_claims`)."""
    s = _light(s)
    s = re.sub(r"\\(?:left|right|displaystyle|big|Big)\b", "", s)
    s = re.sub(r"\\[,!;: ]|~", " ", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|\u00b0|\u00ba", " ", s)
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"\s+", " ", s)  # before the unit pattern: a run of spaces made it quadratic
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
_PLAIN = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d{1,3})?", re.I)
_FRACTION = re.compile(r"([-+]?\d+)/(\d+)")


def _timeout() -> int | None:
    """math-verify's SIGALRM timeouts only work in the main thread (the deadline covers the rest)."""
    return 5 if threading.current_thread() is threading.main_thread() else None


def _too_deep(s: str) -> bool:
    depth = top = 0
    for ch in s:
        depth += (ch == "{") - (ch == "}")
        top = max(top, depth)
    return top > MAX_DEPTH


def _parseable(s: str) -> bool:
    return len(s) <= MAX_LEN and not _UNSAFE.search(s) and not _too_deep(s)


def _parse(s: str) -> tuple[Any, ...]:
    """math-verify's parse of one normalised value (in the deadline worker only)."""
    from math_verify import parse

    try:
        return tuple(parse(f"${s}$", parsing_timeout=_timeout()))
    except Exception:  # a parser crash on odd input is "not parseable", never a reward failure
        return ()


def _symbolic_number(s: str) -> float | None:
    """Runs in the deadline worker: the value of a closed-form expression, or None."""
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


def _symbolic_equal(p: str, g: str) -> bool:
    """Runs in the deadline worker: math-verify's verdict on two non-numeric values."""
    pp, gp = _parse(p), _parse(g)
    if not pp or not gp:
        return False
    from math_verify import verify

    try:
        return bool(verify(list(gp), list(pp), timeout_seconds=_timeout()))
    except Exception:
        return False


def _warm() -> None:
    """Deadline workers run this at start: math-verify's import and first parse are slow."""
    _parse("\\frac{1}{2}")
    _symbolic_equal("x+1", "1+x")


deadline.warm_up("vlmgrpo.tasks.geometry_grader:_warm")


_BOUNDED_CACHE: dict[tuple, Any] = {}  # (fn, args) -> result; references repeat every step
_BOUNDED_CACHE_SIZE = 4096
_BOUNDED_LOCK = threading.Lock()


def _bounded(fn: Any, *args: str) -> Any:
    """`fn(*args)` under the deadline; None past it. Results are cached, time-outs are not: a call
    slowed by a loaded machine must not leave a reference (or a common answer) at "no value" for
    the rest of the run."""
    from vlmgrpo.rewards.deadline import DeadlineExceeded, call

    key = (fn, args)
    if key in _BOUNDED_CACHE:
        return _BOUNDED_CACHE[key]
    try:
        out = call(fn, *args, timeout_s=SYMBOLIC_TIMEOUT_S)
    except DeadlineExceeded:
        log.warning("geometry grader: gave up on %r after %g s", args[0][:80], SYMBOLIC_TIMEOUT_S)
        return None
    with _BOUNDED_LOCK:  # the rewards may grade in two threads (rollout.overlap)
        if len(_BOUNDED_CACHE) >= _BOUNDED_CACHE_SIZE:
            _BOUNDED_CACHE.pop(next(iter(_BOUNDED_CACHE)), None)  # the oldest entry
        _BOUNDED_CACHE[key] = out
    return out


def to_number(s: str) -> float | None:
    """A normalised value as a real number, or None (symbols, sets, text)."""
    t = s.replace(" ", "")
    if _PLAIN.fullmatch(t):
        v = float(t)
        return v if math.isfinite(v) else None
    m = _FRACTION.fullmatch(t)
    if m and int(m.group(2)):
        return float(Fraction(int(m.group(1)), int(m.group(2))))
    if not _parseable(s):
        return None
    return _bounded(_symbolic_number, s)


def _rounding_digits(s: str) -> int | None:
    """Decimal places of a plain decimal with >= 2 significant digits ("6.9" -> 1), else None."""
    m = _DECIMAL.fullmatch(s.replace(" ", ""))
    if not m:
        return None
    significant = (m.group(1) + m.group(2)).lstrip("0")
    return len(m.group(2)) if len(significant) >= 2 else None


def _numbers_match(p: float, g: float, places: int | None, rel_tol: float) -> bool:
    """Equal within `rel_tol`, or `p` rounds to `g` at `places` decimals (the precision of the
    side that was given rounded: the reference, or an approximate claim)."""
    if math.isclose(p, g, rel_tol=rel_tol, abs_tol=1e-9):
        return True
    if not places:
        return False
    return abs(p - g) <= 0.5 * 10.0**-places * (1 + 1e-9)


def _value_match(p: str, g: str, rel_tol: float, approximate: bool = False) -> bool:
    """One normalised predicted value against one normalised reference value. Rounding: at the
    reference's decimals, or at the prediction's own when it is an approximate claim."""
    if p == g:
        return True
    if not p or not g:
        return False
    pn, gn = to_number(p), to_number(g)
    if pn is not None and gn is not None:
        places = _rounding_digits(p) if approximate else _rounding_digits(g)
        return _numbers_match(pn, gn, places, rel_tol)
    if pn is not None or gn is not None or not (_parseable(p) and _parseable(g)):
        return False  # a number against a non-number, or input too big to evaluate
    return bool(_bounded(_symbolic_equal, p, g))


def _claims_match(pred: str, gold: str, rel_tol: float) -> bool:
    """Every value the prediction claims matches one of the reference's. An approximate claim
    ("\\approx 6.93") is judged at its own digits only beside an exact claim that matched."""
    preds = [(normalize(c), a) for c, a in _split_claims_marked(_light(pred))]
    golds = [normalize(c) for c in _split_claims(_light(gold))] or [normalize(gold)]
    if not preds:
        return False
    has_exact = any(not a for _, a in preds)
    return all(any(_value_match(p, g, rel_tol, a and has_exact) for g in golds) for p, a in preds)


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
    if len(pred) > MAX_PRED:  # before any parsing: no geometry answer is this long
        return False
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
