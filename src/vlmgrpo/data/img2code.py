"""Image-to-matplotlib-code data (seed E): figures with the code that draws them.

Format: JSONL rows with `id`, `description`, `reference_code` and either `image_path` (relative
to the JSONL file's folder, or absolute) or `image_base64` (PNG bytes, for remote training).
Loading (`build`, registry name `img2code`) accepts both, and also any folder of chart images
without code (`reference_code` and `description` are then empty: the reward needs only the image).

`data.kwargs`: `path` = a JSONL file (used for every split), or a folder holding `<x>_train.jsonl`
/ `<x>_eval.jsonl` / `<x>_test.jsonl` (or `train.jsonl`, ...; the trainer's "test" split falls
back to "eval" and back), or a single JSONL, or only images; `<split>_path` overrides per split;
`max_side` thumbnails what the policy sees (the reward compares with the full-size
`reference_image`); `limit` keeps the first N rows.

CLI (`vlmgrpo data img2code`): `--create-sample` draws varied figures (line, bar, scatter, pie,
histogram, shapes, area, heatmap, two panels) from generated reference code, rendered through
the same sandbox that runs the policy's code, so references and outputs match pixel for pixel
conventions; it writes `dataset.jsonl`, `images/` and the train/eval/test split. `--family short`
draws two-line bar charts instead (`from pylab import *` + one `bar` call, ~35 tokens: colour,
number of bars and heights vary), short enough for a tiny model (`vlmgrpo demo --task img2code`). `--to-base64`
writes the `image_base64` variant; `--split` splits any JSONL.
"""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlmgrpo.data import IMAGE_EXTS
from vlmgrpo.data.images import load_image, thumbnail
from vlmgrpo.errors import DataError

SPLITS = ("train", "eval", "test")
COLORS = ("tab:blue", "tab:orange", "crimson", "seagreen", "purple", "gold", "steelblue", "teal", "slategray")
WORDS = ("North", "South", "East", "West", "Alpha", "Beta", "Gamma", "Delta", "Q1", "Q2", "Q3", "Q4")
HEAD = "import matplotlib.pyplot as plt\nimport numpy as np\n\n"


# ---------------------------------------------------------------------------- sample figures
def _pick(rng: np.random.Generator, seq: Sequence[str], k: int = 1) -> list[str]:
    return [str(x) for x in rng.choice(list(seq), size=k, replace=False)]


def _line(rng: np.random.Generator) -> tuple[str, str]:
    k = int(rng.integers(1, 4))
    colors, freqs, amps = _pick(rng, COLORS, k), rng.integers(1, 5, size=k), (1.0, 0.6, 1.5)
    lines = "".join(
        f'ax.plot(x, {amps[i]} * np.{fn}({f} * x), color="{c}", linestyle="{ls}", linewidth=2, label="{fn} {f}x")\n'
        for i, (c, f, fn, ls) in enumerate(zip(colors, freqs, ("sin", "cos", "sin"), ("-", "--", ":")))
    )
    title = f"Signal {_pick(rng, WORDS)[0]}"
    grid = "ax.grid(True, alpha=0.3)\n" if rng.random() < 0.5 else ""
    code = (
        f"{HEAD}x = np.linspace(0, {int(rng.integers(4, 11))}, 200)\nfig, ax = plt.subplots(figsize=(5, 4))\n"
        f'{lines}ax.set_title("{title}")\nax.set_xlabel("x")\nax.set_ylabel("y")\n{grid}ax.legend()\n'
    )
    return f"A line plot titled '{title}' with {k} periodic curve(s) in {', '.join(colors)}.", code


def _bar(rng: np.random.Generator) -> tuple[str, str]:
    n = int(rng.integers(3, 7))
    labels, values = _pick(rng, WORDS, n), [int(v) for v in rng.integers(2, 30, size=n)]
    color, horizontal = _pick(rng, COLORS)[0], bool(rng.random() < 0.3)
    call = "barh" if horizontal else "bar"
    code = (
        f"{HEAD}labels = {labels}\nvalues = {values}\nfig, ax = plt.subplots(figsize=(5, 4))\n"
        f'ax.{call}(labels, values, color="{color}", edgecolor="black")\nax.set_title("Counts")\n'
    )
    kind = "horizontal" if horizontal else "vertical"
    return f"A {kind} bar chart of {n} categories in {color}, titled 'Counts'.", code


