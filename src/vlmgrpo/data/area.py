"""Synthetic shape-area task (seed D, "VLM Area"): one shape on a 50 x 50 grid, answer its area.

Image (as the seed): matplotlib, 2.24 in at 100 dpi = 224 x 224 px, axes 0-50 both ways with equal
aspect, a black grid every 10 units (lw 1, alpha 0.7) drawn over the shape, minor ticks every 5,
x tick labels rotated 90 degrees. One shape, uniformly one of square / rectangle / circle /
triangle; face colour RGB each uniform in [0.1, 0.9]; black edge lw 2. Sizes are uniform in
[min_size, max_size] (seed: [20, 35]):

- square: side s, area s^2;
- rectangle: w x h, h redrawn while |w - h| < min_size / 4 (so it never looks like a square);
- circle: radius uniform in [min_size / 2, max_size / 2], area pi r^2, never rotated;
- triangle: isosceles, base b (horizontal before rotation), height h, area b h / 2.

Position is uniform with the whole shape inside the grid. With `rotate`, the shape turns by an
angle uniform in [-max_rotation, max_rotation] degrees (counter-clockwise positive) about the centre
of its bounding box, and the centre keeps half the box's diagonal from every border, so any angle
stays inside. Dimensions are rounded to 2 decimals before drawing, and the area of the drawn shape,
rounded to 2 decimals, is the answer.

Speed: one `Figure` per dataset object (no pyplot, no global state) is laid out once; each image
restores the cached background (axes, ticks, labels) and draws only the shape, the grid lines and
the spines over it, then reads the Agg buffer into PIL (~1-2 ms per image instead of ~20 ms for a
full redraw). `AreaRenderer.render(shape, full=True)` does the full redraw; a test checks that both
paths give the same pixels. `size` < 224 renders at 224 and downsamples (LANCZOS), so small images
keep the seed's layout.

Splits: "train" streams (`sample(rng)`: a fresh image every call, drawn from the trainer's RNG;
`train_n` > 0 makes it a fixed set instead, which the supervised warm start needs); any other split is a fixed `Sequence` of `n` items drawn from a seed of its own (or read from a
folder written by `vlmgrpo data area`, `kwargs.path`). Non-goals: several shapes per image,
occlusion, shapes other than the four above.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmgrpo.data.images import load_image
from vlmgrpo.errors import ConfigError, DataError

SHAPES = ("square", "rectangle", "circle", "triangle")
GRID_MAX = 50.0  # plot units per axis
BASE_PX = 224  # the seed's image side: 2.24 in at 100 dpi
DPI = 100
COLOR_RANGE = (0.1, 0.9)
EDGE_WIDTH = 2.0  # points
# session settings that a style must not touch (matplotlib.style's own list)
_RC_SKIP = {
    "backend", "backend_fallback", "date.epoch", "docstring.hardcopy", "figure.max_open_warning",
    "figure.raise_window", "interactive", "savefig.directory", "timezone", "tk.window_focus", "toolbar",
    "webagg.address", "webagg.open_in_browser", "webagg.port", "webagg.port_retries",
}  # fmt: skip
# data.kwargs options and their defaults (the seed's README runs)
DEFAULTS: dict[str, Any] = {
    "min_size": 20.0,  # smallest side / base / height; circle radius >= min_size / 2
    "max_size": 35.0,  # largest side / base / height; circle radius <= max_size / 2
    "rotate": False,  # turn shapes by up to +-max_rotation degrees (circles excepted)
    "max_rotation": 45.0,
    "shapes": list(SHAPES),  # which shapes to draw (uniformly among these)
    "size": BASE_PX,  # image side in pixels (rendered at 224, downsampled when smaller)
    "max_side": 0,  # thumbnail to this longest side (the trainer passes data.image_max_side); 0 = off
    "edge_width": EDGE_WIDTH,  # shape outline in points; 0 = no outline
    "n": 100,  # items of a fixed (non-train) split
    "train_n": 0,  # > 0: the train split is a fixed set of this many shapes (sampled with replacement)
    "path": "",  # a folder written by `vlmgrpo data area` (non-train splits)
}


@dataclass(frozen=True)
class Shape:
    """One shape in plot units. `dims`: side | width, height | radius | base, height."""

    kind: str
    dims: dict[str, float]
    center: tuple[float, float]
    rotation: float = 0.0  # degrees, counter-clockwise, about `center`
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def area(self) -> float:
        """Exact area of the drawn geometry (the answer is this rounded to 2 decimals)."""
        d = self.dims
        if self.kind == "square":
            return d["side"] ** 2
        if self.kind == "rectangle":
            return d["width"] * d["height"]
        if self.kind == "circle":
            return math.pi * d["radius"] ** 2
        return d["base"] * d["height"] / 2

    @property
    def perimeter(self) -> float:
        if self.kind == "circle":
            return 2 * math.pi * self.dims["radius"]
        v = self.vertices()
        return float(np.linalg.norm(v - np.roll(v, 1, axis=0), axis=1).sum())

    def half_extent(self) -> tuple[float, float]:
        """Half width and half height of the unrotated bounding box."""
        d = self.dims
        if self.kind == "square":
            return d["side"] / 2, d["side"] / 2
        if self.kind == "rectangle":
            return d["width"] / 2, d["height"] / 2
        if self.kind == "circle":
            return d["radius"], d["radius"]
        return d["base"] / 2, d["height"] / 2

    def vertices(self) -> np.ndarray:
        """[K, 2] polygon corners in plot units, rotated; for a circle, 256 points on it."""
        if self.kind == "circle":
            t = np.linspace(0, 2 * np.pi, 256, endpoint=False)
            r = self.dims["radius"]
            return np.stack([self.center[0] + r * np.cos(t), self.center[1] + r * np.sin(t)], axis=1)
        hw, hh = self.half_extent()
        if self.kind == "triangle":  # apex up, base at the bottom of the bounding box
            local = np.array([[-hw, -hh], [hw, -hh], [0.0, hh]])
        else:
            local = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
        a = math.radians(self.rotation)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        return local @ rot.T + np.asarray(self.center)

    def describe(self) -> str:
        """A short worked solution, e.g. 'A rectangle of 24.10 by 30.00: 24.10 x 30.00 = 723.00.'"""
        d, a = self.dims, f"{round(self.area, 2):.2f}"
        if self.kind == "square":
            return f"A square of side {d['side']:.2f}: {d['side']:.2f} x {d['side']:.2f} = {a}."
        if self.kind == "rectangle":
            w, h = d["width"], d["height"]
            return f"A rectangle of {w:.2f} by {h:.2f}: {w:.2f} x {h:.2f} = {a}."
        if self.kind == "circle":
            return f"A circle of radius {d['radius']:.2f}: pi x {d['radius']:.2f}^2 = {a}."
        b, h = d["base"], d["height"]
        return f"A triangle of base {b:.2f} and height {h:.2f}: {b:.2f} x {h:.2f} / 2 = {a}."


def random_shape(
    rng: np.random.Generator,
    min_size: float = 20.0,
    max_size: float = 35.0,
    rotate: bool = False,
    max_rotation: float = 45.0,
    shapes: Sequence[str] = SHAPES,
) -> Shape:
    """Draw one shape as the module docstring describes (dims rounded to 2 decimals)."""
    kind = str(shapes[int(rng.integers(len(shapes)))])

    def u(lo: float, hi: float) -> float:
        return round(float(rng.uniform(lo, hi)), 2)

    if kind == "square":
        dims = {"side": u(min_size, max_size)}
    elif kind == "rectangle":
        w = u(min_size, max_size)
        h = u(min_size, max_size)
        for _ in range(1000):  # P(retry) <= 1/2 whenever max_size - min_size >= min_size / 4
            if abs(w - h) >= min_size / 4:
                break
            h = u(min_size, max_size)
        dims = {"width": w, "height": h}
    elif kind == "circle":
        dims = {"radius": u(min_size / 2, max_size / 2)}
    else:
        dims = {"base": u(min_size, max_size), "height": u(min_size, max_size)}
    angle = 0.0
    if rotate and kind != "circle":
        angle = round(float(rng.uniform(-max_rotation, max_rotation)), 2)
    hw, hh = Shape(kind, dims, (0.0, 0.0)).half_extent()
    if angle:  # any angle fits inside a circle of the bounding box's half diagonal
        hw = hh = math.hypot(hw, hh)
    center = (u(hw, GRID_MAX - hw), u(hh, GRID_MAX - hh))
    color = tuple(round(float(c), 4) for c in rng.uniform(*COLOR_RANGE, size=3))
    return Shape(kind, dims, center, angle, color)  # type: ignore[arg-type]


class AreaRenderer:
    """Draws shapes on the seed's grid; one figure, laid out once, reused for every image."""

    def __init__(self, size: int = BASE_PX, edge_width: float = EDGE_WIDTH) -> None:
        try:
            import matplotlib
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
            from matplotlib.ticker import MultipleLocator
        except ModuleNotFoundError:
            raise ConfigError("data.dataset 'area' draws with matplotlib: pip install matplotlib") from None

        self.size = int(size)
        self.edge_width = float(edge_width)
        # matplotlib's defaults, not the user's matplotlibrc: the same image on every machine
        self._rc = {k: v for k, v in matplotlib.rcParamsDefault.items() if k not in _RC_SKIP}
        with matplotlib.rc_context(self._rc):
            fig = Figure(figsize=(BASE_PX / DPI, BASE_PX / DPI), dpi=DPI, facecolor="white")
            canvas = FigureCanvasAgg(fig)
            ax = fig.add_subplot()
            ax.set_xlim(0, GRID_MAX)
            ax.set_ylim(0, GRID_MAX)
            ax.set_aspect("equal")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_locator(MultipleLocator(10))
                axis.set_minor_locator(MultipleLocator(5))
            ax.tick_params(axis="x", labelrotation=90)
            # The grid as our own lines (the look of ax.grid) so that they can be redrawn over the
            # shape without redrawing the axis; zorder 1.5 = matplotlib's grid, above patches.
            ticks = np.arange(0, GRID_MAX + 1, 10)
            self.grid = [ax.axvline(float(t), color="black", lw=1, alpha=0.7, zorder=1.5) for t in ticks]
            self.grid += [ax.axhline(float(t), color="black", lw=1, alpha=0.7, zorder=1.5) for t in ticks]
            fig.tight_layout(pad=0.3)
            self.fig, self.canvas, self.ax = fig, canvas, ax
            # the background: everything but the shape, the grid and the spines (drawn per image)
            overlay = [*self.grid, *ax.spines.values()]
            for a in overlay:
                a.set_visible(False)
            canvas.draw()
            self.background = canvas.copy_from_bbox(fig.bbox)
            for a in overlay:
                a.set_visible(True)

    def _patch(self, shape: Shape) -> Any:
        from matplotlib.patches import Circle, Polygon

        style = {
            "facecolor": shape.color,
            "edgecolor": "black" if self.edge_width > 0 else "none",
            "linewidth": self.edge_width,
        }
        if shape.kind == "circle":
            return Circle(shape.center, shape.dims["radius"], **style)
        return Polygon(shape.vertices(), closed=True, **style)

    def render(self, shape: Shape | None, full: bool = False) -> Image.Image:
        """The RGB image of `shape` (None: the empty grid); `full` redraws the whole figure (the
        slow path, for tests)."""
        import matplotlib

        with matplotlib.rc_context(self._rc):
            patch = self.ax.add_patch(self._patch(shape)) if shape is not None else None
            try:
                if full:
                    self.canvas.draw()
                else:
                    self.canvas.restore_region(self.background)
                    for artist in [patch, *self.grid, *self.ax.spines.values()]:
                        if artist is not None:
                            self.ax.draw_artist(artist)  # in zorder: shape, grid over it, frame
                rgba = np.asarray(self.canvas.buffer_rgba())
                img = Image.fromarray(rgba[..., :3].copy())
            finally:
                if patch is not None:
                    patch.remove()
        if self.size != BASE_PX:
            img = img.resize((self.size, self.size), Image.Resampling.LANCZOS)
        return img

    def data_to_pixel(self, x: float, y: float) -> tuple[float, float]:
        """Plot units -> (column, row) in the 224 px image (row 0 at the top)."""
        px, py = self.ax.transData.transform((x, y))
        return float(px), float(BASE_PX - py)


