"""The `cycle-charxiv` recipes end to end on CPU with tiny real models: a tiny Qwen2.5-VL policy, a
tiny FLUX pipeline (or the Replicate client against a local server), a tiny DINOv2, and a tiny
CharXiv-shaped folder built through `vlmgrpo data charxiv`. Also the per-step artifacts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from PIL import Image
from tiny_builders import ReplicateStub, make_charxiv, tiny_model_dir

from vlmgrpo.config import load_config, load_recipe_dict
from vlmgrpo.data.charxiv import build_split
from vlmgrpo.report.artifacts import sort_by_score, write_step_json, write_step_page
from vlmgrpo.runlog import read_metrics

SEED_A_SYSTEM = "You are a helpful assistant that describes images in detail."
SEED_A_USER = (
    "Describe this image in detail. Be specific about visual elements, colors, shapes, text, and any other "
    "important features."
)


def test_recipe_reproduces_seed_a():
    cfg = load_config("cycle-charxiv")
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-VL-3B-Instruct" and cfg.model.dtype == "bfloat16"
    assert not cfg.model.lora.enabled
    assert (cfg.prompt.system, cfg.prompt.user) == (SEED_A_SYSTEM, SEED_A_USER)
    assert (
        cfg.data.dataset == "charxiv"
        and cfg.data.image_max_side == 224
        and cfg.data.kwargs["max_side"] == 224
    )
    r, g, o, t, e = cfg.rollout, cfg.grpo, cfg.optim, cfg.train, cfg.eval
    assert (r.group_size, r.prompts_per_step, r.temperature, r.max_new_tokens) == (8, 1, 0.9, 512)
    assert (g.loss, g.aggregation, g.adv_scale, g.adv_eps, g.adv_unbiased, g.beta) == (
        "pg",
        "grpo",
        "group",
        1e-4,
        True,
        0.0,
    )
    assert (o.lr, o.betas, o.weight_decay, o.eps, o.max_grad_norm, o.grad_accum, o.schedule) == (
        5e-6,
        [0.9, 0.99],
        0.1,
        1e-8,
        0.1,
        4,
        "constant",
    )
    assert (t.steps, t.seed, t.eval_every, t.save_every) == (1000, 7111994, 25, 25)
    assert (e.num_items, e.num_chains) == (10, 2)
    (reward,) = cfg.rewards
    kw = reward.kwargs
    assert reward.name == "cycle" and kw["generator"] == "replicate" and kw["embedder"] == "dinov2"
    assert kw["mapping"] == "01" and kw["resize"] == 224
    assert kw["embedder_kwargs"]["model"] == "facebook/dinov2-large"
    local = load_config("cycle-charxiv-local")
    assert local.rewards[0].kwargs["generator"] == "diffusers"
    assert local.rewards[0].kwargs["generator_kwargs"]["model"] == "black-forest-labs/FLUX.1-schnell"
    assert local.optim == cfg.optim and local.prompt == cfg.prompt and local.rollout == cfg.rollout


@pytest.fixture(scope="module")
def charxiv_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("charxiv")
    make_charxiv(root / "src")
    build_split(root / "out", root / "src")
    return root / "out"


def _tiny_recipe(tmp_path, recipe, charxiv_out, generator_kwargs, embedder_kwargs):
    """The packaged recipe with only the reward models' locations swapped for tiny ones (rewards
    is a list, which `--set` cannot index, so the entry is rewritten in a derived recipe)."""
    data = load_recipe_dict(recipe)
    reward = data["rewards"][0]
    reward["kwargs"]["generator_kwargs"] = {**reward["kwargs"]["generator_kwargs"], **generator_kwargs}
    reward["kwargs"]["embedder_kwargs"] = {**reward["kwargs"]["embedder_kwargs"], **embedder_kwargs}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"base": recipe, "rewards": data["rewards"]}))
    return path


def _run(tmp_path, recipe_path, tiny_vlm_dir, charxiv_out, extra=()):
    from vlmgrpo.trainer import Trainer

    cfg = load_config(
        str(recipe_path),
        [
            f"model.name_or_path={tiny_vlm_dir}",
            "model.dtype=float32",
            f"data.kwargs={{path: {charxiv_out}, max_side: 224}}",
            f"train.output_dir={tmp_path / 'run'}",
            "train.steps=2",
            "train.eval_every=2",
            "train.threads=2",
            "train.tensorboard=false",
            "rollout.max_new_tokens=16",
            "eval.num_items=2",
            "eval.max_new_tokens=8",
            *extra,
        ],
    )
    out = Trainer(cfg).fit()
    return out, read_metrics(out / "metrics.jsonl")


def _check_run(out, rows, skipped_ok=False):
    last = rows[-1]
    assert last["step"] == 2
    assert math.isfinite(last["reward/similarity/mean"]) and 0 <= last["reward/similarity/mean"] <= 1
    assert -1 <= last["reward/similarity/raw/mean"] <= 1
    assert math.isfinite(last["eval/similarity/raw/mean"])
    assert last["reward/similarity/failed"] == 0
    assert (out / "ckpts" / "ckpt-2" / "COMPLETE").is_file()
    samples = json.loads((out / "samples" / "step-000001" / "samples.json").read_text())
    assert len(samples) == 8 and all("regenerated" in s for s in samples)


@pytest.mark.slow
def test_cycle_charxiv_local_end_to_end(tmp_path, tmp_path_factory, tiny_vlm_dir, charxiv_out):
    flux = tiny_model_dir("flux", tmp_path_factory)
    dino = tiny_model_dir("dinov2", tmp_path_factory)
    gen_kw = {"model": str(flux), "height": 64, "width": 64, "max_sequence_length": 32}
    recipe = _tiny_recipe(tmp_path, "cycle-charxiv-local", charxiv_out, gen_kw, {"model": str(dino)})
    out, rows = _run(tmp_path, recipe, tiny_vlm_dir, charxiv_out)
    _check_run(out, rows)


def test_cycle_charxiv_tiny_step(tmp_path, tmp_path_factory, tiny_vlm_dir, charxiv_out):
    """The fast variant of the above for the default test run: one step, two charts per update (one
    per accumulated rollout)."""
    flux = tiny_model_dir("flux", tmp_path_factory)
    dino = tiny_model_dir("dinov2", tmp_path_factory)
    gen_kw = {"model": str(flux), "height": 64, "width": 64, "max_sequence_length": 32}
    recipe = _tiny_recipe(tmp_path, "cycle-charxiv-local", charxiv_out, gen_kw, {"model": str(dino)})
    from vlmgrpo.trainer import Trainer

    cfg = load_config(
        str(recipe),
        [
            f"model.name_or_path={tiny_vlm_dir}",
            "model.dtype=float32",
            f"data.kwargs={{path: {charxiv_out}, max_side: 224}}",
            f"train.output_dir={tmp_path / 'run'}",
            "train.steps=1",
            "train.eval_every=0",
            "train.tensorboard=false",
            "optim.grad_accum=2",  # the recipe's is 4: fit() accumulates over rollouts
            "rollout.max_new_tokens=8",
        ],
    )
    out = Trainer(cfg).fit()
    (row,) = read_metrics(out / "metrics.jsonl")
    assert row["update/micro_batches"] == 2
    assert math.isfinite(row["reward/similarity/mean"]) and row["reward/similarity/failed"] == 0
    assert "grad_norm" in row


@pytest.mark.slow
def test_cycle_charxiv_replicate_end_to_end(
    tmp_path, tmp_path_factory, tiny_vlm_dir, charxiv_out, monkeypatch
):
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_test_token")
    dino = tiny_model_dir("dinov2", tmp_path_factory)
    with ReplicateStub(fail_codes=(429, 503), retry_after="0.05") as stub:
        gen_kw = {"base_url": stub.url, "backoff_base": 0.001, "backoff_cap": 0.01, "poll_interval": 0.01}
        recipe = _tiny_recipe(tmp_path, "cycle-charxiv", charxiv_out, gen_kw, {"model": str(dino)})
        out, rows = _run(tmp_path, recipe, tiny_vlm_dir, charxiv_out)
    _check_run(out, rows)
    bodies = [c[3]["input"] for c in stub.creates()]
    assert len(bodies) >= 2 * 4 * 8 and all(b["num_inference_steps"] == 4 for b in bodies)


def test_missing_token_is_a_one_line_error_not_a_skipped_run(monkeypatch):
    """A missing token is the user's setup, not a passing failure: it raises the one-line error
    (the CLI prints it), both at reward time and from the reward's `prepare` at trainer start-up."""
    from vlmgrpo.errors import ConfigError
    from vlmgrpo.rewards import RewardContext, RewardRecord, RewardSpec, compute_rewards, resolve_reward

    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    rec = RewardRecord(prompt="", completion="a chart", images=[Image.new("RGB", (8, 8))], sample={"id": "1"})
    kwargs = {"generator": "replicate", "generator_kwargs": {"max_tries": 1}}
    msg = "REPLICATE_API_TOKEN is not set; get a token at https://replicate.com/account/api-tokens"
    with pytest.raises(ConfigError, match=msg):
        compute_rewards([rec], [RewardSpec("cycle", 1.0, kwargs)], RewardContext())
    with pytest.raises(ConfigError, match=msg):
        resolve_reward("cycle").fn.prepare(**kwargs)


