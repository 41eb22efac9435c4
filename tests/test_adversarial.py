"""Adversarial cycle training (seed B) on tiny real models: config and schedule, the adversary
reward and its controls, both learners update (the seed's policy never did), the logged image is
the scored image, the adversary learns against a frozen policy, the diversity control keeps
prompts distinct, two-model checkpoints resume exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlmgrpo.adversarial import (
    AdversarialTrainer,
    ScheduleConfig,
    adversary_config,
    adversary_key,
    learner_configs,
    round_kind,
    train_adversarial,
)
from vlmgrpo.config import load_config
from vlmgrpo.errors import ConfigError
from vlmgrpo.rewards import RewardContext, RewardRecord
from vlmgrpo.rewards.adversary import (
    adversary_reward,
    image_dissimilarity,
    mean_to_others,
    prompt_dissimilarity,
)
from vlmgrpo.runlog import read_metrics


def _cfg(policy_dir, adversary_dir, out, *extra):
    """The offline recipe shrunk: no warm starts, small groups, no evals or checkpoints."""
    return load_config(
        "adversarial",
        [
            f"model.name_or_path={policy_dir}",
            f"extra.adversary.model.name_or_path={adversary_dir}",
            f"train.output_dir={out}",
            "train.steps=2",
            "train.eval_every=0",
            "train.save_every=0",
            "train.log_samples_every=1",
            "train.tensorboard=false",
            "train.threads=1",
            "warmup.steps=0",
            "extra.adversary.warmup.steps=0",
            "extra.adversary.reward.realism=null",  # reward = discount x (1 - similarity)
            "data.kwargs={n: 64, size: 56, max_objects: 1}",
            "data.eval_kwargs={n: 8, size: 56, max_objects: 1}",
            "rollout.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=12",
            "eval.num_items=4",
            "eval.num_chains=2",
            "extra.adversary.eval.num_chains=4",
            *extra,
        ],
    )


def _rows(out, kind=None):
    rows = [r for r in read_metrics(out / "metrics.jsonl") if r["phase"] == "grpo"]
    return [r for r in rows if kind is None or r.get("round_kind") == kind]


def _fifths(values):
    k = max(1, len(values) // 5)
    return float(np.mean(values[:k])), float(np.mean(values[-k:]))


# --------------------------------------------------------------------------- config and schedule


def test_schedule_alternates_by_default_and_takes_ratio_and_warmups():
    assert [round_kind(r, ScheduleConfig()) for r in range(4)] == ["base", "adversary"] * 2
    s = ScheduleConfig(base_rounds=3, adversary_rounds=1)
    assert [round_kind(r, s) for r in range(8)] == ["base"] * 3 + ["adversary"] + ["base"] * 3 + ["adversary"]
    s = ScheduleConfig(base_warmup_rounds=2, adversary_warmup_rounds=3)
    kinds = [round_kind(r, s) for r in range(7)]
    assert kinds == ["base", "base", "adversary", "adversary", "adversary", "base", "adversary"]
    frozen = ScheduleConfig(base_rounds=0)  # adversary only: the policy is frozen
    assert {round_kind(r, frozen) for r in range(5)} == {"adversary"}


def test_recipes_parse_into_two_learner_configs():
    cfg = load_config("adversarial-charxiv")
    acfg = adversary_config(cfg)
    base, adv = learner_configs(cfg, acfg)
    # seed B: the VLM without images as adversary, its prompt, reward 1 - raw cosine
    assert adv.model.name_or_path == cfg.model.name_or_path and not adv.model.text_only
    assert adv.prompt.system == "You are a helpful assistant that describes scientific plots and charts."
    assert acfg.prompt.user[0].startswith(
        "Describe a plot or chart that might be shown in a scientific publication."
    )
    kw = adv.rewards[0].kwargs
    assert kw["mapping"] == "raw" and kw["generator"] == "replicate" and kw["embedder"] == "dinov2"
    assert kw["realism"]["dataset"] == "charxiv"  # the reference set defaults to the policy's images
    # each learner: its own optimiser with seed A's hyperparameters; rounds split between them
    assert adv.optim.lr == base.optim.lr == 5e-6 and adv.optim.max_grad_norm == 0.1
    assert base.train.steps == adv.train.steps == 500
    assert acfg.schedule.real_fraction == 0.0
    demo = load_config("adversarial")
    dacfg = adversary_config(demo)
    assert dacfg.model.text_only and demo.rewards[0].name == "cycle"


def test_bad_adversary_section_is_a_one_line_error():
    with pytest.raises(ConfigError, match="extra.adversary.schedule.base_rouds"):
        adversary_config(load_config("adversarial", ["extra.adversary.schedule.base_rouds=2"]))
    with pytest.raises(ConfigError, match="extra.adversary.model.name_or_path: empty"):
        adversary_config(load_config("adversarial", ["extra.adversary.model.name_or_path="]))
    with pytest.raises(ConfigError, match="real_fraction"):
        adversary_config(load_config("adversarial", ["extra.adversary.schedule.real_fraction=2"]))
    with pytest.raises(ConfigError, match="extra.adversary.optim.lrr"):
        cfg = load_config("adversarial", ["extra.adversary.optim.lrr=1"])
        learner_configs(cfg, adversary_config(cfg))


def test_adversary_metric_names():
    assert adversary_key("reward/mean") == "adversary/reward/mean"
    assert adversary_key("reward/adversary/similarity/mean") == "adversary/similarity/mean"
    assert adversary_key("reward/adversary/diversity/mean") == "adversary/diversity/mean"
    assert adversary_key("reward/adversary/mean") is None  # the only reward: = reward/mean
    assert adversary_key("reward/adversary/failed") == "adversary/reward/failed"
    assert adversary_key("eval/reward/mean") == "adversary/eval/reward/mean"
    assert adversary_key("eval/adversary/similarity/mean") == "adversary/eval/similarity/mean"
    assert adversary_key("loss") == "adversary/loss"
    assert adversary_key("time/rollout") == "time/rollout"


# --------------------------------------------------------------------------- the reward and its controls


def test_dissimilarities():
    d = prompt_dissimilarity(["a red circle", "a red circle", "a blue square", ""])
    assert d[0, 1] == 0 and d[0, 2] == pytest.approx(1 - 1 / 5) and d[3, 3] == 0
    feats = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    di = image_dissimilarity(feats)
    assert di[0, 1] == 0 and di[0, 2] == 1 and di[3, 4] == 0 and di[0, 3] == 1  # blank = blank
    # each row's mean to the others of its group; a collapsed group earns 0
    m = mean_to_others(prompt_dissimilarity(["x", "x", "x", "a", "b"]), [0, 0, 0, 1, 1])
    np.testing.assert_allclose(m, [0, 0, 0, 1, 1])


@pytest.fixture(scope="module")
def policy_handle(tiny_vlm_dir):
    from vlmgrpo.models import load_policy
    from vlmgrpo.sampling import PolicyHandle

    cfg = load_config("adversarial", [f"model.name_or_path={tiny_vlm_dir}", "rollout.max_new_tokens=8"])
    model, proc = load_policy(cfg.model)
    return PolicyHandle(model, proc, cfg)


def test_adversary_reward_scores_the_logged_image_and_applies_controls(policy_handle):
    from vlmgrpo.embed import get_embedder

    prompts = [
        "a large red circle at the top left",
        "a large red circle at the top left",
        "zzz qqq",
        "a blue square",
    ]
    recs = [
        RewardRecord(prompt="", completion=p, images=[], sample={"id": str(i)}, index=i)
        for i, p in enumerate(prompts)
    ]
    ctx = RewardContext(step=0, phase="train", policy=policy_handle, seed=3)
    kw = dict(
        generator_kwargs={"size": 56},
        resize=56,
        solvability={"min": 0.5},
        diversity={"weight": 0.5, "over": "prompts"},
        length={"max_words": 3, "penalty": 0.4},
    )
    out = adversary_reward(recs, ctx, **kw)
    # the image in extras is the one that was described and scored: its similarity, recomputed, agrees
    emb = get_embedder("pixel", {})
    for rec, o in zip(recs, out):
        s = emb.similarity([rec.extras["image"]], [rec.extras["regenerated"]])[0]
        assert o["similarity"] == pytest.approx(s) and o["fool"] == pytest.approx(1 - s)
        assert isinstance(rec.extras["description"], str)
    # no colour or shape word: a blank canvas the generator cannot redraw -> discounted to nothing
    assert out[2]["solvability"] == 0 and out[2]["discount"] == 0
    assert out[0]["solvability"] == pytest.approx(1.0)
    # the two identical prompts are less diverse than the others; length: 8 words > 3 -> penalty 0.4
    assert out[0]["diversity"] < out[3]["diversity"]
    assert out[0]["over_length"] == 1 and out[3]["over_length"] == 0
    expected = 1.0 * (out[0]["fool"] + 0.5 * out[0]["diversity"]) - 0.4
    assert out[0]["score"] == pytest.approx(expected)
    assert out[2]["score"] == 0  # 2 words: no length penalty, discount 0
    # realism: the nearest real scene; without the controls the reward is 1 - raw similarity
    real = adversary_reward(
        recs,
        ctx,
        generator_kwargs={"size": 56},
        resize=56,
        realism={"weight": 1.0, "dataset": "scenes", "kwargs": {"n": 16, "size": 56}, "n": 16},
    )
    assert real[0]["realism"] > real[2]["realism"]  # a drawn shape is more like a scene than a blank canvas
    plain = adversary_reward(recs, ctx, generator_kwargs={"size": 56}, resize=56)
    assert all(set(o) == {"score", "similarity", "fool", "words"} for o in plain)
    assert all(o["score"] == pytest.approx(1 - o["similarity"]) for o in plain)


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def warm_pair(tmp_path_factory, tiny_vlm_dir, tiny_text_lm_dir):
    """(policy dir, adversary dir) after short supervised warm starts (a run of 0 rounds): the
    policy writes renderable descriptions and the adversary renderable prompts, so both rewards
    vary inside a group from the first round on."""
    out = tmp_path_factory.mktemp("adv-warm")
    cfg = _cfg(
        tiny_vlm_dir,
        tiny_text_lm_dir,
        out,
        "train.steps=0",
        "warmup.steps=40",
        "warmup.eval_every=0",
        "extra.adversary.warmup.steps=40",
    )
    train_adversarial(cfg)
    return out / "ckpts" / "ckpt-0" / "base", out / "ckpts" / "ckpt-0" / "adversary"


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_both_models_train_and_the_logged_image_is_the_scored_one(warm_pair, tmp_path):
    from PIL import Image

    from vlmgrpo.embed import get_embedder

    cfg = _cfg(
        *warm_pair, tmp_path, "train.steps=4", "optim.max_grad_norm=0", "extra.adversary.optim.lr=1e-3"
    )
    tr = AdversarialTrainer(cfg)
    before = {"base": _params(tr.base.model), "adversary": _params(tr.adversary.model)}
    tr.fit()
    # the seed's defect: its policy was never updated. Here every trainable parameter of both moves.
    for name, model in (("base", tr.base.model), ("adversary", tr.adversary.model)):
        unchanged = [
            n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[name][n])
        ]
        assert not unchanged, f"{name}: parameters that did not change: {unchanged[:5]}"
    assert tr.updates == {"base": 2, "adversary": 2}
    rows = _rows(tmp_path)
    assert [r["round_kind"] for r in rows] == ["base", "adversary"] * 2
    assert all("base/reward/mean" in r and "reward/similarity/mean" in r for r in rows[::2])
    for key in (
        "adversary/reward/mean",
        "adversary/similarity/mean",
        "adversary/solvability/mean",
        "adversary/loss",
    ):
        assert all(key in r for r in rows[1::2]), key
    # the adversary round's samples: its prompts, the policy's descriptions, and the very image that was
    # scored (recomputing the similarity from the logged PNGs gives the logged reward)
    entries = json.loads((tmp_path / "samples" / "step-000002" / "samples.json").read_text())
    emb = get_embedder("pixel", {})
    checked = 0
    for e in entries:
        assert e["completion"] and "description" in e
        img, regen = (
            Image.open(tmp_path / "samples" / "step-000002" / e[k]) for k in ("image", "regenerated")
        )
        s = emb.similarity([img], [regen])[0]
        if e["reward"] > 0:  # renderable: discount 1, reward = 1 - similarity
            assert e["reward"] == pytest.approx(1 - s, abs=1e-6)
            checked += 1
    assert checked
    prompts = json.loads((tmp_path / "samples" / "step-000001" / "adversary_prompts.json").read_text())
    assert len(prompts) == 2 and all(p["prompt"] for p in prompts)  # prompts_per_step x grad_accum images
    # the checkpoint holds both models in their own sub-folders
    ck = tmp_path / "ckpts" / "ckpt-4"
    assert (ck / "base" / "config.json").is_file() and (ck / "adversary" / "config.json").is_file()


def test_resume_matches_uninterrupted_run(warm_pair, tmp_path):
    common = ("train.save_every=2", "extra.adversary.optim.lr=1e-3", "train.eval_every=2")
    full = _cfg(*warm_pair, tmp_path / "full", "train.steps=4", *common)
    a = AdversarialTrainer(full)
    a.fit()
    first = _cfg(*warm_pair, tmp_path / "cut", "train.steps=2", *common)
    train_adversarial(first)
    resumed = _cfg(*warm_pair, tmp_path / "cut", "train.steps=4", *common)
    b = AdversarialTrainer(resumed, resume="latest")
    mid = {n: p.detach().clone() for n, p in b.adversary.model.named_parameters() if p.requires_grad}
    b.fit()
    for x, y in ((a.base.model, b.base.model), (a.adversary.model, b.adversary.model)):
        for (n, p), q in zip(x.named_parameters(), y.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)  # exact: fp32, CPU, same threads
    # steps 3-4 moved the adversary (so equal weights are not a run that never trained)
    assert mid and any(
        not torch.equal(p, mid[n]) for n, p in b.adversary.model.named_parameters() if n in mid
    )
    ra, rb = _rows(tmp_path / "full"), _rows(tmp_path / "cut")
    assert [r["step"] for r in rb] == [0, 1, 2, 3, 4]
    for x, y in zip(ra, rb):
        for k in ("reward/mean", "adversary/reward/mean", "eval/reward/mean", "adversary/eval/reward/mean"):
            assert x.get(k) == y.get(k) or (x.get(k) != x.get(k) and y.get(k) != y.get(k)), k  # NaN = NaN


def test_policy_vlm_without_images_as_adversary(tiny_vlm_dir, tmp_path):
    """The seed's choice: the adversary is the VLM checkpoint, used without images."""
    cfg = _cfg(
        tiny_vlm_dir,
        tiny_vlm_dir,
        tmp_path,
        "train.steps=1",
        "extra.adversary.model.text_only=false",
        "extra.adversary.schedule.base_rounds=0",
        "extra.adversary.reward.diversity={weight: 1.0, over: prompts}",
    )
    tr = AdversarialTrainer(cfg)
    before = _params(tr.adversary.model)
    tr.fit()
    moved = [
        n
        for n, p in tr.adversary.model.named_parameters()
        if p.requires_grad and not torch.equal(p, before[n])
    ]
    assert any("language_model" in n for n in moved) and not any("visual" in n for n in moved)
    assert _rows(tmp_path)[0]["round_kind"] == "adversary"


