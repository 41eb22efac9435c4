"""Issue #10 on CPU: concurrent remote generation, one-step rollout/reward overlap, placement
(offloading optimizer state and reward models between phases), the diffusers generator's
prompt-embedding cache and memory-budget batching."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_builders import ReplicateStub, tiny_model_dir

from vlmgrpo.config import load_config
from vlmgrpo.errors import ConfigError
from vlmgrpo.grpo.core import group_advantages
from vlmgrpo.placement import ModuleOffloader, OptimizerOffloader
from vlmgrpo.trainer import Trainer

HERE = Path(__file__).parent
FNS = HERE / "reward_fns_for_tests.py"


def _cfg(model_dir, out, *extra):
    return load_config(
        "demo",
        [
            f"model.name_or_path={model_dir}",
            f"train.output_dir={out}",
            "train.steps=3",
            "train.seed=3",
            "train.eval_every=0",
            "train.save_every=0",
            "train.log_samples_every=0",
            "train.tensorboard=false",
            "train.threads=1",
            "train.device=cpu",
            "warmup.steps=0",
            "data.kwargs={n: 32, size: 56}",
            "data.eval_kwargs={n: 4, size: 56}",
            "rollout.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=6",
            "optim.grad_accum=1",
            *extra,
        ],
    )


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _slow_reward(sleep: float, log_path: Path | str = "") -> str:
    return f"rewards=[{{name: '{FNS}:hashed_slow', kwargs: {{sleep: {sleep}, log_path: '{log_path}'}}}}]"


# --------------------------------------------------------------------------- remote generator


def test_remote_generator_calls_of_2s_run_concurrently_in_a_step(tiny_vlm_dir, tmp_path, monkeypatch):
    """8 completions, a generator whose every call takes 2 s: all 8 requests are in flight at once
    (every create starts before the first one ends; an order of events, not a clock reading)."""
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_test_token")
    with ReplicateStub(honour_wait=True, create_delay=2.0) as stub:
        gen_kw = json.dumps({"base_url": stub.url, "wait": 30, "poll_interval": 0.05})
        reward = (
            "rewards=[{name: cycle, kwargs: {generator: replicate, "
            f"generator_kwargs: {gen_kw}, embedder: pixel, resize: 32}}}}]"
        )
        cfg = _cfg(
            tiny_vlm_dir,
            tmp_path / "run",
            "train.steps=1",
            "rollout.prompts_per_step=1",
            "rollout.group_size=8",
            reward,
        )
        Trainer(cfg).fit()
        creates = stub.creates()
    row = _rows(tmp_path / "run")[-1]
    assert len(creates) == 8 and row["reward/cycle/failed"] == 0
    events = stub.events
    assert events.count("start") == 8 and events.index("end") == 8, events  # sequential: start, end, ...


def test_overlap_prefetch_does_not_hang_on_a_signal_seen_by_one_rank(tiny_vlm_dir, tmp_path):
    """A stop signal handled mid-step sets `stop_requested` on the ranks it reached only (SLURM and
    torchrun signal ranks one by one). Whether the next rollout is prefetched must not depend on it:
    under FSDP2 the prefetch's generate is a collective, so one rank prefetching while another
    skips it would hang both. The stop is agreed on at the next step's start instead."""
    cfg = _cfg(tiny_vlm_dir, tmp_path / "run", "rollout.overlap=true", "grpo.loss=is", _slow_reward(0))
    tr = Trainer(cfg)
    tr.runlog = None
    tr.stop_requested = True  # this rank got SIGTERM during the step; its peers did not (yet)
    try:
        tr.train_step()
    finally:
        if tr._pool is not None:
            tr._pool.shutdown(wait=True)
    assert tr._pending is not None  # prefetched like a rank whose flag is still clear


