"""One self-contained static HTML page for a run: headline figures, curves, checkpoint evaluation and
a sample gallery.

The page leads with the run's headline figures (`report.headline`: for a cycle run such as the demo,
the share of the gap to the ceiling closed, the first and last held-out evaluations, the ceiling
and the shuffled control; for other tasks their metric, first and last), then the curves at the
page's width, then `vlmgrpo eval`'s table (pass@k, or the task's score and its own columns).

Everything is inlined (images as base64 `data:` URIs, curves as PNGs drawn by `report.plots`), so
the file opens from disk in any browser, offline, with no server and no external assets. Per
sampled step (`RUN/samples/step-N/samples.json` + PNGs, see `runlog.write_samples`) a row shows the
original image beside the completions' image artifacts (e.g. the regenerated images of the cycle
reward), sorted by reward, best first, each with its description (the completion), reward and
advantage; text-only tasks show the completions alone. A small inline script records each image's
`naturalWidth` in the DOM (`data-natural-width`, and `data-images-loaded` / `data-images-broken` on
<body>) so a headless browser can check that every image decoded.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmgrpo.report.plots import DEFAULT_THEME, figure_png, load_run, make_figures, read_eval_results

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
META_KEYS = {"index", "prompt", "completion", "reward", "rewards", "sample_id", "advantage"}

CSS = {
    "festive": """