# --------------------------------------------------------------------------- learning


def _frozen_policy_run(policy_dir, adversary_dir, out, *extra):
    """Adversary rounds only (`schedule.base_rounds: 0`): the policy is frozen (its optimiser never
    steps; without a warm start its weights are those it was loaded with)."""
    cfg = _cfg(policy_dir, adversary_dir, out, "extra.adversary.schedule.base_rounds=0", *extra)
    tr = AdversarialTrainer(cfg)
    before = _params(tr.base.model)
    tr.fit()
    assert tr.updates["base"] == 0 and not tr.base.optimizer.state
    if cfg.warmup.steps == 0:
        assert all(torch.equal(p, before[n]) for n, p in tr.base.model.named_parameters() if p.requires_grad)
    return _rows(out, "adversary")


def test_adversary_reward_rises_against_a_frozen_policy(tiny_vlm_dir, tiny_text_lm_dir, tmp_path):
    """Fast variant. The random tiny policy fails on every image, so the reward measures fair
    challenges: at first ~1 prompt in 8 draws anything (the solvability guard gives a blank canvas
    nothing), and the adversary learns to write prompts the renderer draws and the policy fails on."""
    rows = _frozen_policy_run(
        tiny_vlm_dir,
        tiny_text_lm_dir,
        tmp_path,
        "train.steps=40",
        "train.seed=1",
        "extra.adversary.optim.lr=1e-2",
        "train.log_samples_every=0",
    )
    first, last = _fifths([r["adversary/reward/mean"] for r in rows])
    assert last > first + 0.3 and last > 0.5, (first, last)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_adversary_finds_what_a_warm_policy_cannot_describe(tiny_text_lm_dir, tmp_path, seed):
    """The demo's policy (colour filters, staged warm start) frozen; the adversary warm-started on
    the scenes' descriptions. Its reward rises and the policy's similarity on its images falls:
    it finds images the policy reconstructs worse (uncoloured shapes, several objects)."""
    from vlmgrpo.commands.demo import build_demo_model

    policy = build_demo_model(tmp_path / "policy")
    rows = _frozen_policy_run(
        policy,
        tiny_text_lm_dir,
        tmp_path / "run",
        "train.steps=60",
        f"train.seed={seed}",
        "train.log_samples_every=0",
        "warmup.steps=250",
        "warmup.target_field=scene_colors:120,description",
        "warmup.eval_every=0",
        "extra.adversary.warmup.steps=100",
        "extra.adversary.optim.lr=5e-4",
    )
    first, last = _fifths([r["adversary/reward/mean"] for r in rows])
    sim_first, sim_last = _fifths([r["adversary/similarity/mean"] for r in rows])
    assert last > first + 0.05, (first, last)
    assert sim_last < sim_first, (sim_first, sim_last)