def make_sample(shape: Shape, image: Image.Image, sample_id: str, max_side: int = 0) -> dict[str, Any]:
    """The dataset row: `answer` is the area rounded to 2 decimals (a float)."""
    area = round(shape.area, 2)
    return {
        "id": sample_id,
        "images": [load_image(image, max_side)],
        "answer": area,
        "answer_text": f"{area:.2f}",
        "shape": shape.kind,
        "dims": dict(shape.dims),
        "center": list(shape.center),
        "rotation": shape.rotation,
        "color": list(shape.color),
        # worked targets in the task's format, for an optional supervised warm start
        "solution": f"<reasoning>\n{shape.describe()}\n</reasoning>\n<answer>{area:.2f}</answer>",
        "short_solution": f"<reasoning>{shape.kind}</reasoning>\n<answer>{area:.2f}</answer>",
    }


def _shape_kwargs(opts: dict[str, Any]) -> dict[str, Any]:
    return {k: opts[k] for k in ("min_size", "max_size", "rotate", "max_rotation", "shapes")}


@dataclass
class AreaStream:
    """Streaming training set: `sample(rng)` draws a fresh shape and renders it."""

    opts: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS))
    _renderer: AreaRenderer | None = field(default=None, init=False, repr=False)

    @property
    def renderer(self) -> AreaRenderer:
        if self._renderer is None:  # created on first use: cheap to build, picklable until then
            self._renderer = AreaRenderer(self.opts["size"], self.opts["edge_width"])
        return self._renderer

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        shape = random_shape(rng, **_shape_kwargs(self.opts))
        sample_id = f"area-{int(rng.integers(2**62)):016x}"
        return make_sample(shape, self.renderer.render(shape), sample_id, self.opts["max_side"])


