"""What the cycle demo's policy names right in its own descriptions, attribute by attribute.

The demo's held-out similarity mixes colour, shape, size and position; this script separates them.
It samples 4 descriptions (temperature 1.0) of each of 64 held-out scenes under the demo's prompt,
parses each with the renderer's parser, and prints the share whose first object has the scene's
colour, shape, size and position (chance 1/6, 1/3, 1/2, 1/9), plus how often each shape word is
said. Two modes:

- the warm start, exactly as `vlmgrpo demo` runs it (same model, settings, seed and stop rule: its
  held-out check is wrapped, not replaced), probed at each of its held-out checks; the last line is
  the policy GRPO starts from, which has no checkpoint of its own;
- `--ckpt DIR...`: checkpoints of a demo run.

    python scripts/demo_attribute_probe.py --seed 1
    python scripts/demo_attribute_probe.py --seed 1 --ckpt runs/demo-seeds/seed-1/ckpts/ckpt-600

docs/learning.md ("Cycle") quotes its figures. Offline, CPU, about a minute per mode.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from vlmgrpo import components
from vlmgrpo.commands.demo import CYCLE_MODEL, DEMO_OVERRIDES, build_demo_model
from vlmgrpo.config import load_config
from vlmgrpo.imagegen.render import parse_description
from vlmgrpo.runlog import NullLog
from vlmgrpo.sampling import build_prompt, sampler_for
from vlmgrpo.trainer import Trainer
from vlmgrpo.warmup import warm_start

ITEMS, SAMPLES = 64, 4


def probe(tr: Trainer, samples: list[dict]) -> tuple[dict[str, float], Counter]:
    """Share of sampled descriptions naming each attribute right, and the shape words said."""
    cfg = tr.cfg
    prompts = [build_prompt(s, cfg) for s in samples]
    state = torch.get_rng_state()  # the warm start's own random stream is left as it was
    torch.manual_seed(999)
    right: dict[str, list[bool]] = {"colour": [], "shape": [], "size": [], "position": []}
    said: Counter = Counter()
    for i in range(0, len(prompts), 16):
        batch = sampler_for(cfg, tr.model).sample(
            tr.model, tr.proc, prompts[i : i + 16], SAMPLES, temperature=1.0,
            top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, max_new_tokens=cfg.rollout.max_new_tokens,
        )  # fmt: skip
        for j, text in enumerate(batch.completions):
            truth = samples[i + j // SAMPLES]["scene"]["objects"][0]
            objs = parse_description(text)
            o = objs[0] if objs else None
            right["colour"].append(o is not None and o.color == truth["color"])
            right["shape"].append(o is not None and o.shape == truth["shape"])
            right["size"].append(o is not None and o.size == truth["size"])
            right["position"].append(o is not None and (o.row, o.col) == (truth["row"], truth["col"]))
            said[o.shape if o else None] += 1
    torch.set_rng_state(state)
    return {k: float(np.mean(v)) for k, v in right.items()}, said


def line(name: str, acc: dict[str, float], said: Counter) -> str:
    return f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()) + f"; shape words {dict(said)}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1, help="the demo's seed (`vlmgrpo demo --seeds N`)")
    ap.add_argument("--ckpt", nargs="*", default=[], help="checkpoint folders to probe instead")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE on top, as the demo")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_demo_model(Path(tmp) / "model", CYCLE_MODEL)
        cfg = load_config(
            "demo",
            [f"model.name_or_path={model}", f"train.output_dir={tmp}/run", f"train.seed={args.seed}",
             *DEMO_OVERRIDES, *args.sets],
        )  # fmt: skip
        tr = Trainer(cfg)
        samples, _ = components.eval_samples(tr.eval_set, ITEMS, args.seed, False)
        if args.ckpt:
            from transformers import AutoModelForImageTextToText

            for ckpt in args.ckpt:
                tr.model = AutoModelForImageTextToText.from_pretrained(ckpt).eval()
                print(line(ckpt, *probe(tr, samples)), flush=True)
            return 0
        tr.runlog = NullLog()
        evaluate = tr.evaluate
        checks: list[str] = []

        def evaluate_and_probe() -> dict[str, float]:
            out = evaluate()
            checks.append(f"warm start, held-out similarity {out['eval/reward/mean']:.3f}")
            print(line(checks[-1], *probe(tr, samples)), flush=True)
            return out

        tr.evaluate = evaluate_and_probe  # type: ignore[method-assign]
        warm_start(tr)
        print(f"the warm start stopped after {len(checks)} held-out checks; its last line is GRPO's start")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