def _scatter(rng: np.random.Generator) -> tuple[str, str]:
    n = int(rng.integers(12, 30))
    xs, ys = np.round(rng.uniform(0, 10, n), 1).tolist(), np.round(rng.uniform(0, 10, n), 1).tolist()
    color, size = _pick(rng, COLORS)[0], int(rng.choice([20, 50, 90]))
    code = (
        f"{HEAD}x = {xs}\ny = {ys}\nfig, ax = plt.subplots(figsize=(5, 5))\n"
        f'ax.scatter(x, y, s={size}, c="{color}", alpha=0.8)\nax.set_xlim(0, 10)\nax.set_ylim(0, 10)\n'
        'ax.set_title("Scatter")\n'
    )
    return f"A scatter plot of {n} {color} points on a 10 by 10 square.", code


def _pie(rng: np.random.Generator) -> tuple[str, str]:
    n = int(rng.integers(3, 6))
    labels, sizes, colors = (
        _pick(rng, WORDS, n),
        [int(v) for v in rng.integers(5, 40, n)],
        _pick(rng, COLORS, n),
    )
    code = (
        f"{HEAD}sizes = {sizes}\nlabels = {labels}\ncolors = {colors}\nfig, ax = plt.subplots(figsize=(5, 5))\n"
        'ax.pie(sizes, labels=labels, colors=colors, autopct="%1.0f%%", startangle=90)\nax.axis("equal")\n'
    )
    return f"A pie chart with {n} slices labelled {', '.join(labels)}.", code


def _hist(rng: np.random.Generator) -> tuple[str, str]:
    seed, bins, color = int(rng.integers(0, 1000)), int(rng.choice([10, 20, 30])), _pick(rng, COLORS)[0]
    mu, sd = round(float(rng.uniform(-2, 2)), 1), round(float(rng.uniform(0.5, 2)), 1)
    code = (
        f"{HEAD}data = np.random.default_rng({seed}).normal({mu}, {sd}, 500)\n"
        f'fig, ax = plt.subplots(figsize=(5, 4))\nax.hist(data, bins={bins}, color="{color}", edgecolor="white")\n'
        'ax.set_title("Distribution")\n'
    )
    return f"A histogram of 500 normal samples (mean {mu}, sd {sd}) in {bins} {color} bins.", code


def _shapes(rng: np.random.Generator) -> tuple[str, str]:
    n = int(rng.integers(2, 5))
    lines, names = [], []
    for c in _pick(rng, COLORS, n):
        x, y, r = (round(float(v), 1) for v in (rng.uniform(2, 8), rng.uniform(2, 8), rng.uniform(0.6, 1.8)))
        if rng.random() < 0.5:
            lines.append(f'ax.add_patch(plt.Circle(({x}, {y}), {r}, color="{c}"))')
            names.append(f"a {c} circle")
        else:
            lines.append(f'ax.add_patch(plt.Rectangle(({x - r}, {y - r}), {2 * r}, {r}, color="{c}"))')
            names.append(f"a {c} rectangle")
    code = (
        f"{HEAD}fig, ax = plt.subplots(figsize=(5, 5))\n" + "\n".join(lines) + "\n"
        'ax.set_xlim(0, 10)\nax.set_ylim(0, 10)\nax.set_aspect("equal")\nax.axis("off")\n'
    )
    return f"Flat shapes on a white canvas: {', '.join(names)}.", code


def _area(rng: np.random.Generator) -> tuple[str, str]:
    c1, c2 = _pick(rng, COLORS, 2)
    a, b = round(float(rng.uniform(0.5, 2)), 1), round(float(rng.uniform(0.2, 1)), 1)
    code = (
        f"{HEAD}x = np.linspace(0, 10, 100)\ny1 = {a} * np.sqrt(x)\ny2 = y1 + {b} * (1 + np.sin(x))\n"
        f'fig, ax = plt.subplots(figsize=(6, 4))\nax.fill_between(x, 0, y1, color="{c1}", alpha=0.7)\n'
        f'ax.fill_between(x, y1, y2, color="{c2}", alpha=0.7)\nax.set_title("Stacked area")\n'
    )
    return f"A stacked area chart with a {c1} lower band and a {c2} upper band.", code


