"""Synthetic Geometry3K: diagrams of triangles and rectangles with labelled sides and angles, a
question asking a length, an angle or an area, its exact answer and four choices.

Written in the original InterGPS layout, which `vlmgrpo.data.geometry3k` reads with no optional
package (`datasets`, `pyarrow`): `OUT/{train,val,test}/<id>/data.json` + `img_diagram.png`, ids
consecutive over the three splits as in Geometry3K. `data.json` has Geometry3K's fields:
`problem_text` ("Find x.", "Find the area of the figure."), `choices` (four values, ascending, as
Geometry3K's mostly are), `answer` (the choice letter), `precise_value` / `rough_value`,
`problem_type_graph`, `problem_type_goal` and `logic_form.diagram_logic_form` (InterGPS's
"Equals(LengthOf(Line(A, B)), 5)" relations: what the diagram shows, unknown included).

Problem kinds (`KINDS`), each drawn to scale (Geometry3K's diagrams are roughly to scale too):

- `hypotenuse` / `leg`: a right triangle with two sides labelled (a Pythagorean triple times k);
- `rect_diagonal`: a rectangle with width, height and the diagonal x;
- `triangle_angle`: two angles labelled, the third is x (180 - a - b);
- `right_angle`: a right triangle with one acute angle labelled, the other is x (90 - a);
- `rect_area`: a rectangle with two sides labelled, "Find the area of the figure.";
- `triangle_area`: a triangle with its base and dashed altitude labelled (b h / 2, exact halves).

`GIVEN_KINDS` (not in the default mix): the answer follows from givens in the question text, for a
model that cannot read the diagram's digits (`vlmgrpo demo --task geometry`): the perimeter of a
square, the other acute angle of a right triangle, the third angle of a triangle, the area of a
rectangle, each from the values the question states (and the diagram shows).

Answers are exact (integers, or halves written as "7.5"). Non-goals: circles, parallel lines,
similar figures, algebraic side labels ("2x + 3"), the dataset's visual style.

CLI: `vlmgrpo data geometry-synthetic --output DIR [--n 400 --n-eval 50 --seed 0 --kinds ...]`;
train on it with `--set data.kwargs.path=DIR` (recipe `geometry-tiny` does).
`sr1_target(sample)` is the warm start's target text for the Vision-SR1 prompt (see `warmup.py`).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from vlmgrpo.errors import DataError

TRIPLES = ((3, 4, 5), (5, 12, 13), (8, 15, 17), (7, 24, 25), (20, 21, 29), (9, 40, 41))
SPLIT_DIRS = ("train", "val", "test")  # the InterGPS folder names


@dataclass
class Problem:
    """One problem before drawing: points in diagram units (y up), what to draw and label."""

    kind: str
    text: str
    answer: Fraction
    graph: str  # problem_type_graph: "Triangle" | "Rectangle"
    goal: str  # problem_type_goal: "Length" | "Angle" | "Area"
    points: dict[str, tuple[float, float]]
    polygon: list[str]  # outline, in order
    logic: list[str]  # diagram_logic_form
    side_labels: list[tuple[str, str, str]] = field(default_factory=list)  # (P, Q, text) on segment PQ
    angle_labels: list[tuple[str, str]] = field(default_factory=list)  # (vertex, text) inside the corner
    right_angles: list[tuple[str, str, str]] = field(default_factory=list)  # (P, vertex, Q)
    dashed: list[tuple[str, str]] = field(default_factory=list)  # extra dashed segments
    distractors: list[Fraction] = field(default_factory=list)


def fmt(v: Fraction) -> str:
    """Exact decimal text of a value with a terminating decimal ("12", "7.5", "0.25")."""
    if v.denominator == 1:
        return str(v.numerator)
    den = v.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den != 1:
        raise ValueError(f"{v} has no finite decimal expansion")
    digits = 0
    while (v * 10**digits).denominator != 1:
        digits += 1
    return f"{float(v):.{digits}f}"


def _line(p: str, q: str) -> str:
    return f"Line({p}, {q})"


def _length(p: str, q: str, value: str) -> str:
    return f"Equals(LengthOf({_line(p, q)}), {value})"


def _angle(a: str, v: str, b: str, value: str) -> str:
    return f"Equals(MeasureOf(Angle({a}, {v}, {b})), {value})"


def _triple(rng: random.Random, max_side: int) -> tuple[int, int, int]:
    """A Pythagorean triple times k, legs shuffled, hypotenuse <= max_side."""
    options = [(a * k, b * k, c * k) for a, b, c in TRIPLES for k in range(1, 11) if c * k <= max_side]
    a, b, c = rng.choice(options)
    return (a, b, c) if rng.random() < 0.5 else (b, a, c)


# ------------------------------------------------------------------------------- problem kinds


def _right_triangle(rng: random.Random, max_side: int, ask: str) -> Problem:
    """Right angle at C; legs CB (horizontal) = a, CA (vertical) = b; hypotenuse AB = c."""
    a, b, c = _triple(rng, max_side)
    pts = {"C": (0.0, 0.0), "B": (float(a), 0.0), "A": (0.0, float(b))}
    known = {"hypotenuse": [("C", "B", a), ("C", "A", b)], "leg": [("A", "B", c), ("C", "B", a)]}[ask]
    unknown = ("A", "B") if ask == "hypotenuse" else ("C", "A")
    answer = c if ask == "hypotenuse" else b
    other = a
    return Problem(
        kind=ask,
        text="Find x.",
        answer=Fraction(answer),
        graph="Triangle",
        goal="Length",
        points=pts,
        polygon=["A", "B", "C"],
        logic=[_length(p, q, str(v)) for p, q, v in known]
        + [_length(*unknown, "x"), "Perpendicular(Line(A, C), Line(B, C))"],
        side_labels=[(p, q, str(v)) for p, q, v in known] + [(*unknown, "x")],
        right_angles=[("A", "C", "B")],
        distractors=[
            Fraction(v) for v in (answer + other, abs(answer - other) or answer + 2, answer * 2, answer + 1)
        ],
    )


def _rect_points(w: int, h: int) -> dict[str, tuple[float, float]]:
    """Rectangle ABCD, A top left, clockwise."""
    return {"A": (0.0, float(h)), "B": (float(w), float(h)), "C": (float(w), 0.0), "D": (0.0, 0.0)}


def _rect_diagonal(rng: random.Random, max_side: int) -> Problem:
    w, h, c = _triple(rng, max_side)
    return Problem(
        kind="rect_diagonal",
        text="Find x.",
        answer=Fraction(c),
        graph="Rectangle",
        goal="Length",
        points=_rect_points(w, h),
        polygon=["A", "B", "C", "D"],
        logic=[_length("A", "B", str(w)), _length("B", "C", str(h)), _length("A", "C", "x")]
        + ["Perpendicular(Line(A, B), Line(B, C))"],
        side_labels=[("A", "B", str(w)), ("B", "C", str(h)), ("A", "C", "x")],
        right_angles=[("A", "B", "C"), ("B", "C", "D"), ("C", "D", "A"), ("D", "A", "B")],
        dashed=[("A", "C")],
        distractors=[Fraction(v) for v in (w + h, c + 1, 2 * c, abs(w - h) or c + 2)],
    )


def _triangle_from_angles(alpha: float, beta: float) -> dict[str, tuple[float, float]]:
    """A at the origin, B at (1, 0), C above with angle alpha at A and beta at B (degrees)."""
    gamma = math.radians(180 - alpha - beta)
    ac = math.sin(math.radians(beta)) / math.sin(gamma)  # law of sines with AB = 1
    a = math.radians(alpha)
    return {"A": (0.0, 0.0), "B": (1.0, 0.0), "C": (ac * math.cos(a), ac * math.sin(a))}


def _triangle_angle(rng: random.Random, max_side: int) -> Problem:
    while True:
        alpha, beta = rng.randrange(30, 101, 5), rng.randrange(30, 101, 5)
        gamma = 180 - alpha - beta
        if 25 <= gamma <= 110 and alpha != 90 and beta != 90:
            break
    return _triangle_angle_of(alpha, beta)


def _triangle_angle_of(alpha: int, beta: int) -> Problem:
    """Angles alpha at A and beta at B labelled, x at C (180 - alpha - beta)."""
    gamma = 180 - alpha - beta
    return Problem(
        kind="triangle_angle",
        text="Find x.",
        answer=Fraction(gamma),
        graph="Triangle",
        goal="Angle",
        points=_triangle_from_angles(alpha, beta),
        polygon=["A", "B", "C"],
        logic=[
            _angle("C", "A", "B", str(alpha)),
            _angle("A", "B", "C", str(beta)),
            _angle("A", "C", "B", "x"),
        ],
        angle_labels=[("A", f"{alpha}°"), ("B", f"{beta}°"), ("C", "x°")],
        distractors=[
            Fraction(v)
            for v in (180 - alpha, 180 - beta, alpha + beta, 90 - gamma if gamma < 90 else gamma - 90)
        ],
    )


def _right_angle(rng: random.Random, max_side: int) -> Problem:
    return _right_angle_of(rng.randrange(20, 71, 5))


def _right_angle_of(alpha: int) -> Problem:
    """Right angle at C, alpha labelled at A, x at B (90 - alpha)."""
    t = math.tan(math.radians(alpha))
    pts = {"C": (0.0, 0.0), "A": (1.0, 0.0), "B": (0.0, t)}  # angle alpha at A, right angle at C
    return Problem(
        kind="right_angle",
        text="Find x.",
        answer=Fraction(90 - alpha),
        graph="Triangle",
        goal="Angle",
        points=pts,
        polygon=["A", "B", "C"],
        logic=[
            _angle("B", "A", "C", str(alpha)),
            _angle("A", "B", "C", "x"),
            "Perpendicular(Line(A, C), Line(B, C))",
        ],
        angle_labels=[("A", f"{alpha}°"), ("B", "x°")],
        right_angles=[("A", "C", "B")],
        distractors=[Fraction(v) for v in (180 - alpha, 90 + alpha, 180 - 2 * alpha or 45, alpha + 10)],
    )


def _rect_area(rng: random.Random, max_side: int) -> Problem:
    top = max(3, min(max_side, 20))
    return _rect_area_of(rng.randint(2, top), rng.randint(2, top))


def _rect_area_of(w: int, h: int) -> Problem:
    """Rectangle with width w (AB) and height h (BC) labelled; the answer is w h."""
    return Problem(
        kind="rect_area",
        text="Find the area of the figure.",
        answer=Fraction(w * h),
        graph="Rectangle",
        goal="Area",
        points=_rect_points(w, h),
        polygon=["A", "B", "C", "D"],
        logic=[_length("A", "B", str(w)), _length("B", "C", str(h)), "Perpendicular(Line(A, B), Line(B, C))"],
        side_labels=[("A", "B", str(w)), ("B", "C", str(h))],
        right_angles=[("A", "B", "C"), ("B", "C", "D"), ("C", "D", "A"), ("D", "A", "B")],
        distractors=[Fraction(v) for v in (2 * (w + h), w + h, Fraction(w * h, 2), w * h + w)],
    )


def _triangle_area(rng: random.Random, max_side: int) -> Problem:
    top = max(3, min(max_side, 20))
    b, h = rng.randint(2, top), rng.randint(2, top)
    foot = rng.uniform(0.2, 0.8) * b  # D: the foot of the altitude from C, inside AB
    pts = {"A": (0.0, 0.0), "B": (float(b), 0.0), "C": (foot, float(h)), "D": (foot, 0.0)}
    return Problem(
        kind="triangle_area",
        text="Find the area of the triangle.",
        answer=Fraction(b * h, 2),
        graph="Triangle",
        goal="Area",
        points=pts,
        polygon=["A", "B", "C"],
        logic=[
            _length("A", "B", str(b)),
            _length("C", "D", str(h)),
            "PointLiesOnLine(D, Line(A, B))",
            "Perpendicular(Line(C, D), Line(D, B))",
        ],
        side_labels=[("A", "B", str(b)), ("D", "C", str(h))],
        right_angles=[("C", "D", "B")],
        dashed=[("C", "D")],
        distractors=[Fraction(v) for v in (b * h, b + h, Fraction(b * h, 4), b * h + h)],
    )


KINDS: dict[str, Callable[[random.Random, int], Problem]] = {
    "hypotenuse": lambda rng, m: _right_triangle(rng, m, "hypotenuse"),
    "leg": lambda rng, m: _right_triangle(rng, m, "leg"),
    "rect_diagonal": _rect_diagonal,
    "triangle_angle": _triangle_angle,
    "right_angle": _right_angle,
    "rect_area": _rect_area,
    "triangle_area": _triangle_area,
}


# Problems whose answer follows from givens in the question text ("A rectangle has width 3 and
# height 5. Find its area."), drawn as their diagram kind. Why: the tiny model of `geometry-tiny`
# sees a 112 px diagram as at most 16 vision tokens and cannot read its digits, so on the kinds
# above its answers are guesses; here it can learn a few arithmetic patterns from the text, and
# the Vision-SR1 blind pass (scan + question, no image) can succeed. Small value ranges: a few
# dozen distinct questions per kind, a table a 2-layer model can learn (docs/geometry.md).


def _given_square_perimeter(rng: random.Random, max_side: int) -> Problem:
    s = rng.randint(2, 9)
    return Problem(
        kind="given_square_perimeter",
        text=f"A square has side {s}. Find its perimeter.",
        answer=Fraction(4 * s),
        graph="Rectangle",
        goal="Length",
        points=_rect_points(s, s),
        polygon=["A", "B", "C", "D"],
        logic=[_length("A", "B", str(s)), _length("B", "C", str(s)), "Perpendicular(Line(A, B), Line(B, C))"],
        side_labels=[("A", "B", str(s))],
        right_angles=[("A", "B", "C"), ("B", "C", "D"), ("C", "D", "A"), ("D", "A", "B")],
        distractors=[Fraction(v) for v in (s * s, 2 * s, 3 * s, 4 * s + 4)],
    )


def _given_right_angle(rng: random.Random, max_side: int) -> Problem:
    alpha = rng.randrange(20, 71, 5)
    p = _right_angle_of(alpha)
    return replace(
        p,
        kind="given_right_angle",
        text=f"One acute angle of a right triangle is {alpha}. Find x, the other.",
    )


def _given_triangle_angle(rng: random.Random, max_side: int) -> Problem:
    alpha, beta = rng.choice([(a, b) for a in range(30, 81, 10) for b in range(30, 81, 10) if a + b <= 150])
    p = _triangle_angle_of(alpha, beta)
    return replace(
        p,
        kind="given_triangle_angle",
        text=f"Two angles of a triangle are {alpha} and {beta}. Find x, the third.",
    )


def _given_rect_area(rng: random.Random, max_side: int) -> Problem:
    w, h = rng.randint(2, 7), rng.randint(2, 7)
    p = _rect_area_of(w, h)
    return replace(
        p, kind="given_rect_area", text=f"A rectangle has width {w} and height {h}. Find its area."
    )


GIVEN_KINDS: dict[str, Callable[[random.Random, int], Problem]] = {
    "given_square_perimeter": _given_square_perimeter,
    "given_right_angle": _given_right_angle,
    "given_triangle_angle": _given_triangle_angle,
    "given_rect_area": _given_rect_area,
}
ALL_KINDS = {**KINDS, **GIVEN_KINDS}


def make_problem(rng: random.Random, kinds: Sequence[str] = tuple(KINDS), max_side: int = 30) -> Problem:
    return ALL_KINDS[rng.choice(list(kinds))](rng, max_side)


def choices_of(p: Problem) -> list[Fraction]:
    """The answer and three distinct positive distractors (the problem's own, then nearby values),
    ascending."""
    picked = [p.answer]
    for d in [*p.distractors, p.answer + 1, p.answer + 2, p.answer + 3]:
        if d > 0 and d not in picked and len(picked) < 4:
            picked.append(d)
    return sorted(picked)


# ------------------------------------------------------------------------------------ drawing


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled FreeType font
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw(p: Problem, width: int = 320, height: int = 240) -> Any:
    """The diagram as a PIL RGB image: black outline, vertex letters outside the figure, side
    labels at the middle of each labelled segment (outside), angle labels inside their corner,
    right-angle squares, dashed auxiliary segments."""
    from PIL import Image, ImageDraw

    xs = [x for x, _ in p.points.values()]
    ys = [y for _, y in p.points.values()]
    margin = 0.16 * min(width, height)
    dx, dy = max(xs) - min(xs), max(ys) - min(ys)
    scale = min((width - 2 * margin) / max(dx, 1e-9), (height - 2 * margin) / max(dy, 1e-9))
    ox = (width - scale * dx) / 2 - scale * min(xs)
    oy = (height - scale * dy) / 2 + scale * max(ys)
    px = {k: (ox + scale * x, oy - scale * y) for k, (x, y) in p.points.items()}
    cx = sum(px[k][0] for k in p.polygon) / len(p.polygon)
    cy = sum(px[k][1] for k in p.polygon) / len(p.polygon)

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font = _font(max(10, height // 14))
    lw = max(1, width // 160)

    def text_at(x: float, y: float, s: str, fill: str = "black") -> None:
        d.text((x, y), s, fill=fill, font=font, anchor="mm")

    def away(x: float, y: float, dist: float) -> tuple[float, float]:
        """A point `dist` px from (x, y), directly away from the figure's centre."""
        vx, vy = x - cx, y - cy
        n = math.hypot(vx, vy) or 1.0
        return x + dist * vx / n, y + dist * vy / n

    outline = [px[k] for k in p.polygon]
    d.line([*outline, outline[0]], fill="black", width=lw, joint="curve")
    for a, b in p.dashed:
        (x0, y0), (x1, y1) = px[a], px[b]
        n = max(1, int(math.hypot(x1 - x0, y1 - y0) // 6))
        for i in range(0, n, 2):
            t0, t1 = i / n, min(1.0, (i + 1) / n)
            d.line(
                [(x0 + (x1 - x0) * t0, y0 + (y1 - y0) * t0), (x0 + (x1 - x0) * t1, y0 + (y1 - y0) * t1)],
                fill="black",
                width=lw,
            )
    size = 0.05 * min(width, height)
    for a, v, b in p.right_angles:
        (vx, vy), (ax, ay), (bx, by) = px[v], px[a], px[b]
        ua = ((ax - vx) / math.hypot(ax - vx, ay - vy), (ay - vy) / math.hypot(ax - vx, ay - vy))
        ub = ((bx - vx) / math.hypot(bx - vx, by - vy), (by - vy) / math.hypot(bx - vx, by - vy))
        p1 = (vx + size * ua[0], vy + size * ua[1])
        p2 = (vx + size * (ua[0] + ub[0]), vy + size * (ua[1] + ub[1]))
        p3 = (vx + size * ub[0], vy + size * ub[1])
        d.line([p1, p2, p3], fill="black", width=max(1, lw - 1))
    off = 0.07 * min(width, height)
    for name, (x, y) in px.items():
        # a point off the outline (an altitude's foot) sits inside the figure, above-left: below
        # it is the label of the side it lies on
        text_at(*(away(x, y, off) if name in p.polygon else (x - 0.6 * off, y - 0.6 * off)), name)
    for a, b, s in p.side_labels:
        (x0, y0), (x1, y1) = px[a], px[b]
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        nx, ny = -(y1 - y0), x1 - x0  # a normal of the segment, turned away from the centre
        n = math.hypot(nx, ny) or 1.0
        if (mx - cx) * nx + (my - cy) * ny < 0:
            nx, ny = -nx, -ny
        off = 0.06 * min(width, height)
        text_at(mx + off * nx / n, my + off * ny / n, s, fill="blue" if s == "x" else "black")
    for v, s in p.angle_labels:
        x, y = px[v]
        text_at(x + 0.28 * (cx - x), y + 0.28 * (cy - y), s, fill="blue" if s.startswith("x") else "black")
    return img


# ------------------------------------------------------------------------------------ writing


def data_json(p: Problem, pid: int) -> dict[str, Any]:
    """Geometry3K's (InterGPS) data.json for `p`."""
    values = choices_of(p)
    letter = string.ascii_uppercase[values.index(p.answer)]
    return {
        "id": pid,
        "problem_text": p.text,
        "choices": [fmt(v) for v in values],
        "answer": letter,
        "precise_value": [float(v) for v in values],
        "rough_value": [float(v) for v in values],
        "problem_type_graph": [p.graph],
        "problem_type_goal": [p.goal],
        "source": f"vlmgrpo geometry-synthetic ({p.kind})",
        "comment": "",
        "logic_form": {"diagram_logic_form": p.logic},
    }


def write(
    out: Path,
    n: int,
    n_eval: int,
    seed: int = 0,
    kinds: Sequence[str] = tuple(KINDS),
    max_side: int = 30,
    width: int = 320,
    height: int = 240,
) -> dict[str, int]:
    """Write train (n), val and test (n_eval each) under `out`; returns items per split folder.
    Refuses a split folder that already holds items (nothing written is overwritten)."""
    bad = [k for k in kinds if k not in ALL_KINDS]
    if bad:
        raise DataError(
            f"geometry-synthetic: unknown kind(s) {', '.join(bad)} (known: {', '.join(ALL_KINDS)})"
        )
    if n < 1 or n_eval < 0:
        raise DataError(f"geometry-synthetic: --n must be >= 1 and --n-eval >= 0 (got {n}, {n_eval})")
    for split in SPLIT_DIRS:
        folder = out / split
        if folder.is_dir() and any(folder.iterdir()):
            raise DataError(f"{folder}: already holds items; choose another --output")
    counts, pid = {}, 0
    for split, count in zip(SPLIT_DIRS, (n, n_eval, n_eval)):
        for i in range(count):
            rng = random.Random(f"geometry-synthetic:{seed}:{split}:{i}")  # str seeds are stable
            p = make_problem(rng, kinds, max_side)
            folder = out / split / str(pid)
            folder.mkdir(parents=True)
            draw(p, width, height).save(folder / "img_diagram.png")
            (folder / "data.json").write_text(json.dumps(data_json(p, pid), indent=1) + "\n")
            pid += 1
        counts[split] = count
    return counts


# ------------------------------------------------------------------------ warm-start targets

_LENGTH = re.compile(r"Equals\(LengthOf\(Line\((\w+),\s*(\w+)\)\),\s*([^()]+)\)$")
_ANGLE = re.compile(r"Equals\(MeasureOf\(Angle\((\w+),\s*(\w+),\s*(\w+)\)\),\s*([^()]+)\)$")
_PERP = re.compile(r"Perpendicular\(Line\((\w+),\s*(\w+)\),\s*Line\((\w+),\s*(\w+)\)\)$")


def scan_text(logic: Sequence[str]) -> str:
    """A short description of the diagram from InterGPS relations: "AB = 5, angle ABC = 40,
    angle ACB = 90" (a right angle between two lines that share a point); relations of other kinds
    are left out."""
    parts = []
    for form in logic:
        form = form.strip()
        if m := _LENGTH.match(form):
            parts.append(f"{m[1]}{m[2]} = {m[3].strip()}")
        elif m := _ANGLE.match(form):
            parts.append(f"angle {m[1]}{m[2]}{m[3]} = {m[4].strip()}")
        elif m := _PERP.match(form):
            (a, b), (c, d) = (m[1], m[2]), (m[3], m[4])
            shared = {a, b} & {c, d}
            if shared:  # "angle ACB = 90": shorter for a tiny model than "perpendicular"
                v = shared.pop()
                parts.append(f"angle {a if b == v else b}{v}{c if d == v else d} = 90")
            else:
                parts.append(f"{a}{b} perpendicular {c}{d}")
    return ", ".join(parts)


def _asked(question: str) -> str:
    """What the question asks for: "x", "area" or "the answer"."""
    q = question.lower()
    if "area" in q:
        return "area"
    if "perimeter" in q:
        return "perimeter"
    if re.search(r"\bfind x\b", q):
        return "x"
    return "the answer"


def sr1_target(sample: dict[str, Any]) -> str:
    """The Vision-SR1 completion after the "<scan>" prefill, built from a Geometry3K sample:
    "<scan body></scan><think>{asked} = {answer}</think><answer>{answer}</answer>". The scan
    body comes from `diagram_logic_form` (InterGPS layout); without it, from the question."""
    logic = sample.get("diagram_logic_form") or []
    scan = scan_text(logic) or str(sample.get("question", "")).strip()
    ans = str(sample["answer"]).strip()
    return (
        f"{scan}</scan><think>{_asked(str(sample.get('question', '')))} = {ans}</think><answer>{ans}</answer>"
    )


# ---------------------------------------------------------------------------------------- CLI


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output", required=True, help="folder to write (train/ val/ test/<id>/data.json + img_diagram.png)"
    )
    p.add_argument("--n", type=int, default=400, help="training items")
    p.add_argument("--n-eval", type=int, default=50, help="items in each of val/ and test/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated problem kinds (default: the diagram kinds; all: {', '.join(ALL_KINDS)})",
    )
    p.add_argument(
        "--max-side",
        type=int,
        default=30,
        help="largest labelled length (area problems: sides up to min(this, 20))",
    )
    p.add_argument("--width", type=int, default=320, help="image width in pixels")
    p.add_argument("--height", type=int, default=240, help="image height in pixels")


def run_cli(args: argparse.Namespace) -> int:
    out = Path(args.output)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    counts = write(out, args.n, args.n_eval, args.seed, kinds, args.max_side, args.width, args.height)
    print(f"wrote {', '.join(f'{v} {k}' for k, v in counts.items())} items to {out} (InterGPS layout)")
    return 0
