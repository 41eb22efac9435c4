"""An offline chart-reasoning benchmark: synthetic charts with questions whose answers are exact.

Each chart (bar, line, scatter, pie) is drawn with matplotlib from known data, so every question has
one right answer that follows from the data: which series is highest at a given x, how many times two
lines cross, the difference between two labelled bars, how many points lie above a dashed line, the
combined share of two pie slices, ... Data are drawn with margins (values differ by >= 3 where a
question compares them, no point near a threshold) so the answer is readable from the image.

Entries follow the CharXiv `test_set.json` schema that `vlmgrpo data charxiv` writes (figure_id,
image_path, descriptive_questions [{question, answer}], reasoning_question {question, answer,
inst_category 1-4}) plus `choices` (candidate answers for text questions), `chart_type`, the chart's
data (`spec`) and `source: "vlmgrpo-charts"`; the `rules` judge grades them offline. `read_test_set`
also accepts the short keys `descriptive` / `reasoning` (+ top-level `inst_category`). Use it as the `charts` dataset (`build(kwargs, split, seed)`; kwargs: n, width,
height, max_side, path = an existing test_set.json) or write a copy with
`vlmgrpo data charts --output OUT --n N`. `read_test_set` reads any CharXiv-style test_set.json.

Non-goals: realism (fonts, clutter, multi-panel figures) and text-free image questions.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlmgrpo.data.images import load_image
from vlmgrpo.errors import DataError

SOURCE = "vlmgrpo-charts"
TYPES = ("bar", "line", "scatter", "pie")
SPLIT_CODE = {"train": 0, "test": 1, "val": 2, "validation": 2}
TOPICS = [
    ("Fruit sold per stall", "Fruit", ["Apples", "Pears", "Plums", "Cherries", "Grapes", "Lemons", "Figs"]),
    ("Visitors per city", "City", ["Oslo", "Lima", "Cairo", "Perth", "Quito", "Delhi", "Rome"]),
    ("Papers per team", "Team", ["Alpha", "Bravo", "Cedar", "Delta", "Ember", "Frost", "Garnet"]),
    ("Rainfall per region", "Region", ["North", "South", "East", "West", "Central", "Coast"]),
    ("Energy mix", "Source", ["Solar", "Wind", "Hydro", "Coal", "Gas", "Nuclear"]),
]
SERIES = ["Alpha", "Bravo", "Cedar", "Delta", "Ember", "Frost"]
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
Question = tuple[str, str, int, list[str]]  # (question, answer, inst_category, choices)


def _distinct_ints(rng: np.random.Generator, k: int, lo: int, hi: int, gap: int) -> list[int]:
    """k integers in [lo, hi] pairwise at least `gap` apart (rejection sampling)."""
    for _ in range(1000):
        vals = sorted(rng.choice(np.arange(lo, hi + 1), size=k, replace=False).tolist())
        if all(b - a >= gap for a, b in zip(vals, vals[1:])):
            rng.shuffle(vals)
            return [int(v) for v in vals]
    raise RuntimeError("could not draw distinct values")  # unreachable for the ranges used here


def crossings(a: Sequence[float], b: Sequence[float]) -> int:
    """Times two piecewise-linear series cross: sign changes of a - b (no ties at the samples)."""
    d = np.sign(np.asarray(a, float) - np.asarray(b, float))
    return int((d[1:] != d[:-1]).sum())


# --------------------------------------------------------------------------- chart specs + questions


def _bar(rng: np.random.Generator) -> tuple[dict, list[Question]]:
    title, xlabel, pool = TOPICS[int(rng.integers(len(TOPICS)))]
    k = int(rng.integers(4, 7))
    cats = [str(c) for c in rng.choice(pool, size=k, replace=False)]
    vals = _distinct_ints(rng, k, 5, 95, 3)
    spec = {
        "type": "bar",
        "title": title,
        "xlabel": xlabel,
        "ylabel": "Count",
        "labels": cats,
        "values": vals,
    }
    order = np.argsort(vals)
    a, b = (cats[i] for i in rng.choice(k, size=2, replace=False))
    va, vb = vals[cats.index(a)], vals[cats.index(b)]
    hi, lo = (a, b) if va > vb else (b, a)
    t = int(rng.integers(20, 80))
    while t in vals:
        t += 1
    qs: list[Question] = [
        ("Which category has the highest value?", cats[order[-1]], 1, cats),
        ("Which category has the lowest value?", cats[order[0]], 1, cats),
        (f"What is the value of {a}?", str(va), 3, []),
        (f"By how much does the value of {hi} exceed the value of {lo}?", str(abs(va - vb)), 4, []),
        (f"How many categories have a value greater than {t}?", str(sum(v > t for v in vals)), 4, []),
        (
            f"Is the bar for {a} taller than the bar for {b}? Answer yes or no.",
            "yes" if va > vb else "no",
            2,
            ["yes", "no"],
        ),
    ]
    return spec, qs


def _line(rng: np.random.Generator) -> tuple[dict, list[Question]]:
    m, n = int(rng.integers(2, 4)), int(rng.integers(6, 10))
    names = [str(s) for s in rng.choice(SERIES, size=m, replace=False)]
    x0 = int(rng.integers(2000, 2016))
    x = [x0 + i for i in range(n)]
    for _ in range(1000):
        ys = np.clip(rng.integers(20, 80, size=(m, 1)) + rng.integers(-15, 16, size=(m, n)).cumsum(1), 2, 98)
        cols = np.sort(ys, axis=0)
        maxes = np.sort(ys, axis=1)
        if (
            (np.diff(cols, axis=0) >= 3).all()
            and (maxes[:, -1] - maxes[:, -2] >= 3).all()
            and all(abs(int(r[-1]) - int(r[0])) >= 5 for r in ys)
        ):
            break
    else:
        raise RuntimeError("could not draw readable line data")
    ys = ys.astype(int)
    spec = {
        "type": "line",
        "title": "Scores over time",
        "xlabel": "Year",
        "ylabel": "Score",
        "x": x,
        "series": {nm: ys[i].tolist() for i, nm in enumerate(names)},
    }
    j = int(rng.integers(n))
    i0, i1 = (int(v) for v in rng.choice(m, size=2, replace=False))
    s = int(rng.integers(m))
    qs: list[Question] = [
        (f"Which series has the highest value in {x[j]}?", names[int(ys[:, j].argmax())], 1, names),
        (f"Which series has the lowest value in {x[j]}?", names[int(ys[:, j].argmin())], 1, names),
        (
            f"How many times do the {names[i0]} and {names[i1]} lines cross each other?",
            str(crossings(ys[i0], ys[i1])),
            4,
            [],
        ),
        (f"In which year does {names[s]} reach its maximum value?", str(x[int(ys[s].argmax())]), 3, []),
        (
            f"Does {names[s]} increase or decrease overall from {x[0]} to {x[-1]}?",
            "increase" if ys[s, -1] > ys[s, 0] else "decrease",
            2,
            ["increase", "decrease"],
        ),
    ]
    return spec, qs


def _scatter(rng: np.random.Generator) -> tuple[dict, list[Question]]:
    groups = [str(s) for s in rng.choice(SERIES, size=2, replace=False)]
    counts = [int(c) for c in rng.choice(np.arange(5, 13), size=2, replace=False)]
    t = float(rng.integers(30, 71))
    for _ in range(1000):
        pts = [rng.uniform(3, 97, size=(c, 2)).round(1) for c in counts]
        allp = np.concatenate(pts)
        top_x = sorted(p[:, 0].max() for p in pts)
        if (np.abs(allp[:, 1] - t) >= 3).all() and top_x[1] - top_x[0] >= 3:
            break
    else:
        raise RuntimeError("could not draw readable scatter data")
    spec = {
        "type": "scatter",
        "title": "Measurements by group",
        "xlabel": "x",
        "ylabel": "y",
        "threshold": t,
        "groups": {g: p.tolist() for g, p in zip(groups, pts)},
    }
    above = [int((p[:, 1] > t).sum()) for p in pts]
    g = int(rng.integers(2))
    qs: list[Question] = [
        ("How many points lie above the dashed horizontal line?", str(sum(above)), 4, []),
        (f"How many {groups[g]} points lie above the dashed horizontal line?", str(above[g]), 4, []),
        ("Which group has more points?", groups[int(np.argmax(counts))], 1, groups),
        (
            "Which group contains the point with the largest x value?",
            groups[int(np.argmax([p[:, 0].max() for p in pts]))],
            1,
            groups,
        ),
        ("At what y value is the dashed horizontal line drawn?", f"{t:g}", 3, []),
        (
            f"Are there more {groups[g]} points than {groups[1 - g]} points? Answer yes or no.",
            "yes" if counts[g] > counts[1 - g] else "no",
            2,
            ["yes", "no"],
        ),
    ]
    return spec, qs


def _pie(rng: np.random.Generator) -> tuple[dict, list[Question]]:
    title, _, pool = TOPICS[int(rng.integers(len(TOPICS)))]
    k = int(rng.integers(3, 7))
    for _ in range(1000):
        cuts = np.sort(rng.choice(np.arange(1, 100), size=k - 1, replace=False))
        pct = np.diff(np.concatenate([[0], cuts, [100]])).astype(int)
        if pct.min() >= 5 and (np.diff(np.sort(pct)) >= 2).all():
            break
    else:
        raise RuntimeError("could not draw readable pie data")
    labels = [str(c) for c in rng.choice(pool, size=k, replace=False)]
    spec = {"type": "pie", "title": title, "labels": labels, "values": pct.tolist()}
    a, b = (int(i) for i in rng.choice(k, size=2, replace=False))
    t = int(rng.integers(10, 40))
    while t in pct:
        t += 1
    qs: list[Question] = [
        ("Which slice is the largest?", labels[int(pct.argmax())], 1, labels),
        ("Which slice is the smallest?", labels[int(pct.argmin())], 1, labels),
        (f"What percentage does {labels[a]} account for?", str(int(pct[a])), 3, []),
        (
            f"What is the combined percentage of {labels[a]} and {labels[b]}?",
            str(int(pct[a] + pct[b])),
            4,
            [],
        ),
        (f"How many slices account for more than {t}%?", str(int((pct > t).sum())), 4, []),
        (
            f"Is the {labels[a]} slice larger than the {labels[b]} slice? Answer yes or no.",
            "yes" if pct[a] > pct[b] else "no",
            2,
            ["yes", "no"],
        ),
    ]
    return spec, qs


MAKERS = {"bar": _bar, "line": _line, "scatter": _scatter, "pie": _pie}


def describe(spec: dict[str, Any]) -> str:
    """A ground-truth description of the chart (usable as a warm-start or cycle target)."""
    kind = spec["type"]
    if kind in ("bar", "pie"):
        parts = ", ".join(
            f"{lab} {v}{'%' if kind == 'pie' else ''}" for lab, v in zip(spec["labels"], spec["values"])
        )
        return f"A {kind} chart titled '{spec['title']}' with {parts}."
    if kind == "line":
        names = ", ".join(spec["series"])
        return f"A line chart titled '{spec['title']}' of {names} from {spec['x'][0]} to {spec['x'][-1]}."
    groups = ", ".join(f"{len(p)} {g} points" for g, p in spec["groups"].items())
    return f"A scatter plot titled '{spec['title']}' with {groups} and a dashed line at y = {spec['threshold']:g}."


def descriptive(spec: dict[str, Any]) -> list[dict[str, str]]:
    """CharXiv-style descriptive questions with their answers."""
    n = {
        "bar": len(spec.get("labels", [])),
        "pie": len(spec.get("labels", [])),
        "line": len(spec.get("series", {})),
        "scatter": len(spec.get("groups", {})),
    }[spec["type"]]
    what = {"bar": "bars", "pie": "slices", "line": "lines", "scatter": "groups of points"}[spec["type"]]
    out = [
        {"question": "What is the title of the chart?", "answer": spec["title"]},
        {"question": f"How many {what} are shown?", "answer": str(n)},
    ]
    if "xlabel" in spec:
        out.append({"question": "What is the label of the x-axis?", "answer": spec["xlabel"]})
    return out


def make_entry(i: int, split: str, seed: int) -> dict[str, Any]:
    """Chart `i` of a split: its spec and one reasoning question. Chart types cycle, and so do the
    four question categories across cycles, so any prefix of the set is balanced."""
    rng = np.random.default_rng([seed, SPLIT_CODE.get(split, 3), i])
    kind = TYPES[i % len(TYPES)]
    spec, qs = MAKERS[kind](rng)
    want = (i // len(TYPES) + i) % 4 + 1
    pick = [x for x in qs if x[2] == want] or qs
    q, a, cat, choices = pick[int(rng.integers(len(pick)))]
    return {
        "figure_id": f"charts-{split}-{i:05d}",
        "chart_type": kind,
        "spec": spec,
        "descriptive_questions": descriptive(spec),
        "reasoning_question": {"question": q, "answer": a, "inst_category": cat},
        "inst_category": cat,
        "choices": choices,
        "description": describe(spec),
        "source": SOURCE,
    }


# --------------------------------------------------------------------------- drawing


def render(spec: dict[str, Any], width: int = 480, height: int = 360):
    """The chart as an RGB PIL image of `width` x `height` pixels (matplotlib Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    kind = spec["type"]
    if kind == "bar":
        bars = ax.bar(spec["labels"], spec["values"], color=COLORS[: len(spec["labels"])])
        ax.bar_label(bars, fontsize=8)
        ax.set_ylim(0, 105)
        ax.tick_params(axis="x", labelsize=8)
    elif kind == "line":
        for c, (name, ys) in zip(COLORS, spec["series"].items()):
            ax.plot(spec["x"], ys, marker="o", ms=3, color=c, label=name)
        ax.set_xticks(spec["x"])
        ax.tick_params(axis="x", labelsize=7, rotation=45)
        ax.grid(alpha=0.4)
        ax.legend(fontsize=7)
    elif kind == "scatter":
        for c, (name, pts) in zip(COLORS, spec["groups"].items()):
            p = np.asarray(pts)
            ax.scatter(p[:, 0], p[:, 1], s=14, color=c, label=name)
        ax.axhline(spec["threshold"], ls="--", color="black", lw=1, label=f"y = {spec['threshold']:g}")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7)
    elif kind == "pie":
        ax.pie(
            spec["values"],
            labels=spec["labels"],
            colors=COLORS[: len(spec["labels"])],
            autopct=lambda p: f"{p:.0f}%",
            textprops={"fontsize": 8},
            startangle=90,
            counterclock=False,
        )
        ax.set_aspect("equal")
    else:
        raise DataError(f"unknown chart type {kind!r}")
    ax.set_title(spec["title"], fontsize=10)
    if kind != "pie":
        ax.set_xlabel(spec.get("xlabel", ""), fontsize=8)
        ax.set_ylabel(spec.get("ylabel", ""), fontsize=8)
    with warnings.catch_warnings():  # tiny sizes cannot fit every label: draw anyway
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())