def _heatmap(rng: np.random.Generator) -> tuple[str, str]:
    n, cmap = int(rng.integers(4, 9)), str(rng.choice(["viridis", "magma", "coolwarm", "Blues"]))
    values = np.round(rng.uniform(0, 1, (n, n)), 2).tolist()
    code = (
        f"{HEAD}values = np.array({values})\nfig, ax = plt.subplots(figsize=(5, 4))\n"
        f'im = ax.imshow(values, cmap="{cmap}")\nfig.colorbar(im, ax=ax)\nax.set_title("Heatmap")\n'
    )
    return f"A {n}x{n} heatmap in the {cmap} colour map with a colour bar.", code


def _panels(rng: np.random.Generator) -> tuple[str, str]:
    c1, c2 = _pick(rng, COLORS, 2)
    values = [int(v) for v in rng.integers(1, 10, 4)]
    code = (
        f"{HEAD}fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.5))\nx = np.arange(10)\n"
        f'ax1.plot(x, x ** 2, color="{c1}", marker="o")\nax1.set_title("Growth")\n'
        f'ax2.bar(["A", "B", "C", "D"], {values}, color="{c2}")\nax2.set_title("Share")\nfig.tight_layout()\n'
    )
    return f"Two panels: a {c1} quadratic line with markers and a {c2} bar chart of four groups.", code


KINDS: dict[str, Callable[[np.random.Generator], tuple[str, str]]] = {
    "line": _line,
    "bar": _bar,
    "scatter": _scatter,
    "pie": _pie,
    "histogram": _hist,
    "shapes": _shapes,
    "area": _area,
    "heatmap": _heatmap,
    "panels": _panels,
}


# The short family (`--family short`): one bar chart in a two-line program of ~30 tokens, whose
# colour, number of bars and heights must be read from the image. Why: a tiny model writes and
# runs that much code after a short warm start, and every parameter it misreads costs similarity
# (the `img2code` demo, docs/learning.md). Single-letter colours, far apart in RGB.
SHORT_COLORS = ("r", "g", "b", "k", "m", "c")
SHORT_HEAD = "from pylab import *\n"


def _short_bars(rng: np.random.Generator) -> tuple[str, str]:
    n, color = int(rng.integers(2, 5)), _pick(rng, SHORT_COLORS)[0]
    values = [int(v) for v in rng.integers(1, 10, size=n)]
    code = f'{SHORT_HEAD}bar(range({n}),{values},color="{color}")'.replace(", ", ",")
    return f"A bar chart of {n} bars in colour '{color}' with heights {values}.", code


def colour_blind(code: str, rng: np.random.Generator) -> str:
    """A short-family program with its colour replaced by one drawn uniformly from SHORT_COLORS,
    independently of the figure (right 1 time in 6): the `colour_blind_code` field, a warm-start
    target that teaches the code and the bars but not the colour, which GRPO must then learn from
    the reward (the img2code demo)."""
    head, _, _ = code.rpartition('color="')
    return f'{head}color="{_pick(rng, SHORT_COLORS)[0]}")'


FAMILIES: dict[str, dict[str, Callable[[np.random.Generator], tuple[str, str]]]] = {
    "varied": KINDS,
    "short": {"short_bars": _short_bars},
}


def sample_programs(n: int, seed: int = 0, family: str = "varied") -> list[dict[str, str]]:
    """`n` rows (id, kind, description, reference_code) of a family (`FAMILIES`: "varied" = the
    nine figure kinds, "short" = two-line bar charts), kinds in rotation, parameters from `seed`."""
    if family not in FAMILIES:
        raise DataError(f"--family: unknown family '{family}' (known: {', '.join(FAMILIES)})")
    rng = np.random.default_rng(seed)
    blind = np.random.default_rng([seed, 1])  # its own stream: the figures do not depend on it
    table = FAMILIES[family]
    kinds = list(table)
    rows = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        description, code = table[kind](rng)
        row = {"id": f"sample_{i:04d}", "kind": kind, "description": description, "reference_code": code}
        if family == "short":
            row["colour_blind_code"] = colour_blind(code, blind)
        rows.append(row)
    return rows


