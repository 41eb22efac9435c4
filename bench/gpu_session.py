"""Issue #20's GPU work in a few device calls: builders, the trainer timed per recipe, the table.

`bench/gpu_session.sh` says which call runs what; this file holds the pieces it needs that the
benches do not have: random-init folders of the real shapes (loadable by `vlmgrpo train` through
`from_pretrained`, nothing downloaded), synthetic datasets in each loader's format, `vlmgrpo train`
run for a few steps per GPU recipe, and the "what a step costs" table from their metrics.jsonl.

    python bench/gpu_session.py ceiling --out OUT/ceiling.json          # bf16 matmul + copy rate
    python bench/gpu_session.py build-policy --shape 3b --out /tmp/m/q3b
    python bench/gpu_session.py build-flux --out /tmp/m/flux            # FLUX.1-schnell shape
    python bench/gpu_session.py build-dinov2 --out /tmp/m/dino          # DINOv2-large shape
    python bench/gpu_session.py data --out /tmp/data                     # charxiv, geometry3k, img2code
    python bench/gpu_session.py train --recipe geometry3k --policy /tmp/m/q3b --data /tmp/data \
        --steps 4 --out OUT/train
    python bench/gpu_session.py table OUT/train > OUT/trainer.md

Every builder takes `--tiny` (tiny widths, CPU): `tests/test_gpu_session.py` runs the whole chain
on the CPU that way, so the plan is checked before a device is spent on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

# Public config.json values of Qwen/Qwen3-VL-8B-Instruct (img2code's policy), as bench_step.SHAPES
# holds those of Qwen2.5-VL-3B/7B.
QWEN3_VL_8B = dict(
    text=dict(
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=262144,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20]},
        tie_word_embeddings=False,
    ),
    vision=dict(
        depth=27,
        hidden_size=1152,
        intermediate_size=4304,
        num_heads=16,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=4096,
        num_position_embeddings=2304,
        deepstack_visual_indexes=[8, 16, 24],
        hidden_act="gelu_pytorch_tanh",
        in_channels=3,
    ),
)
# the GPU recipes of issue #20 item 3 and the policy shape each one trains
RECIPES = {
    "cycle-charxiv-local": "3b",
    "geometry3k": "3b",
    "area": "7b",
    "img2code": "qwen3vl-8b",
    "adversarial-charxiv": "3b",
}


def _device_dtype(tiny: bool):
    import torch

    if tiny or not torch.cuda.is_available():
        return torch.device("cpu"), torch.float32
    return torch.device("cuda"), torch.bfloat16


def _build(fn, device, dtype):
    """Instantiate directly on `device` in `dtype` (a 7B model is not built in fp32 on the host)."""
    import torch

    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return fn()
    finally:
        torch.set_default_dtype(prev)


# ------------------------------------------------------------------------------------- ceiling


def ceiling(out: Path) -> dict:
    """What this GPU reaches: an 8192^3 bf16 matmul (mean of 10 after 3 warm-ups) and a
    device-to-device copy; MFU uses the data-sheet peak, this says how far below it the ceiling is."""
    import torch

    d: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    d["bf16_matmul_tflops"] = round(10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12, 1)
    x = torch.empty(2**31, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    d["copy_tb_per_s"] = round(10 * 2 * x.numel() / (time.perf_counter() - t) / 1e12, 2)  # read + write
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(d, indent=1))
    return d


# ------------------------------------------------------------------------------------- builders


def build_policy(shape: str, out: Path, tiny: bool = False) -> Path:
    """A random-init policy of a real shape with the bench's full-vocabulary processor (so a random
    policy runs to max_new_tokens, as a real one would more often than a tiny-BPE one), saved so
    that `vlmgrpo train --set model.name_or_path=out` loads it."""
    import bench_step as B

    device, dtype = _device_dtype(tiny)
    if shape == "qwen3vl-8b":
        from vlmgrpo.models.tiny import build_tiny_vlm

        cfg = QWEN3_VL_8B
        if tiny:  # Qwen3-VL's layout, tiny widths (the project's tiny builder)
            return build_tiny_vlm(out, "qwen3_vl")
        unit = 32 * 32  # patch 16 x merge 2, squared: one merged token
        return _build(  # bf16 on the GPU, not an 8.8 B fp32 model on the host
            lambda: build_tiny_vlm(
                out,
                "qwen3_vl",
                text_config=cfg["text"],
                vision_config=cfg["vision"],
                min_pixels=4 * unit,
                max_pixels=16384 * unit,
            ),
            device,
            dtype,
        )
    proc = B.build_processor(full_vocab=not tiny)
    model = B.build_model("tiny" if tiny else shape, proc, device, dtype)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def build_flux(out: Path, tiny: bool = False) -> Path:
    """A random-init FLUX.1-schnell-shaped pipeline (transformer, VAE, T5-XXL and CLIP-L text
    encoders of bench_reward's shapes) with the project's offline CLIP / T5 tokenizers, saved for
    `FluxPipeline.from_pretrained` (the `cycle-charxiv-local` generator's `model`)."""
    if tiny:
        from vlmgrpo.models.tiny_reward_models import build_tiny_flux

        return build_tiny_flux(out)
    import bench_reward as R
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from vlmgrpo.models.tiny_reward_models import build_clip_tokenizer, build_t5_tokenizer

    device, dtype = _device_dtype(False)
    clip_tok, t5_tok = build_clip_tokenizer(), build_t5_tokenizer()
    clip_cfg = dict(R.CLIP_L_TEXT, bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
                    pad_token_id=clip_tok.pad_token_id)  # fmt: skip
    t5_cfg = dict(R.T5_XXL, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**R.SCHNELL_SCHEDULER),
        vae=_build(lambda: AutoencoderKL(**R.FLUX_VAE), device, dtype),
        text_encoder=_build(lambda: CLIPTextModel(CLIPTextConfig(**clip_cfg)), device, dtype),
        tokenizer=clip_tok,
        text_encoder_2=_build(lambda: T5EncoderModel(T5Config(**t5_cfg)), device, dtype),
        tokenizer_2=t5_tok,
        transformer=_build(lambda: FluxTransformer2DModel(**R.SCHNELL_TRANSFORMER), device, dtype),
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out))
    return out