# --------------------------------------------------------------------------- datasets


def _reasoning(entry: dict[str, Any]) -> Any:
    return entry.get("reasoning_question", entry.get("reasoning"))


def to_sample(entry: dict[str, Any], images: list[Any]) -> dict[str, Any]:
    """A dataset sample (what prompts and rewards see) from a test_set entry."""
    reasoning = _reasoning(entry) or {}
    return {
        "id": str(entry["figure_id"]),
        "figure_id": str(entry["figure_id"]),
        "images": images,
        "question": str(reasoning.get("question", reasoning.get("query", ""))),
        "answer": str(reasoning.get("answer", "")),
        "inst_category": int(entry.get("inst_category") or reasoning.get("inst_category") or 1),
        "choices": list(entry.get("choices") or []),
        "descriptive": entry.get("descriptive_questions", entry.get("descriptive", [])),
        "description": entry.get("description", ""),
        "source": entry.get("source", ""),
    }


class ChartsDataset(Sequence):
    """Synthetic charts, drawn on first access and kept."""

    def __init__(self, entries: list[dict[str, Any]], width: int, height: int, max_side: int = 0) -> None:
        self.entries, self.width, self.height, self.max_side = entries, width, height, max_side
        self._images: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if i not in self._images:
            img = render(self.entries[i]["spec"], self.width, self.height)
            self._images[i] = load_image(img, self.max_side)
        return to_sample(self.entries[i], [self._images[i]])