def create_sample(
    out_dir: str | Path,
    n: int = 36,
    seed: int = 0,
    ratios: Sequence[float] | None = (0.8, 0.1, 0.1),
    family: str = "varied",
    **sandbox: Any,
) -> Path:
    """Render `n` sample figures of `family` (`FAMILIES`) through the sandbox (`sandbox` =
    SandboxConfig fields) into `out_dir`: images/, dataset.jsonl and, unless `ratios` is None, its
    train/eval/test split. Returns the JSONL path."""
    from vlmgrpo.sandbox import Sandbox

    rows = sample_programs(n, seed, family)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    results = Sandbox(**sandbox).run_many([r["reference_code"] for r in rows])
    bad = [(r["id"], res.status, res.error[-300:]) for r, res in zip(rows, results) if not res.ok]
    if bad:
        raise DataError(f"{len(bad)} sample program(s) failed in the sandbox, e.g. {bad[0]}")
    for row, res in zip(rows, results):
        res.image.save(out / "images" / f"{row['id']}.png")
        row["image_path"] = f"images/{row['id']}.png"
    path = out / "dataset.jsonl"
    write_jsonl(path, rows)
    if ratios is not None:
        split_jsonl(path, ratios, seed)
    return path


# ---------------------------------------------------------------------------- JSONL tools
def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a bad line raises a one-line DataError naming file and line."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: JSONL file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not ("image_path" in row or "image_base64" in row):
            raise DataError(f"{p}:{n}: a row needs 'image_path' or 'image_base64'")
        row.setdefault("id", f"{p.stem}-{n}")
        rows.append(row)
    return rows


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def to_base64(path: str | Path, out: str | Path | None = None) -> Path:
    """Write the `image_base64` variant of a JSONL (default `<stem>_base64.jsonl` beside it)."""
    src = Path(path)
    rows = []
    for row in read_jsonl(src):
        row = dict(row)
        if "image_path" in row:
            img = _resolve(src.parent, row.pop("image_path"))
            if not img.is_file():
                raise DataError(f"{src}: row {row['id']}: image {img} not found")
            row["image_base64"] = base64.b64encode(img.read_bytes()).decode("ascii")
        rows.append(row)
    dst = Path(out) if out else src.with_name(f"{src.stem}_base64.jsonl")
    write_jsonl(dst, rows)
    return dst


def split_jsonl(
    path: str | Path, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, Path]:
    """Shuffle and write `<stem>_train/_eval/_test.jsonl` beside `path` (relative image paths stay
    valid); eval and test get at least one row each when there are three or more."""
    src = Path(path)
    rows = read_jsonl(src)
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise DataError(f"--ratios: need three non-negative numbers, got {list(ratios)}")
    order = np.random.default_rng(seed).permutation(len(rows))
    total = sum(ratios)
    n_eval, n_test = (int(round(len(rows) * r / total)) for r in ratios[1:])
    if len(rows) >= 3:
        n_eval, n_test = max(n_eval, int(ratios[1] > 0)), max(n_test, int(ratios[2] > 0))
    n_train = max(0, len(rows) - n_eval - n_test)
    bounds = {
        "train": (0, n_train),
        "eval": (n_train, n_train + n_eval),
        "test": (n_train + n_eval, len(rows)),
    }
    out = {}
    for name, (a, b) in bounds.items():
        out[name] = src.with_name(f"{src.stem}_{name}.jsonl")
        write_jsonl(out[name], [rows[i] for i in order[a:b]])
    return out