def build_dinov2(out: Path, tiny: bool = False) -> Path:
    """A random-init DINOv2-large-shaped embedder with DINOv2's preprocessing (224 px crop)."""
    from vlmgrpo.models.tiny_reward_models import build_tiny_dinov2

    if tiny:
        return build_tiny_dinov2(out)
    import bench_reward as R
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    device, dtype = _device_dtype(False)
    model = _build(lambda: Dinov2Model(Dinov2Config(**R.DINOV2_LARGE)), device, dtype)
    proc = BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                             do_center_crop=True, image_mean=[0.485, 0.456, 0.406],
                             image_std=[0.229, 0.224, 0.225], resample=3, do_convert_rgb=True)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def build_data(out: Path, n: int = 40) -> Path:
    """Synthetic datasets in the loaders' formats: `charxiv/` (through `vlmgrpo data charxiv` from a
    CharXiv-shaped source), `geometry3k/` (InterGPS layout), `img2code/` (`vlmgrpo data img2code
    --create-sample`). `area` generates its own shapes."""
    sys.path.insert(0, str(ROOT / "tests"))
    from PIL import Image
    from tiny_builders import chart_image, make_charxiv

    out.mkdir(parents=True, exist_ok=True)
    src = out / "charxiv-source"
    make_charxiv(src, n=max(n, 120))  # the CharXiv split needs at least 100 figures
    for img in (src / "images").iterdir():  # chart-sized, not the tests' 96 x 72 (max_side 224 applies)
        Image.open(img).convert("RGB").resize((448, 336)).save(img)
    cli = [sys.executable, "-m", "vlmgrpo.cli", "data"]
    subprocess.run(cli + ["charxiv", "--source", str(src), "--output", str(out / "charxiv")], check=True)
    for split in ("train", "test"):
        for i in range(n):
            d = out / "geometry3k" / split / str(i)
            d.mkdir(parents=True, exist_ok=True)
            row = {
                "id": i,
                "problem_text": f"Find x in triangle {i}.",
                "choices": ["3", "5", "7", "9"],
                "answer": "B",
            }
            (d / "data.json").write_text(json.dumps(row))
            chart_image(i, (448, 336)).save(d / "img_diagram.png")
    subprocess.run(
        cli + ["img2code", "--create-sample", "--n", str(n), "--out", str(out / "img2code")], check=True
    )
    return out


# ------------------------------------------------------------------------------------- trainer


def recipe_overrides(recipe: str, policy: Path, data: Path, models: Path, steps: int) -> list[str]:
    """--set arguments that point a GPU recipe at the random-init folders and synthetic data and
    keep the run to `steps` timed updates (no evaluation, no sample files, checkpoints at the end)."""
    s = [
        f"model.name_or_path={policy}",
        f"train.steps={steps}",
        "train.eval_every=0",
        "train.save_every=0",
        "train.log_samples_every=0",
        "train.tensorboard=false",
    ]
    if recipe in ("cycle-charxiv-local", "adversarial-charxiv"):
        s += [f"data.kwargs.path={data / 'charxiv'}"]
        s += [  # cycle-charxiv-local's generator settings (adversarial-charxiv's base uses Replicate)
            "rewards[0].kwargs.generator=diffusers",
            f"rewards[0].kwargs.generator_kwargs={{model: {models / 'flux'}, num_inference_steps: 4, "
            "guidance_scale: 0.0, height: 1024, width: 1024, batch_size: 16, memory_budget_gib: 30}",
            f"rewards[0].kwargs.embedder_kwargs={{model: {models / 'dino'}, pooling: cls}}",
        ]
        if recipe == "adversarial-charxiv":  # one GPU: the reward models move out between phases
            s += ["placement.offload_optimizer=true", "placement.offload_reward_models=true"]
    if recipe == "adversarial-charxiv":
        s += [f"extra.adversary.model.name_or_path={policy}"]
    if recipe == "geometry3k":
        s += [f"data.kwargs={{path: {data / 'geometry3k'}}}"]
    if recipe == "img2code":
        s += [f"data.kwargs.path={data / 'img2code'}"]
    return s