def test_a_stop_with_a_prefetched_rollout_checkpoints_the_sampler_before_it(tiny_vlm_dir, tmp_path):
    """rollout.overlap stopped early (here train.max_time_s; a signal alike) holds step 2's
    prefetched rollout. The final checkpoint must hold the sampler before those draws, as a run
    without overlap has it after step 1; else a resume skips step 2's prompts (they were dropped)."""
    from vlmgrpo.checkpoint import load_trainer_state

    common = ("grpo.loss=is", _slow_reward(0), "train.save_every=0")
    Trainer(
        _cfg(tiny_vlm_dir, tmp_path / "a", "rollout.overlap=true", "train.max_time_s=1e-6", *common)
    ).fit()
    Trainer(_cfg(tiny_vlm_dir, tmp_path / "b", "train.steps=1", *common)).fit()
    a, b = (load_trainer_state(tmp_path / r / "ckpts" / "ckpt-1") for r in ("a", "b"))
    assert a["sampler"] == b["sampler"]


# --------------------------------------------------------------------------- overlap


def test_overlap_needs_an_importance_ratio(tiny_vlm_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"rollout.overlap: needs grpo.loss"):
        Trainer(_cfg(tiny_vlm_dir, tmp_path, "rollout.overlap=true", "grpo.loss=pg", _slow_reward(0)))


def test_overlap_rolls_out_next_step_while_rewards_run(tiny_vlm_dir, tmp_path, monkeypatch):
    spans: list[tuple[int, float, float]] = []
    real = Trainer._rollout_phase

    def timed(self, step):
        t0 = time.time()
        out = real(self, step)
        spans.append((step, t0, time.time()))
        return out

    monkeypatch.setattr(Trainer, "_rollout_phase", timed)
    captured = []
    real_update = Trainer.update

    def capture(self, batches, advs):
        captured.append(([c for b in batches for c in b.completions], torch.cat(advs).clone()))
        return real_update(self, batches, advs)

    monkeypatch.setattr(Trainer, "update", capture)
    log_path = tmp_path / "rewards.jsonl"
    cfg = _cfg(
        tiny_vlm_dir, tmp_path / "run", "rollout.overlap=true", "grpo.loss=is", _slow_reward(1.5, log_path)
    )
    Trainer(cfg).fit()
    rows = [r for r in _rows(tmp_path / "run") if "overlap/stale" in r]
    assert [r["overlap/stale"] for r in rows] == [0.0, 1.0, 1.0]
    assert [s[0] for s in spans] == [
        0,
        1,
        2,
    ]  # one rollout per step, the last one not prefetched past the end
    calls = [json.loads(x) for x in log_path.read_text().splitlines()]
    assert [c["step"] for c in calls] == [0, 1, 2]
    for step in (0, 1):  # the rollout of step+1 and step's reward call ran at the same time
        _, r_start, r_end = spans[step + 1]
        assert r_start < calls[step]["end"] and calls[step]["start"] < r_end, (step, spans, calls)
    # each update's advantages are those of its own completions: rewards stay tied to samples
    from reward_fns_for_tests import completion_value

    assert len(captured) == 3
    for completions, adv in captured:
        expect = group_advantages(torch.tensor([completion_value(c) for c in completions]), 4, eps=1e-4)
        torch.testing.assert_close(adv, expect)


def test_overlap_refuses_rewards_that_query_the_policy(tiny_vlm_dir, tmp_path):
    cfg = _cfg(
        tiny_vlm_dir,
        tmp_path,
        "rollout.overlap=true",
        "grpo.loss=is",
        f"rewards=[{{name: '{FNS}:asks_policy'}}]",
    )
    with pytest.raises(ConfigError, match=r"rollout.overlap: a reward queries the policy"):
        Trainer(cfg).fit()


def test_overlap_resume_draws_the_same_prompts(tiny_vlm_dir, tmp_path):
    """A checkpoint taken while step t+1 is prefetched records the sampler before those draws."""
    extra = ("rollout.overlap=true", "grpo.loss=is", "train.steps=4")
    full_log, part_log = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    Trainer(_cfg(tiny_vlm_dir, tmp_path / "full", *extra, _slow_reward(0, full_log))).fit()
    run = tmp_path / "part"
    Trainer(
        _cfg(tiny_vlm_dir, run, *extra, "train.save_every=2", "train.steps=2", _slow_reward(0, part_log))
    ).fit()
    Trainer(
        _cfg(tiny_vlm_dir, run, *extra, "train.save_every=2", _slow_reward(0, part_log)), resume="latest"
    ).fit()
    ids = lambda p: [json.loads(x)["ids"] for x in p.read_text().splitlines()]  # noqa: E731
    assert ids(part_log) == ids(full_log)