# --------------------------------------------------------------------------- step artifacts


def test_write_step_page(tmp_path):
    original = Image.new("RGB", (120, 90), "white")
    regenerated = [Image.new("RGB", (64, 64), c) for c in ("red", "green")] + [
        None,
        Image.new("RGB", (64, 64)),
    ]
    scores = [0.2, 0.9, None, float("nan")]
    completions = ["a red chart " * 40, "a green chart", "failed one", "nan one"]
    pdf, png = write_step_page(
        tmp_path / "step-3", original, completions, regenerated, scores, title="step 3"
    )
    assert pdf.read_bytes()[:4] == b"%PDF" and Image.open(png).size[0] > 100
    assert sort_by_score(scores, regenerated) == [1, 0, 2, 3]
    with pytest.raises(ValueError):
        write_step_page(tmp_path, original, completions[:2], regenerated, scores)


def test_write_step_json(tmp_path):
    p = write_step_json(
        tmp_path, "training", 25, {"cosine": np.float32(0.5), "rewards": np.array([1.0, np.nan])}
    )
    assert p == tmp_path / "training_logs" / "step-000025.json"
    assert json.loads(p.read_text()) == {"step": 25, "cosine": 0.5, "rewards": [1.0, None]}
    q = write_step_json(tmp_path, "eval", 0, {"mean": float("inf")})
    assert q.parent.name == "eval_logs" and json.loads(q.read_text())["mean"] is None
    with pytest.raises(ValueError):
        write_step_json(tmp_path, "bogus", 0, {})