def test_diversity_control_keeps_prompts_distinct(tiny_vlm_dir, tiny_text_lm_dir, tmp_path):
    """A setup that collapses: a high learning rate and 8-token prompts. Without the control the
    adversary ends up writing one prompt 8 times over (byte junk aside: the same words), and its
    groups' prompt diversity, logged at weight 0, falls to ~0; with the prompt-diversity bonus the
    groups stay distinct. (Over train.seed 1-4 the logged diversity of the last fifth was 0.0-0.23
    without the control and 0.64-0.83 with it.)"""
    from vlmgrpo.rewards.adversary import words

    stats = {}
    for weight in (0.0, 1.0):
        out = tmp_path / str(weight)
        rows = _frozen_policy_run(
            tiny_vlm_dir,
            tiny_text_lm_dir,
            out,
            "train.steps=100",
            "train.seed=1",
            "train.log_samples_every=4",
            "extra.adversary.optim.lr=1e-2",
            "extra.adversary.rollout.max_new_tokens=8",
            f"extra.adversary.reward.diversity={{weight: {weight}, over: prompts}}",
        )
        tail = rows[-len(rows) // 5 :]
        # distinct prompts per group as the renderer reads them: distinct word sets
        logged = sorted((out / "samples").glob("step-*"))[-len(tail) // 4 :]
        distinct = [
            len({frozenset(words(e["completion"])) for e in json.loads((d / "samples.json").read_text())})
            for d in logged
        ]
        stats[weight] = (
            float(np.mean(distinct)),
            float(np.mean([r["adversary/diversity/mean"] for r in tail])),
        )
    (distinct_off, div_off), (distinct_on, div_on) = stats[0.0], stats[1.0]
    assert div_off < 0.3, stats  # the setup does collapse without the control
    assert div_on > div_off + 0.3, stats
    assert distinct_on >= distinct_off + 2, stats


def test_lora_adversary_checkpoint_resumes(tiny_vlm_dir, tiny_text_lm_dir, tmp_path):
    """A LoRA adversary saves its adapter in ckpt-N/adversary and gets it back on resume."""
    lora = (
        "extra.adversary.model.lora={enabled: true, r: 4, alpha: 8}",
        "extra.adversary.schedule.base_rounds=0",
        "extra.adversary.reward.diversity={weight: 1.0, over: prompts}",
        "extra.adversary.optim.lr=1e-2",
    )
    tr = AdversarialTrainer(_cfg(tiny_vlm_dir, tiny_text_lm_dir, tmp_path, "train.steps=2", *lora))
    tr.fit()
    assert (tmp_path / "ckpts" / "ckpt-2" / "adversary" / "adapter_model.safetensors").is_file()
    trained = {n: p.detach().clone() for n, p in tr.adversary.model.named_parameters() if "lora_" in n}
    back = AdversarialTrainer(
        _cfg(tiny_vlm_dir, tiny_text_lm_dir, tmp_path, "train.steps=3", *lora), resume="latest"
    )
    for n, p in back.adversary.model.named_parameters():
        if "lora_" in n:
            torch.testing.assert_close(p, trained[n], msg=n)
    back.fit()
    assert back.updates == {"base": 0, "adversary": 3}
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3]