body{font-family:DejaVu Sans,Arial,sans-serif;margin:0;background:#fdf6ec;color:#2d2d2d}
header{background:linear-gradient(90deg,#a93226,#1e7b3c);color:#fff;padding:18px 28px}
h2{color:#a93226;border-bottom:3px dashed #1e7b3c;padding-bottom:4px}
h3{color:#1e7b3c;margin:8px 0}
.card{background:#fffaf3;border:1px solid #e6d3b3}
""",
    "plain": """
body{font-family:Arial,sans-serif;margin:0;background:#fff;color:#222}
header{background:#333;color:#fff;padding:18px 28px}
h2{border-bottom:1px solid #ccc;padding-bottom:4px}
h3{margin:8px 0}
.card{background:#fafafa;border:1px solid #ddd}
""",
}
CSS_COMMON = """
main{padding:8px 28px 40px}
header p{margin:4px 0;opacity:.9;font-size:13px}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:rgba(0,0,0,.05)}
td.l,th.l{text-align:left}
.curves{display:flex;flex-direction:column;gap:14px}
.curves img{width:100%;max-width:1300px;height:auto;border-radius:6px;display:block}
.headline{display:flex;flex-wrap:wrap;gap:12px;margin:14px 0 4px}
.headline div{padding:10px 16px;border-radius:6px;min-width:150px}
.headline b{display:block;font-size:24px;margin:2px 0}
.headline span{font-size:12px;opacity:.8}
.notes{color:#8a5a00;font-size:13px}
.step{margin:18px 0 26px}
.row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
figure{margin:0;padding:6px;border-radius:6px;width:196px;font-size:12px}
figure.orig{outline:3px solid #1e7b3c}
figure img{width:100%;image-rendering:pixelated;border-radius:4px;background:#fff}
figcaption{margin-top:4px}
.desc{display:block;white-space:pre-wrap;word-break:break-word;max-height:9em;overflow:auto;color:#444}
.score{font-weight:bold}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var ok = 0, bad = 0;
  document.querySelectorAll('img').forEach(function (img) {
    img.setAttribute('data-natural-width', img.naturalWidth);
    if (img.complete && img.naturalWidth > 0) { ok++; } else { bad++; }
  });
  document.body.setAttribute('data-images-loaded', ok);
  document.body.setAttribute('data-images-broken', bad);
});
"""


def data_uri(path: Path, max_side: int = 0) -> str:
    """The image file as a data URI, downscaled (and re-encoded as PNG) if its longest side > max_side."""
    raw = path.read_bytes()
    mime = MIME.get(path.suffix.lower(), "image/png")
    if max_side:
        from PIL import Image

        with Image.open(io.BytesIO(raw)) as img:
            if max(img.size) > max_side:
                small = img.convert("RGB")
                small.thumbnail((max_side, max_side))
                buf = io.BytesIO()
                small.save(buf, format="PNG")
                raw, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


def _png_uri(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}"


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return f"{v:.{digits}f}" if math.isfinite(v) else "-"
    return "-" if v is None else html.escape(str(v))


def pick_steps(step_dirs: list[Path], max_steps: int) -> list[Path]:
    """All step folders, or `max_steps` of them evenly spaced (first and last included)."""
    if max_steps <= 0 or len(step_dirs) <= max_steps:
        return step_dirs
    if max_steps == 1:
        return [step_dirs[-1]]
    idx = sorted({round(i * (len(step_dirs) - 1) / (max_steps - 1)) for i in range(max_steps)})
    return [step_dirs[i] for i in idx]


def _sort_key(e: dict[str, Any]) -> tuple[int, float]:
    r = e.get("reward")
    ok = isinstance(r, int | float) and math.isfinite(r)
    return (0, -float(r)) if ok else (1, 0.0)


def _step(step_dir: Path) -> str:
    return step_dir.name.rpartition("-")[2].lstrip("0") or "0"


def gallery_step(step_dir: Path, max_side: int, desc_chars: int) -> str:
    """One gallery row: the input image(s), then each completion's card, best reward first."""
    try:
        entries = json.loads((step_dir / "samples.json").read_text())
    except (OSError, ValueError):
        return f'<div class="step"><h3>{html.escape(step_dir.name)}</h3><p class="notes">no readable samples.json</p></div>'
    step = _step(step_dir)
    cards = []
    for p in sorted(step_dir.glob("input-*.png")):
        cards.append(
            f'<figure class="orig card"><img alt="original" src="{data_uri(p, max_side)}">'
            f"<figcaption><b>original</b> ({html.escape(p.name)})</figcaption></figure>"
        )
    for rank, e in enumerate(sorted(entries, key=_sort_key), 1):
        images = [
            (k, step_dir / v)
            for k, v in e.items()
            if k not in META_KEYS
            and isinstance(v, str)
            and Path(v).suffix.lower() in MIME
            and (step_dir / v).is_file()
        ]
        text = str(e.get("completion", ""))
        if desc_chars and len(text) > desc_chars:
            text = text[:desc_chars] + " ..."
        parts = [f'<span class="score">#{rank} reward {_fmt(e.get("reward"))}</span>']
        if "advantage" in e:
            parts.append(f"adv {_fmt(e.get('advantage'), 2)}")
        named = ", ".join(f"{html.escape(str(k))} {_fmt(v)}" for k, v in (e.get("rewards") or {}).items())
        imgs = "".join(f'<img alt="{html.escape(k)}" src="{data_uri(p, max_side)}">' for k, p in images)
        cards.append(
            f'<figure class="gen card">{imgs}<figcaption>{" &middot; ".join(parts)}'
            f'{"<br>" + named if named else ""}<span class="desc">{html.escape(text)}</span></figcaption></figure>'
        )
    return (
        f'<div class="step" id="step-{step}"><h3>Step {step}</h3>'
        f'<div class="row">{"".join(cards)}</div></div>'
    )


# each task's own numbers in the evaluation table, beside pass@k / score
TASK_COLUMNS = {
    "area": ["answered_rate", "mae", "within_10pct"],
    "img2code": ["exec_success_rate", "similarity", "syntax_error_rate"],
    "geometry": ["format_rate", "grounding_rate", "blind_success_rate"],
    # pass@1 per attribute of the questions, then of the run's own descriptions (tasks/scene_qa_eval.py)
    "scenes-qa": ["colour", "shape", "position", "describe_colour", "describe_shape", "describe_position"],
}


def _who(r: dict[str, Any]) -> str:
    """ "charts / rules judge", "area / seed's strict area rewards": never "/ None"."""
    who = r.get("grader") or (f"{r['judge']} judge" if r.get("judge") else "")
    return " / ".join(html.escape(str(x)) for x in (r.get("task") or "?", who) if x)


def _results_table(run: Path) -> str:
    results = read_eval_results(run)
    if not results:
        return '<p class="notes">No checkpoint evaluation yet (run <code>vlmgrpo eval --output-dir RUN</code>).</p>'
    has_pass = any(isinstance(r.get("pass@1"), int | float) for r in results)
    ks = sorted({k for r in results for k in (r.get("pass@k") or {}) if k != "1"}, key=int)
    extra = [c for c in TASK_COLUMNS.get(str(results[-1].get("task")), []) if any(c in r for r in results)]
    heads = (["pass@1", *(f"pass@{k}" for k in ks)] if has_pass else []) + ["score", *extra, "ungraded"]
    rows = []
    for r in results:
        cells = (
            [_fmt(r.get("pass@1")), *(_fmt((r.get("pass@k") or {}).get(k)) for k in ks)] if has_pass else []
        )
        cells += [_fmt(r.get("score"), 4), *(_fmt(r.get(c)) for c in extra), str(r.get("ungraded", 0) or 0)]
        rows.append(
            f'<tr><td class="l">{html.escape(str(r["name"]))}</td><td>{r["step"]}</td>'
            + "".join(f"<td>{c}</td>" for c in cells)
            + f"<td class='l'>{_who(r)}</td></tr>"
        )
    metric = results[-1].get("metric")
    caption = f"<p>{html.escape(str(metric))}</p>" if metric else ""
    return (
        f'{caption}<table><tr><th class="l">model</th><th>step</th>{"".join(f"<th>{h}</th>" for h in heads)}'
        f'<th class="l">task / grader</th></tr>{"".join(rows)}</table>'
    )


def _headline(run: Path) -> str:
    from vlmgrpo.report.headline import headline

    figures = headline(load_run(run))
    if not figures:
        return '<p class="notes">No headline figures yet (no evaluation in metrics.jsonl or ckpt_tests/).</p>'
    cards = "".join(
        f'<div class="card">{html.escape(f.label)}<b>{html.escape(f.value)}</b><span>{html.escape(f.detail)}</span></div>'
        for f in figures
    )
    return f'<div class="headline">{cards}</div>'


def _header(run: Path) -> str:
    info = []
    cfg_path = run / "config.yaml"
    if cfg_path.is_file():
        import yaml

        try:
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
            info.append(
                f"recipe <b>{html.escape(str(cfg.get('recipe', '?')))}</b> &middot; model "
                f"{html.escape(str((cfg.get('model') or {}).get('name_or_path', '?')))} &middot; "
                f"{(cfg.get('train') or {}).get('steps', '?')} steps"
            )
        except Exception:  # a broken config must not stop the report
            info.append("config.yaml unreadable")
    info.append(f"{html.escape(str(run.resolve()))} &middot; written {time.strftime('%Y-%m-%d %H:%M')}")
    return "".join(f"<p>{x}</p>" for x in info)


def build_html(
    run: str | Path,
    theme: str = DEFAULT_THEME,
    window: int = 10,
    max_steps: int = 20,
    image_max_side: int = 320,
    desc_chars: int = 600,
    compare: Sequence[str | Path] = (),
) -> tuple[str, list[str]]:
    """(the page's HTML, notes on what is missing)."""
    run = Path(run)
    figs, notes = make_figures(run, compare, theme, window)
    curves = "".join(
        f'<figure class="curve-fig" style="width:auto"><img class="curve" alt="{name}" src="{_png_uri(figure_png(fig))}"></figure>'
        for name, fig in figs.items()
    )
    step_dirs = sorted((run / "samples").glob("step-*")) if (run / "samples").is_dir() else []
    shown = pick_steps([d for d in step_dirs if d.is_dir()], max_steps)
    if not shown:
        notes.append(f"{run / 'samples'}: no sampled steps (train.log_samples_every = 0?)")
    gallery = "".join(gallery_step(d, image_max_side, desc_chars) for d in shown)
    links = [f'<a href="#step-{_step(d)}">{_step(d)}</a>' for d in shown]
    toc = f"<p>steps: {' '.join(links)}</p>" if links else ""
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    title = html.escape(run.resolve().name)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>vlmgrpo report: {title}</title><style>{CSS[theme]}{CSS_COMMON}</style></head>
<body data-images-loaded="" data-images-broken="">
<header><h1>{"&#10052; " if theme == "festive" else ""}vlmgrpo run {title}{" &#10052;" if theme == "festive" else ""}</h1>
{_header(run)}</header>
<main>
<section id="headline"><h2>Headline</h2>{_headline(run)}</section>
<section id="curves"><h2>Curves</h2><div class="curves">{curves or '<p class="notes">No curves to draw.</p>'}</div>
{f'<ul class="notes">{note_html}</ul>' if note_html else ""}</section>
<section id="eval"><h2>Checkpoint evaluation (<code>vlmgrpo eval</code>)</h2>{_results_table(run)}</section>
<section id="gallery"><h2>Samples ({len(shown)} of {len(step_dirs)} sampled steps)</h2>{toc}{gallery}</section>
</main>
<script>{SCRIPT}</script>
</body></html>
"""
    return page, notes


def write_report(run: str | Path, out: str | Path | None = None, **kwargs: Any) -> tuple[Path, list[str]]:
    """Write the page (default RUN/report.html); returns (path, notes). kwargs go to `build_html`."""
    page, notes = build_html(run, **kwargs)
    path = Path(out) if out else Path(run) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path, notes