# `vlmgrpo train`'s own entry point, with checkpoints not written: a 3B full fine-tune's checkpoint
# (weights + fp32 Adam moments, ~36 GB) would fill the device machine's disk beside the FLUX folder,
# and writing it is no part of a step's cost. Everything else is the CLI unchanged.
NO_CKPT_TRAIN = (
    "import sys; from vlmgrpo import adversarial, trainer; "
    "trainer.Trainer.save = lambda self: None; adversarial.AdversarialTrainer.save = lambda self: None; "
    "from vlmgrpo.cli import main; sys.exit(main(sys.argv[1:]))"
)


def run_train(recipe: str, overrides: list[str], out: Path, extra: list[str]) -> dict:
    """`vlmgrpo train` in a subprocess (checkpoints not written, see NO_CKPT_TRAIN); returns its
    wall time and exit status (log: out/train.log)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", NO_CKPT_TRAIN, "train", "--recipe", recipe, "--output-dir", str(out / "run")]
    for o in overrides + extra:
        cmd += ["--set", o]
    t = time.perf_counter()
    with (out / "train.log").open("w") as log:
        p = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1")
        )
    row = {
        "recipe": recipe,
        "cmd": cmd,
        "returncode": p.returncode,
        "wall_s": round(time.perf_counter() - t, 1),
    }
    (out / "row.json").write_text(json.dumps(row, indent=1))
    return row


def round_kinds(run_dir: Path) -> list[str | None]:
    """The adversarial trainer's round kinds (policy / adversary rounds) in RUN, or [None]."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return sorted({r["round_kind"] for r in rows if "round_kind" in r}) or [None]


def step_costs(run_dir: Path, skip: int = 1, kind: str | None = None) -> dict:
    """From RUN/metrics.jsonl: see `costs`."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return costs(rows, skip, kind)


def costs(rows: list[dict], skip: int = 1, kind: str | None = None) -> dict:
    """Steps/s and the mean per-phase seconds (time/<phase>) over the GRPO steps of metrics rows
    after the first `skip` (compilation, CUDA graph capture, allocator warm-up); `kind`: only
    the adversarial trainer's rounds of that kind (each kind warms up on its own)."""
    rows = [r for r in rows if kind is None or r.get("round_kind") == kind]
    steps = [r for r in rows if r.get("phase", "grpo") == "grpo" and "time/step" in r]
    timed = steps[skip:] or steps
    phases = sorted({k for r in timed for k in r if k.startswith("time/") and k != "time/step"})
    out = {
        "steps_timed": len(timed),
        "step_s": round(statistics.mean(r["time/step"] for r in timed), 3),
        "step_s_min_max": [
            round(min(r["time/step"] for r in timed), 3),
            round(max(r["time/step"] for r in timed), 3),
        ],
    }
    out["steps_per_s"] = round(1 / out["step_s"], 4)
    out["phases_s"] = {p[5:]: round(statistics.mean(r.get(p, 0.0) for r in timed), 3) for p in phases}
    return out


def _row(name: str, policy: str, c: dict) -> str:
    ph = ", ".join(f"{k} {v}" for k, v in c["phases_s"].items())
    return (
        f"| {name} | {policy} | {c['steps_timed']} | {c['step_s']} "
        f"({c['step_s_min_max'][0]}-{c['step_s_min_max'][1]}) | {c['steps_per_s']} | {ph} |"
    )


TABLE_HEAD = [
    "| recipe | policy | steps timed | s / step (min-max) | steps/s | per phase (s) |",
    "| --- | --- | --- | --- | --- | --- |",
]