class TestSetDataset(Sequence):
    """A CharXiv-style test_set.json: images load on access."""

    def __init__(self, entries: list[dict[str, Any]], paths: list[Path], max_side: int = 0) -> None:
        self.entries, self.paths, self.max_side = entries, paths, max_side

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        return to_sample(self.entries[i], [load_image(self.paths[i], self.max_side)])


def _resolve_image(path: Path, image_path: str) -> Path:
    """image_path relative to the JSON's folder, its parent (seed A: test_data/ + test_images/), or cwd."""
    p = Path(image_path)
    for cand in (p, path.parent / p, path.parent.parent / p, Path.cwd() / p):
        if cand.is_file():
            return cand
    return path.parent / p  # load_image names it in its error


def read_test_set(path: str | Path, max_side: int = 0) -> TestSetDataset:
    """Read a CharXiv-style test_set.json (seed A's, or one written by `vlmgrpo data charts`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: test set file not found") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable JSON test set ({e})") from None
    entries = list(data.values()) if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: expected a non-empty list of test entries")
    for j, e in enumerate(entries):
        if not isinstance(e, dict) or "image_path" not in e or not isinstance(_reasoning(e), dict):
            raise DataError(
                f"{path}: entry {j} lacks image_path or a reasoning_question {{question, answer}}"
            )
        e.setdefault("figure_id", Path(str(e["image_path"])).stem)
    return TestSetDataset(entries, [_resolve_image(path, str(e["image_path"])) for e in entries], max_side)


def build(kwargs: dict[str, Any], split: str, seed: int) -> Sequence[dict[str, Any]]:
    """The `charts` dataset: kwargs n (default 50), width/height (px), max_side, or path (a test_set.json)."""
    if kwargs.get("path"):
        return read_test_set(kwargs["path"], int(kwargs.get("max_side", 0)))
    n = int(kwargs.get("n", 50))
    entries = [make_entry(i, split, seed) for i in range(n)]
    return ChartsDataset(
        entries, int(kwargs.get("width", 480)), int(kwargs.get("height", 360)), int(kwargs.get("max_side", 0))
    )


def write_test_set(
    out: str | Path, n: int, split: str = "test", seed: int = 0, width: int = 480, height: int = 360
) -> Path:
    """Write `out/test_set.json` and `out/images/<figure_id>.png`; returns the JSON path. Refuses a
    folder that holds a test set already (nothing written is overwritten)."""
    out = Path(out)
    if (out / "test_set.json").exists():
        raise DataError(f"{out}: already holds a test set (test_set.json); choose another --output")
    (out / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        e = make_entry(i, split, seed)
        render(e["spec"], width, height).save(out / "images" / f"{e['figure_id']}.png")
        e["image_path"] = f"images/{e['figure_id']}.png"
        entries.append(e)
    path = out / "test_set.json"
    path.write_text(json.dumps(entries, indent=1))
    return path


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="folder for test_set.json and images/")
    p.add_argument("--n", type=int, default=50, help="number of charts (one reasoning question each)")
    p.add_argument("--split", default="test", help="train | test (disjoint draws)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=480)
    p.add_argument("--height", type=int, default=360)


def run_cli(args: argparse.Namespace) -> int:
    path = write_test_set(args.output, args.n, args.split, args.seed, args.width, args.height)
    cats: dict[int, int] = {}
    for e in json.loads(path.read_text()):
        cats[e["inst_category"]] = cats.get(e["inst_category"], 0) + 1
    print(f"wrote {args.n} charts to {path} (questions per inst_category: {dict(sorted(cats.items()))})")
    print(f"evaluate with: vlmgrpo eval --output-dir RUN --data {path} --judge rules")
    return 0