# --------------------------------------------------------------------------- placement


def test_offloaders_keep_values_and_release_the_originals():
    lin = torch.nn.Linear(8, 8)
    before = {k: v.clone() for k, v in lin.state_dict().items()}
    off = ModuleOffloader([lin])
    w0 = lin.weight.data
    off.offload()
    assert lin.weight.data is not w0 and lin.weight.data.data_ptr() != w0.data_ptr()
    off.onload()
    for k, v in lin.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)

    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    lin(torch.randn(4, 8)).sum().backward()
    opt.step()
    moments = {id(p): opt.state[p]["exp_avg"].clone() for p in lin.parameters()}
    oo = OptimizerOffloader(opt, "cpu")
    assert oo.state_bytes() == 2 * 4 * sum(p.numel() for p in lin.parameters())
    objs = {id(p): opt.state[p]["exp_avg"] for p in lin.parameters()}
    oo.offload()
    for p in lin.parameters():
        assert opt.state[p]["exp_avg"] is not objs[id(p)]
        torch.testing.assert_close(opt.state[p]["exp_avg"], moments[id(p)], rtol=0, atol=0)
    oo.onload()
    opt.step()  # still a working optimizer


def test_offload_options_leave_training_bit_identical(tiny_vlm_dir, tmp_path, tmp_path_factory, monkeypatch):
    """Optimizer-state and reward-model offload change where tensors live, not the training: the
    runs end with equal weights (zero tolerance). First shown: training changed (a reward with
    spread inside every group, grad_norm > 0 at every step, the weights moved from the initial
    model) and the offloaders really ran (a tiny DINOv2 embedder moved in and out, AdamW moments
    moved out after every step)."""
    from vlmgrpo.embed.hf import HFImageEmbedder
    from vlmgrpo.models import load_policy

    dino = tiny_model_dir("dinov2", tmp_path_factory)
    rewards = (
        f"rewards=[{{name: '{FNS}:hashed_slow'}}, {{name: cycle, weight: 0.5, kwargs: {{generator: render, "
        f"generator_kwargs: {{size: 56}}, embedder: dinov2, embedder_kwargs: {{model: '{dino}', device: cpu}}, "
        "resize: 56}}]"
    )
    calls = {"embedder": 0, "optimizer": 0}
    real_onload, real_opt_offload = HFImageEmbedder.onload, OptimizerOffloader.offload

    def onload(self):
        calls["embedder"] += 1
        return real_onload(self)

    def opt_offload(self):
        calls["optimizer"] += 1
        return real_opt_offload(self)

    monkeypatch.setattr(HFImageEmbedder, "onload", onload)
    monkeypatch.setattr(OptimizerOffloader, "offload", opt_offload)
    dumps = {}
    for name, extra in (("plain", ()), ("offload", ("placement.offload_optimizer=true",
                                                    "placement.offload_reward_models=true"))):  # fmt: skip
        monkeypatch.setenv("VLMGRPO_DUMP_PARAMS", str(tmp_path / f"{name}-params"))
        Trainer(_cfg(tiny_vlm_dir, tmp_path / name, *extra, "grpo.loss=is", rewards)).fit()
        dumps[name] = torch.load(tmp_path / f"{name}-params" / "rank-0.pt")
        rows = _rows(tmp_path / name)
        assert len(rows) == 3 and all(r["grad_norm"] > 0 and r["reward/std"] > 0 for r in rows), rows
        if name == "plain":
            assert calls == {"embedder": 0, "optimizer": 0}
    assert calls["embedder"] >= 3 and calls["optimizer"] >= 3, calls
    initial = {
        k: v.detach()
        for k, v in load_policy(_cfg(tiny_vlm_dir, tmp_path / "x").model)[0].state_dict().items()
    }
    moved = [k for k, v in dumps["plain"].items() if k in initial and not torch.equal(v, initial[k])]
    assert len(moved) > 0.9 * len(dumps["plain"]), (len(moved), len(dumps["plain"]))
    assert dumps["plain"].keys() == dumps["offload"].keys()
    for k, v in dumps["plain"].items():
        torch.testing.assert_close(dumps["offload"][k], v, rtol=0, atol=0, msg=k)


