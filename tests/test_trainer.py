"""The trainer on tiny real models: log-prob agreement, every parameter trains, accumulation
invariance, LoRA vs full fine-tuning, failing rewards, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from vlmgrpo.config import load_config
from vlmgrpo.grpo import fastpath
from vlmgrpo.grpo.logps import LogpModel
from vlmgrpo.models import load_policy
from vlmgrpo.rollout import Prompt
from vlmgrpo.rollout import hf as hf_rollout
from vlmgrpo.sampling import build_prompt
from vlmgrpo.trainer import Trainer


def _cfg(model_dir, out, *extra):
    return load_config(
        "demo",
        [
            f"model.name_or_path={model_dir}",
            f"train.output_dir={out}",
            "train.steps=1",
            "train.eval_every=0",
            "train.save_every=0",
            "train.log_samples_every=0",
            "train.tensorboard=false",
            "warmup.steps=0",
            "data.kwargs={n: 64, size: 56}",
            "data.eval_kwargs={n: 8, size: 56}",
            "rollout.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=8",
            *extra,
        ],
    )


@pytest.mark.parametrize("fixture", ["tiny_vlm_dir", "tiny_qwen3_vl_dir"])
def test_forward_logps_equal_sampling_logps(fixture, request, tmp_path):
    model_dir = request.getfixturevalue(fixture)
    cfg = _cfg(model_dir, tmp_path)
    model, proc = load_policy(cfg.model)
    from vlmgrpo.data.scenes import SceneDataset

    samples = [SceneDataset(2, seed=3, size=56)[i] for i in range(2)]
    prompts = [build_prompt(s, cfg) for s in samples]
    torch.manual_seed(0)
    batch = hf_rollout.sample(model, proc, prompts, 3, temperature=0.8, max_new_tokens=10, return_logps=True)
    with torch.no_grad():
        logps = LogpModel(model)(batch, 0.8)
    mask = batch.completion_mask.bool()
    assert mask.sum() > 0
    diff = (logps - batch.sample_logps).abs()[mask]
    assert diff.max().item() < 1e-5, diff.max().item()


def test_every_trainable_parameter_changes_after_a_step(tiny_vlm_dir, tmp_path):
    # a reward with spread inside every group (completion length) so every group has a gradient
    cfg = _cfg(tiny_vlm_dir, tmp_path, "rewards=[{name: length}]", "optim.lr=0.01", "optim.max_grad_norm=0")
    tr = Trainer(cfg)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters() if p.requires_grad}
    tr.train_step()
    unchanged = [n for n, p in tr.model.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert not unchanged, f"parameters that did not change: {unchanged[:10]}"
    assert any("visual" in n for n in before)  # the vision tower trains too


def test_lora_trains_only_adapters(tiny_vlm_dir, tmp_path):
    cfg = _cfg(
        tiny_vlm_dir,
        tmp_path,
        "rewards=[{name: length}]",
        "optim.lr=0.01",
        "model.lora.enabled=true",
        "model.lora.r=4",
        "model.lora.alpha=8",
    )
    tr = Trainer(cfg)
    trainable = {n: p.detach().clone() for n, p in tr.model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in tr.model.named_parameters() if not p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    tr.train_step()
    tr.train_step()  # LoRA B starts at zero, so A moves only from the second step on
    assert all(not torch.equal(p, trainable[n]) for n, p in tr.model.named_parameters() if p.requires_grad)
    assert all(torch.equal(p, frozen[n]) for n, p in tr.model.named_parameters() if not p.requires_grad)


@pytest.mark.parametrize("aggregation", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_batch_8_equals_batch_4_times_accumulation_2(tiny_vlm_dir, tmp_path, aggregation):
    """One update on 8 rows equals the update accumulated over two micro-batches of 4 rows, with
    completions of 1-8 tokens (EOS forced per row: with equal lengths the four aggregations would
    be one test). Tolerance: fp32 summation order, rtol 1e-5 / atol 1e-6 on weights of ~0.02-1."""
    from test_reference_step import force_lengths, lengths_for

    results = []
    for micro in (0, 4):
        # Adam with a large eps is ~SGD: the test compares gradients, not Adam's sign-like first step
        cfg = _cfg(
            tiny_vlm_dir,
            tmp_path / str(micro),
            f"optim.micro_batch_seqs={micro}",
            "optim.lr=1.0",
            "optim.eps=1.0",
            "optim.weight_decay=0",
            f"grpo.aggregation={aggregation}",
            "grpo.loss=is",
        )
        torch.manual_seed(0)
        tr = Trainer(cfg)
        before = [p.detach().clone() for p in tr.model.parameters()]
        torch.manual_seed(1)
        samples = [tr.sampler.next() for _ in range(2)]
        batch = tr.rollout([build_prompt(s, cfg) for s in samples])  # 2 prompts x 4 = 8 rows
        assert len(batch) == 8
        tok = hf_rollout.tokenizer_of(tr.proc)
        batch = force_lengths(batch, lengths_for(8), tok, tok.convert_tokens_to_ids("<|im_end|>"))
        assert sorted(batch.completion_mask.sum(1).tolist()) == list(range(1, 9))
        adv = torch.linspace(-1, 1, 8)
        stats = tr.update([batch], [adv])
        assert stats["update/micro_batches"] == (1 if micro == 0 else 2)
        after = [p.detach().clone() for p in tr.model.parameters()]
        assert stats["grad_norm"] > 0 and sum(
            not torch.equal(a, b) for a, b in zip(after, before)
        ) > 0.9 * len(before)
        results.append((after, stats["loss"], batch.completions))
    (p_full, loss_full, c_full), (p_acc, loss_acc, c_acc) = results
    assert c_full == c_acc  # same rollout in both
    assert loss_full == pytest.approx(loss_acc, rel=1e-5, abs=1e-7)
    for a, b in zip(p_full, p_acc):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_grad_accum_over_rollouts_equals_one_big_batch(tiny_vlm_dir, tmp_path):
    """update([b1, b2]) (accumulation over two rollouts) equals update([b1 + b2 rows]), with
    completions of 1-8 tokens (dapo: one token normaliser over both rollouts)."""
    from test_reference_step import force_lengths, lengths_for

    cfg = _cfg(tiny_vlm_dir, tmp_path, "optim.lr=1.0", "optim.eps=1.0", "optim.weight_decay=0")
    torch.manual_seed(0)
    tr = Trainer(cfg)
    batch = tr.rollout([build_prompt(tr.sampler.next(), cfg) for _ in range(2)])
    tok = hf_rollout.tokenizer_of(tr.proc)
    batch = force_lengths(batch, lengths_for(8), tok, tok.convert_tokens_to_ids("<|im_end|>"))
    adv = torch.linspace(-1, 1, 8)
    state = {k: v.clone() for k, v in tr.model.state_dict().items()}
    opt_state = tr.optimizer.state_dict()
    initial = [p.detach().clone() for p in tr.model.parameters()]
    assert tr.update([batch], [adv])["grad_norm"] > 0
    full = [p.detach().clone() for p in tr.model.parameters()]
    assert sum(not torch.equal(a, b) for a, b in zip(full, initial)) > 0.9 * len(full)  # it trained
    tr.model.load_state_dict(state)
    tr.optimizer.load_state_dict(opt_state)
    tr.update([batch.select([0, 1, 2, 3]), batch.select([4, 5, 6, 7])], [adv[:4], adv[4:]])
    for a, b in zip(full, tr.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _raising_reward_file(tmp_path):
    f = tmp_path / "my_rewards.py"
    f.write_text(
        "def flaky(rec, ctx):\n"
        "    if rec.index == 0:\n"
        "        raise RuntimeError('service down')\n"
        "    return float(len(rec.completion))\n"
    )
    return f


def test_reward_that_raises_is_skipped_and_counted(tiny_vlm_dir, tmp_path):
    f = _raising_reward_file(tmp_path)
    cfg = _cfg(
        tiny_vlm_dir, tmp_path / "run", f"rewards=[{{name: '{f}:flaky', label: flaky}}]", "train.steps=2"
    )
    Trainer(cfg).fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    grpo = [r for r in rows if r["phase"] == "grpo" and "reward/flaky/failed" in r]
    assert len(grpo) == 2
    assert all(r["reward/flaky/failed"] == 2 for r in grpo)  # index 0 of each of the 2 groups
    assert all(r["reward/skipped"] == 2 for r in grpo)


def test_run_folder_layout(tiny_vlm_dir, tmp_path):
    cfg = _cfg(
        tiny_vlm_dir,
        tmp_path / "run",
        "train.steps=2",
        "train.eval_every=1",
        "train.save_every=1",
        "train.log_samples_every=1",
        "eval.num_items=4",
        "optim.grad_accum=2",  # fit() accumulating two rollouts per update
    )
    Trainer(cfg).fit()
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["phase"] == "grpo" for r in rows)
    assert rows[1]["update/micro_batches"] == rows[2]["update/micro_batches"] == 2
    for key in (
        "reward/mean",
        "reward/similarity/mean",
        "time/rollout",
        "time/update",
        "eval/similarity/mean",
        "eval/similarity/ceiling",
        "eval/similarity/shuffled",
    ):
        assert key in rows[1], key
    assert (run / "ckpts" / "ckpt-1" / "config.json").is_file()
    assert (run / "ckpts" / "ckpt-2" / "COMPLETE").is_file()
    s = json.loads((run / "samples" / "step-000001" / "samples.json").read_text())
    assert len(s) == 4 and (run / "samples" / "step-000001" / s[0]["regenerated"]).is_file()


def test_samples_folder_is_named_by_the_metrics_step_of_its_rollout(tiny_vlm_dir, tmp_path):
    """`samples/step-N` holds the rollout whose metrics.jsonl row has step N (counted from 1, as
    TensorBoard and W&B count), and the first step is logged. One group per step, so the mean of the
    logged rewards is that row's reward/mean."""
    cfg = _cfg(
        tiny_vlm_dir,
        tmp_path / "run",
        "train.steps=3",
        "train.log_samples_every=2",
        "rollout.prompts_per_step=1",
    )
    Trainer(cfg).fit()
    run = tmp_path / "run"
    rows = {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    assert sorted(rows) == [1, 2, 3]
    dirs = sorted((run / "samples").glob("step-*"))
    assert [int(d.name.split("-")[1]) for d in dirs] == [1, 3]  # the first step, then every 2nd
    for d in dirs:
        got = [e["reward"] for e in json.loads((d / "samples.json").read_text()) if e["reward"] is not None]
        assert got, d
        assert sum(got) / len(got) == pytest.approx(rows[int(d.name.split("-")[1])]["reward/mean"], abs=1e-6)


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "vlmgrpo.cli", *args], capture_output=True, text=True, cwd=cwd
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--recipe", "nope"], "error: unknown recipe 'nope'"),
        (
            ["train", "--recipe", "demo", "--set", "optim.lrr=1"],
            "error: unknown config key 'optim.lrr'; did you mean 'optim.lr'?",
        ),
        (
            ["train", "--recipe", "demo", "--model", "/does/not/exist"],
            "error: /does/not/exist: model folder does not exist",
        ),
    ],
)
def test_cli_bad_input_is_one_line_without_traceback(args, message, tmp_path):
    r = _cli(*args, "--output-dir", str(tmp_path / "run"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(message), r.stderr
    assert "Traceback" not in r.stderr


def test_missing_and_corrupt_images_are_one_line_errors(tmp_path):
    from vlmgrpo.data.images import load_image
    from vlmgrpo.errors import DataError

    with pytest.raises(DataError, match=r"nothere.png: image file not found"):
        load_image(tmp_path / "nothere.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match=r"bad.png: "):
        load_image(bad)


def test_bad_images_in_a_folder_dataset_are_skipped_and_counted(tiny_vlm_dir, tmp_path):
    from PIL import Image

    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (255, 0, 0)).save(img_dir / f"ok{i}.png")
    (img_dir / "broken.png").write_bytes(b"not a png")
    cfg = _cfg(
        tiny_vlm_dir,
        tmp_path / "run",
        "data.dataset=folder",
        f"data.kwargs={{path: {img_dir}}}",
        "data.eval_kwargs={}",
        "rewards=[{name: length}]",
        "train.steps=3",
    )
    Trainer(cfg).fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3
    assert rows[-1]["data/bad_samples"] >= 1


def test_text_prompt_without_images_samples(tiny_text_lm_dir):
    from vlmgrpo.config import ModelConfig

    model, tok = load_policy(ModelConfig(name_or_path=str(tiny_text_lm_dir), text_only=True))
    p = Prompt(messages=[{"role": "user", "content": "Describe a chart."}])
    out = hf_rollout.sample(model, tok, [p], 3, temperature=1.0, max_new_tokens=6)
    assert len(out.completions) == 3 and out.completion_ids.shape[0] == 3


@pytest.mark.parametrize(
    "fixture, lora", [("tiny_vlm_dir", False), ("tiny_qwen3_vl_dir", False), ("tiny_vlm_dir", True)]
)
def test_token_budget_and_shared_vision_equal_the_plain_update(fixture, lora, request, tmp_path):
    """optim.token_budget (length-bucketed, trimmed micro-batches) with optim.share_vision (one tower
    pass per image) gives the plain update's weights, with a fraction of the vision work at G = 4:
    2 passes per image (no-grad, then backward) instead of 1 per row; with LoRA on the language
    model the frozen tower's second pass is skipped."""
    model_dir = request.getfixturevalue(fixture)
    lora_sets = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.dropout=0"] if lora else []
    results = []
    for fast in (False, True):
        extra = ["optim.token_budget=120", "optim.share_vision=true"] if fast else []
        cfg = _cfg(
            model_dir,
            tmp_path / str(fast),
            "optim.lr=1.0",
            "optim.eps=1.0",
            "optim.weight_decay=0",
            *lora_sets,
            *extra,
        )
        torch.manual_seed(0)
        tr = Trainer(cfg)
        before = [p.detach().clone() for p in tr.model.parameters()]
        patches = []
        visual = fastpath._trunk(tr.model).visual
        visual.register_forward_hook(lambda m, args, out, n=patches: n.append(args[0].shape[0]))
        torch.manual_seed(1)
        batch = tr.rollout([build_prompt(tr.sampler.next(), cfg) for _ in range(2)])  # 2 images x 4
        patches.clear()  # count the update's tower work only
        stats = tr.update([batch], [torch.linspace(-1, 1, 8)])
        results.append(([p.detach().clone() for p in tr.model.parameters()], stats, sum(patches)))
        assert any(not torch.equal(a, b) for a, b in zip(results[-1][0], before))  # it trained
    (p_plain, s_plain, v_plain), (p_fast, s_fast, v_fast) = results
    assert s_plain["update/micro_batches"] == 1 and s_fast["update/micro_batches"] > 1
    assert s_plain["grad_norm"] > 0 and s_fast["grad_norm"] > 0
    assert v_fast * (4 if lora else 2) == v_plain
    assert s_fast["loss"] == pytest.approx(s_plain["loss"], rel=1e-5, abs=1e-7)
    for a, b in zip(p_plain, p_fast):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_adamw_fp32_state_is_selectable_and_resumes_with_fp32_moments(tiny_vlm_dir, tmp_path):
    from vlmgrpo.grpo.fastpath import AdamWFP32State

    tr = Trainer(_cfg(tiny_vlm_dir, tmp_path / "run", "optim.optimizer=adamw_fp32_state"))
    assert isinstance(tr.optimizer, AdamWFP32State)
    # bf16 weights: torch's loader would cast the saved fp32 moments to bf16
    p = torch.nn.Parameter(torch.randn(16, 16).to(torch.bfloat16))
    opt = AdamWFP32State([p], lr=1e-3)
    p.grad = torch.randn(16, 16).to(torch.bfloat16)
    opt.step()
    saved = opt.state_dict()
    again = AdamWFP32State([p], lr=1e-3)
    again.load_state_dict(saved)
    for k in ("exp_avg", "exp_avg_sq"):
        assert again.state[p][k].dtype == torch.float32
        assert torch.equal(again.state[p][k], opt.state[p][k])  # no bf16 round trip


def test_negative_token_budget_is_a_config_error(tiny_vlm_dir, tmp_path):
    from vlmgrpo.errors import ConfigError

    with pytest.raises(ConfigError, match=r"optim.token_budget: must be >= 0"):
        _cfg(tiny_vlm_dir, tmp_path, "optim.token_budget=-1")


def test_bf16_weights_get_fp32_moments_and_keep_updates_below_bf16_resolution(tiny_vlm_dir, tmp_path):
    """optim.optimizer auto: bf16 weights train with AdamWFP32State. Adam's first step moves each
    weight by lr x sign(grad); at lr 1e-6 that is far below bf16's spacing (~1e-4 at 0.02), so
    torch's AdamW rounds almost all of it away, while stochastic rounding keeps it on average."""
    from vlmgrpo.grpo.fastpath import AdamWFP32State

    kept = {}
    for opt in ("adamw", "auto"):
        cfg = _cfg(
            tiny_vlm_dir, tmp_path / opt, "model.dtype=bfloat16", "optim.lr=1e-6", f"optim.optimizer={opt}"
        )
        cfg.optim.weight_decay = 0.0
        torch.manual_seed(0)
        tr = Trainer(cfg)
        assert isinstance(tr.optimizer, AdamWFP32State) == (opt == "auto")
        w = tr.model.lm_head.weight
        before, grads = w.detach().float().clone(), []
        w.register_post_accumulate_grad_hook(lambda p, g=grads: g.append(p.grad.detach().float().clone()))
        torch.manual_seed(1)
        batch = tr.rollout([build_prompt(tr.sampler.next(), cfg) for _ in range(2)])
        tr.update([batch], [torch.linspace(-1, 1, 8)])
        moved = w.detach().float() - before
        g = grads[-1]
        # the share of the intended step -lr x sign(g) that reached the weights
        kept[opt] = ((moved * -g.sign()).sum() / (1e-6 * (g != 0).sum())).item()
    assert kept["adamw"] < 0.1, kept
    assert 0.7 < kept["auto"] < 1.3, kept