def table_json(files: list[Path]) -> str:
    """The same table from `collect`'s trainer.json files (what comes back from the device),
    one row per recipe; where several files hold a recipe, the last file that ran it to the end."""
    runs: dict[str, tuple[Path, dict]] = {}
    for f in files:
        for recipe, row in json.loads(f.read_text()).items():
            if row["returncode"] == 0 and row.get("metrics"):
                runs[recipe] = (f, row)
    lines = list(TABLE_HEAD)
    for recipe in sorted(runs):
        f, row = runs[recipe]
        kinds = sorted({r["round_kind"] for r in row["metrics"] if "round_kind" in r}) or [None]
        for kind in kinds:
            name = recipe + (f" ({kind} rounds)" if kind else "")
            lines.append(_row(name, RECIPES.get(recipe, "?"), costs(row["metrics"], kind=kind)))
    return "\n".join(lines) + "\n"


def table(root: Path) -> str:
    """Markdown "what a step costs": one row per recipe folder under `root`."""
    lines = list(TABLE_HEAD)
    for d in sorted(p for p in root.iterdir() if (p / "row.json").is_file()):
        row = json.loads((d / "row.json").read_text())
        if row["returncode"] != 0 or not (d / "run" / "metrics.jsonl").is_file():
            tail = (
                (d / "train.log").read_text().strip().splitlines()[-1:] if (d / "train.log").exists() else []
            )
            lines.append(
                f"| {row['recipe']} | {RECIPES.get(row['recipe'], '?')} | failed: {' '.join(tail)[:120]} | | | |"
            )
            continue
        for kind in round_kinds(d / "run"):
            name = row["recipe"] + (f" ({kind} rounds)" if kind else "")
            lines.append(_row(name, RECIPES.get(row["recipe"], "?"), step_costs(d / "run", kind=kind)))
    return "\n".join(lines) + "\n"


def collect(root: Path, out: Path) -> None:
    """What comes back from the device machine (few files, two folders deep): `trainer.md` (the
    table), `trainer.json` (per recipe: exit status, wall, step costs, every metrics row) and
    `trainer_logs.txt` (the last 30 lines of each log)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "trainer.md").write_text(table(root))
    rows, logs = {}, []
    for d in sorted(p for p in root.iterdir() if (p / "row.json").is_file()):
        row = json.loads((d / "row.json").read_text())
        m = d / "run" / "metrics.jsonl"
        if m.is_file():
            row["metrics"] = [json.loads(x) for x in m.read_text().splitlines() if x.strip()]
            if row["metrics"]:
                row["step_costs"] = {str(k): step_costs(d / "run", kind=k) for k in round_kinds(d / "run")}
        rows[row["recipe"]] = row
        lines = (
            (d / "train.log").read_text(errors="replace").splitlines() if (d / "train.log").exists() else []
        )
        logs += [f"==== {row['recipe']}", *lines[-30:]]
    (out / "trainer.json").write_text(json.dumps(rows, indent=1))
    (out / "trainer_logs.txt").write_text("\n".join(logs) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ceiling").add_argument("--out", required=True)
    p = sub.add_parser("build-policy")
    p.add_argument("--shape", required=True, choices=["3b", "7b", "qwen3vl-8b"])
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true")
    for name in ("build-flux", "build-dinov2"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True)
        p.add_argument("--tiny", action="store_true")
    p = sub.add_parser("data")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=40)
    p = sub.add_parser("train")
    p.add_argument("--recipe", required=True, choices=sorted(RECIPES))
    p.add_argument("--policy", required=True, help="folder from build-policy")
    p.add_argument("--models", default="", help="folder holding flux/ and dino/ (cycle recipes)")
    p.add_argument("--data", required=True, help="folder from `data`")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], help="further overrides (the tiny check's)")
    sub.add_parser("table").add_argument("root")
    sub.add_parser("table-json").add_argument("files", nargs="+", help="trainer.json files, in run order")
    p = sub.add_parser("collect")
    p.add_argument("root")
    p.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.cmd == "ceiling":
        print(json.dumps(ceiling(Path(a.out))))
    elif a.cmd == "build-policy":
        print(build_policy(a.shape, Path(a.out), a.tiny))
    elif a.cmd == "build-flux":
        print(build_flux(Path(a.out), a.tiny))
    elif a.cmd == "build-dinov2":
        print(build_dinov2(Path(a.out), a.tiny))
    elif a.cmd == "data":
        print(build_data(Path(a.out), a.n))
    elif a.cmd == "train":
        out = Path(a.out) / a.recipe
        shutil.rmtree(out, ignore_errors=True)
        ov = recipe_overrides(a.recipe, Path(a.policy), Path(a.data), Path(a.models or "."), a.steps)
        row = run_train(a.recipe, ov, out, a.set)
        print(json.dumps({k: v for k, v in row.items() if k != "cmd"}))
        return row["returncode"]
    elif a.cmd == "table":
        print(table(Path(a.root)), end="")
    elif a.cmd == "table-json":
        print(table_json([Path(f) for f in a.files]), end="")
    elif a.cmd == "collect":
        collect(Path(a.root), Path(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