# --------------------------------------------------------------------------- diffusers generator


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return tiny_model_dir("flux", tmp_path_factory)


def _gen(flux_dir, **kw):
    from vlmgrpo.imagegen.diffusers_gen import DiffusersGenerator

    return DiffusersGenerator(
        model=str(flux_dir), height=64, width=64, device="cpu", max_sequence_length=32, **kw
    )


def test_prompt_embedding_cache_gives_the_same_images(flux_dir):
    prompts = ["a red bar chart", "a red bar chart", "a blue line plot", "a red bar chart"]
    seeds = [1, 2, 3, 4]
    cached = _gen(flux_dir, batch_size=4)
    plain = _gen(flux_dir, batch_size=4, embed_cache=0)
    assert cached.can_cache_embeddings() and not plain.can_cache_embeddings()
    a = [np.asarray(im, dtype=int) for im in cached.generate(prompts, seeds)]
    b = [np.asarray(im, dtype=int) for im in plain.generate(prompts, seeds)]
    for x, y in zip(a, b):
        assert np.abs(x - y).max() <= 2
    assert (cached.embed_misses, cached.embed_hits) == (2, 2)  # two distinct texts encoded once each
    cached.generate(["a blue line plot"], [9])
    assert (cached.embed_misses, cached.embed_hits) == (2, 3)


def test_embeddings_fed_directly_without_text_encoders(flux_dir):
    """The benchmark's path: a pipeline without tokenizers, embeddings from `encode`."""
    from vlmgrpo.imagegen.diffusers_gen import DiffusersGenerator

    pipe = _gen(flux_dir).pipe
    for name in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        setattr(pipe, name, None)
    dim = pipe.transformer.config.joint_attention_dim
    pooled_dim = pipe.transformer.config.pooled_projection_dim

    class Direct(DiffusersGenerator):
        def encode(self, prompts):
            g = torch.Generator().manual_seed(0)
            return torch.randn(len(prompts), 8, dim, generator=g), torch.randn(
                len(prompts), pooled_dim, generator=g
            )

    gen = Direct.from_pipeline(pipe, height=64, width=64, batch_size=2)
    images = gen.generate(["x", "y", "z"], [1, 2, 3])
    assert all(im is not None and im.size == (64, 64) for im in images) and gen.failures == 0


def test_memory_budget_sets_the_batch_and_oom_halves_it(flux_dir):
    gen = _gen(flux_dir, batch_size=8, memory_budget_gib=3.0)
    assert gen.batch_for_budget() == 8  # nothing measured yet (no CUDA here)
    gen.per_image_gib = 0.7
    assert gen.batch_for_budget() == 4  # floor(3.0 / 0.7)
    gen.per_image_gib = 5.0
    assert gen.batch_for_budget() == 1
    gen.per_image_gib = None
    calls = []
    real = gen._call

    def oom_above_two(prompts, seeds):
        calls.append(len(prompts))
        if len(prompts) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(prompts, seeds)

    gen._call = oom_above_two
    gen.batch_size = 4
    images = gen.generate([f"p{i}" for i in range(8)], list(range(8)))
    assert all(im is not None for im in images) and gen.failures == 0
    assert gen.batch_size == 2 and calls[:1] == [4] and calls[-2:] == [2, 2]


def test_generator_offload_roundtrip_keeps_images(flux_dir):
    gen = _gen(flux_dir)
    a = np.asarray(gen.generate(["a chart"], [5])[0], dtype=int)
    gen.offload()
    gen.onload()
    b = np.asarray(gen.generate(["a chart"], [5])[0], dtype=int)
    assert np.abs(a - b).max() <= 2