# ---------------------------------------------------------------------------- loading
def _resolve(base: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else base / q


def _split_file(folder: Path, split: str) -> Path | None:
    names = [split, *{"test": ["eval"], "eval": ["test"]}.get(split, [])]
    for name in names:
        found = sorted(folder.glob(f"{name}.jsonl")) + sorted(folder.glob(f"*_{name}.jsonl"))
        if found:
            return found[0]
    return None


class Img2CodeDataset(Sequence):
    """Map-style dataset; images decode on access. Sample: id, description, reference_code,
    images ([RGB image, thumbnailed to max_side]), reference_image (full size), image_path."""

    def __init__(self, rows: list[dict[str, Any]], base: Path, max_side: int = 0) -> None:
        self.rows, self.base, self.max_side = rows, base, max_side

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        row = self.rows[i]
        sample = {k: v for k, v in row.items() if k not in ("image_base64", "image_path")}
        sample.setdefault("description", "")
        sample.setdefault("reference_code", "")
        sample["id"] = str(row["id"])
        if "image_base64" in row:
            try:
                data = base64.b64decode(row["image_base64"], validate=True)
            except ValueError:
                raise DataError(
                    f"{self.base}: sample {row['id']}: image_base64 is not valid base64"
                ) from None
            full, sample["image_path"] = load_image(data, name=f"sample {row['id']} (base64)"), ""
        else:
            path = _resolve(self.base, str(row["image_path"]))
            full, sample["image_path"] = load_image(path), str(path)
        sample["reference_image"] = full
        sample["images"] = [thumbnail(full, self.max_side)]
        return sample


def load_rows(kwargs: dict[str, Any], split: str) -> tuple[list[dict[str, Any]], Path]:
    """(rows, folder that relative image paths start from) for one split; see the module doc."""
    given = kwargs.get(f"{split}_path") or kwargs.get("path")
    if not given:
        raise DataError(
            "data.kwargs.path: give a JSONL file or a folder (vlmgrpo data img2code --create-sample)"
        )
    path = Path(str(given))
    if path.is_file():
        return read_jsonl(path), path.parent
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder (data.kwargs.path)")
    found = _split_file(path, split)
    if found is not None:
        return read_jsonl(found), path
    split_names = tuple(f"{s}.jsonl" for s in SPLITS) + tuple(f"_{s}.jsonl" for s in SPLITS)
    plain = sorted(p for p in path.glob("*.jsonl") if not p.name.endswith(split_names))
    if len(plain) > 1:
        raise DataError(
            f"{path}: several JSONL files ({', '.join(p.name for p in plain)}); name one in data.kwargs.path"
        )
    if plain:
        return read_jsonl(plain[0]), path
    images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise DataError(f"{path}: no JSONL and no images ({', '.join(sorted(IMAGE_EXTS))}) in this folder")
    return [{"id": p.stem, "image_path": p.name} for p in images], path


def build(kwargs: dict[str, Any], split: str, seed: int) -> Img2CodeDataset:
    """The `img2code` dataset registry entry: kwargs path, <split>_path, max_side, limit."""
    rows, base = load_rows(kwargs, split)
    if kwargs.get("limit"):
        rows = rows[: int(kwargs["limit"])]
    if not rows:
        raise DataError(f"{kwargs.get(f'{split}_path') or kwargs.get('path')}: the {split} split is empty")
    return Img2CodeDataset(rows, base, int(kwargs.get("max_side", 0)))


def reference_image(sample: dict[str, Any]) -> Any:
    """The full-size reference of a sample (falls back to the image the policy saw)."""
    ref = sample.get("reference_image")
    return ref if ref is not None else (sample.get("images") or [None])[0]


# ---------------------------------------------------------------------------- CLI
def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--create-sample", action="store_true", help="render sample figures with their code")
    mode.add_argument("--to-base64", metavar="JSONL", help="write the image_base64 variant of a JSONL")
    mode.add_argument("--split", metavar="JSONL", help="write <stem>_train/_eval/_test.jsonl beside a JSONL")
    p.add_argument(  # --output as every other builder takes it
        "--out",
        "--output",
        dest="out",
        help="--create-sample: folder (default data/img2code); --to-base64: file",
    )
    p.add_argument("--n", type=int, default=36, help="--create-sample: number of figures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--family",
        default="varied",
        choices=list(FAMILIES),
        help="--create-sample: 'varied' (nine figure kinds) or 'short' (two-line bar charts)",
    )
    p.add_argument(
        "--ratios", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "EVAL", "TEST")
    )
    p.add_argument("--timeout", type=float, default=30.0, help="sandbox seconds per program")


def run_cli(args: argparse.Namespace) -> int:
    if args.create_sample:
        out = Path(args.out or "data/img2code")
        if (out / "dataset.jsonl").exists():  # a set a run trained or evaluated on: never replaced
            raise DataError(f"{out}: already holds a set (dataset.jsonl); choose another --out")
        path = create_sample(out, args.n, args.seed, args.ratios, args.family, timeout_s=args.timeout)
        print(f"wrote {args.n} figures: {path} (+ images/, {path.stem}_train/_eval/_test.jsonl)")
    elif args.to_base64:
        print(f"wrote {to_base64(args.to_base64, args.out)}")
    else:
        paths = split_jsonl(args.split, args.ratios, args.seed)
        sizes = {k: len(read_jsonl(v)) for k, v in paths.items()}
        print("wrote " + ", ".join(f"{v} ({sizes[k]} rows)" for k, v in paths.items()))
    return 0