class AreaFixedSet(Sequence):
    """A fixed split of `n` shapes from its own seed; images render on first access and are kept."""

    def __init__(self, opts: dict[str, Any], split: str, seed: int) -> None:
        self.opts = opts
        self.split = split
        # split-specific stream: train (the trainer's RNG) and each fixed split never share a draw
        rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
        self.shapes = [random_shape(rng, **_shape_kwargs(opts)) for _ in range(int(opts["n"]))]
        self._stream = AreaStream(opts)
        self._cache: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        if i not in self._cache:
            shape = self.shapes[i]
            img = self._stream.renderer.render(shape)
            self._cache[i] = make_sample(shape, img, f"area-{self.split}-{i:05d}", self.opts["max_side"])
        return self._cache[i]


class AreaFolderSet(Sequence):
    """A fixed set written by `vlmgrpo data area` (`data.jsonl` + `images/`)."""

    def __init__(self, path: Path, max_side: int = 0) -> None:
        self.max_side = max_side
        meta = path / "data.jsonl"
        if not meta.is_file():
            what = "no data.jsonl here" if path.is_dir() else "no such folder"
            raise DataError(
                f"{path}: {what} (the fixed eval set named by data.eval_kwargs.path, else data.kwargs.path); "
                f"write one with `vlmgrpo data area --output {path}`"
            )
        self.root = path
        self.rows = []
        try:
            text = meta.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{meta}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
        for k, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{meta}:{k}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or "image" not in row:
                raise DataError(f"{meta}:{k}: a row needs an 'image' field")
            self.rows.append(row)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        row = dict(self.rows[i])
        row["images"] = [load_image(self.root / row.pop("image"), self.max_side)]
        return row


def resolve_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`data.kwargs` merged onto DEFAULTS and checked; unknown keys name the closest valid one."""
    for key in kwargs:
        if key not in DEFAULTS:
            close = difflib.get_close_matches(str(key), list(DEFAULTS), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f" (options: {', '.join(DEFAULTS)})"
            raise ConfigError(f"data.kwargs.{key}: unknown option of dataset 'area'{hint}")
    o = {**DEFAULTS, **kwargs}
    o["shapes"] = [o["shapes"]] if isinstance(o["shapes"], str) else list(o["shapes"])
    bad = [s for s in o["shapes"] if s not in SHAPES]
    if bad or not o["shapes"]:
        raise ConfigError(f"data.kwargs.shapes: {bad or 'empty'}; choose from {', '.join(SHAPES)}")
    lo, hi = float(o["min_size"]), float(o["max_size"])
    # a rotated w x h box needs its diagonal inside the grid; unrotated, its sides
    room = GRID_MAX / math.sqrt(2) if o["rotate"] else GRID_MAX
    if not 0 < lo <= hi <= room:
        raise ConfigError(
            f"data.kwargs: need 0 < min_size <= max_size <= {room:.2f} "
            f"(got {lo}, {hi}{', rotated' if o['rotate'] else ''})"
        )
    if "rectangle" in o["shapes"] and hi - lo < lo / 4:
        raise ConfigError("data.kwargs: rectangles need max_size - min_size >= min_size / 4")
    if not 8 <= int(o["size"]) <= 4096:
        raise ConfigError(f"data.kwargs.size: {o['size']} px is out of range (8..4096)")
    o.update(min_size=lo, max_size=hi, max_rotation=float(o["max_rotation"]), size=int(o["size"]))
    o["max_side"] = int(o["max_side"] or 0)
    o["train_n"] = int(o["train_n"] or 0)
    return o


def build(kwargs: dict[str, Any], split: str, seed: int) -> AreaStream | Sequence[dict[str, Any]]:
    """The registry entry: "train" streams; other splits are a fixed Sequence (or `kwargs.path`)."""
    opts = resolve_options(dict(kwargs))
    if split == "train":
        if opts["train_n"] > 0:
            return AreaFixedSet({**opts, "n": opts["train_n"]}, split, seed)
        return AreaStream(opts)
    if opts["path"]:
        return AreaFolderSet(Path(opts["path"]), opts["max_side"])
    return AreaFixedSet(opts, split, seed)


# --------------------------------------------------------------------------- `vlmgrpo data area`


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="folder to write (data.jsonl + images/)")
    p.add_argument("--n", type=int, default=100, help="number of items")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--split", default="test", help="split name (seeds the draw with --seed)")
    p.add_argument("--min-size", type=float, default=DEFAULTS["min_size"])
    p.add_argument("--max-size", type=float, default=DEFAULTS["max_size"])
    p.add_argument("--rotate", action="store_true", help="rotate shapes by up to --max-rotation")
    p.add_argument("--max-rotation", type=float, default=DEFAULTS["max_rotation"])
    p.add_argument("--size", type=int, default=BASE_PX, help="image side in pixels")


def run_cli(args: argparse.Namespace) -> int:
    """Write a fixed evaluation set; use it with `--set data.eval_kwargs.path=DIR`. Refuses a folder
    that holds one already."""
    opts = resolve_options(
        {
            "min_size": args.min_size,
            "max_size": args.max_size,
            "rotate": args.rotate,
            "max_rotation": args.max_rotation,
            "size": args.size,
            "n": args.n,
        }
    )
    out = Path(args.output)
    if (out / "data.jsonl").exists():  # nothing written is overwritten (an eval set a run used)
        raise DataError(f"{out}: already holds a set (data.jsonl); choose another --output")
    (out / "images").mkdir(parents=True, exist_ok=True)
    ds = AreaFixedSet(opts, args.split, args.seed)
    with open(out / "data.jsonl", "w") as f:
        for i in range(len(ds)):
            row = dict(ds[i])
            img = row.pop("images")[0]
            name = f"images/{row['id']}.png"
            img.save(out / name)
            f.write(json.dumps({**row, "image": name}) + "\n")
    print(f"wrote {len(ds)} items to {out}")
    return 0
