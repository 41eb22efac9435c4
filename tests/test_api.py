"""The TRL-compatible Python API (`from vlmgrpo import GRPOConfig, GRPOTrainer`): TRL's VLM example
run offline with only its import changed, the field mapping and its errors, TRL's dataset and
reward conventions, and a loaded model with a peft LoRA config and mixed TRL + native rewards."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmgrpo import GRPOConfig, GRPOTrainer
from vlmgrpo.api import MAPPING, UNSUPPORTED
from vlmgrpo.errors import ConfigError
from vlmgrpo.rewards.base import RewardContext, RewardRecord, RewardSpec, compute_rewards
from vlmgrpo.rewards.trl_compat import call_arguments, trl_spec

ROOT = Path(__file__).resolve().parents[1]
datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def cli_tiny_dir(tmp_path_factory):
    """A tiny Qwen2.5-VL built by the `vlmgrpo tiny-model` command, as a user would."""
    out = tmp_path_factory.mktemp("cli-tiny") / "tiny"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    built = subprocess.run(
        [sys.executable, "-m", "vlmgrpo.cli", "tiny-model", "--arch", "qwen2_5_vl", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    return out


@pytest.mark.parametrize("lora", [False, True], ids=["full", "peft"])
def test_trl_vlm_example_trains_offline_and_saves_a_plain_hf_folder(cli_tiny_dir, tmp_path, lora):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    script = ROOT / "examples" / "grpo_vlm_offline.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(cli_tiny_dir), str(out), *(["--peft"] if lora else [])],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = script.read_text()
    assert "from vlmgrpo import GRPOConfig, GRPOTrainer" in text
    assert "from trl.rewards import think_format_reward" in text
    for step in (1, 2):
        assert (out / "ckpts" / f"ckpt-{step}" / "COMPLETE").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    # the real think_format_reward scored every completion; accuracy may be None (not parseable)
    assert all(r["reward/trl/think_format_reward/mean"] is not None for r in rows)
    assert all("reward/trl/accuracy_reward/mean" in r for r in rows)
    samples = json.loads((out / "samples" / "step-000001" / "samples.json").read_text())
    assert samples and samples[0]["prompt"] == "How many blue squares are in the picture?"
    # save_model's folder loads in plain transformers (an adapter through transformers' peft
    # integration) and holds the final checkpoint's weights
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(out)
    AutoProcessor.from_pretrained(out)
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    assert (out / name).is_file()
    final, saved = load_file(str(out / "ckpts" / "ckpt-2" / name)), load_file(str(out / name))
    assert final.keys() == saved.keys() and all(torch.equal(final[k], saved[k]) for k in final)
    params = dict(model.named_parameters())
    assert any("lora_" in n for n in params) == lora


def test_unsupported_trl_field_is_one_error_naming_it():
    GRPOConfig(use_vllm=False, dataloader_num_workers=0)  # TRL defaults: fine
    with pytest.raises(ConfigError, match=r"GRPOConfig\.use_vllm=True: not supported"):
        GRPOConfig(use_vllm=True)
    with pytest.raises(ConfigError, match=r"sync_ref_model=True"):
        GRPOConfig(sync_ref_model=True)
    with pytest.raises(ConfigError, match=r"unknown field 'lerning_rate'; did you mean 'learning_rate'"):
        GRPOConfig(lerning_rate=1e-5)
    args = GRPOConfig()
    args.loss_type = "sapo"  # set after construction: still caught
    with pytest.raises(ConfigError, match=r"loss_type='sapo'"):
        args.to_config(n_rows=10)
    args = GRPOConfig()
    args.use_vllm = True
    with pytest.raises(ConfigError, match=r"use_vllm=True"):
        args.to_config(n_rows=10)
    assert GRPOConfig().eval_strategy == "no" and GRPOConfig().push_to_hub is False


def test_every_trl_field_is_mapped_or_listed_with_trls_default():
    trl = pytest.importorskip("trl")
    for f in dataclasses.fields(trl.GRPOConfig):
        if not f.init:
            continue
        assert f.name in MAPPING or f.name in UNSUPPORTED, f.name
        if f.name in UNSUPPORTED:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert UNSUPPORTED[f.name] == default, f.name


def test_batch_sizes_mean_what_they_mean_in_trl():
    # 4 completions per device per micro-batch, 2 micro-batches, 2 processes: 16 completions
    # per optimizer step = 4 prompts x 4 generations, forward/backward 4 rows at a time
    cfg = GRPOConfig(
        per_device_train_batch_size=4, gradient_accumulation_steps=2, num_generations=4
    ).to_config(n_rows=40, world=2)
    assert cfg.rollout.prompts_per_step * cfg.rollout.group_size * cfg.optim.grad_accum == 16
    assert cfg.optim.micro_batch_seqs == 4
    assert cfg.train.steps == math.ceil(3.0 * 40 / 4)  # num_train_epochs 3 over 40 prompts
    with pytest.raises(ConfigError, match=r"must be a multiple of num_generations"):
        GRPOConfig(per_device_train_batch_size=3, num_generations=2).to_config(n_rows=10)
    c = GRPOConfig(
        loss_type="dr_grpo", epsilon=0.1, epsilon_high=0.3, beta=0.04, scale_rewards=False
    ).to_config(n_rows=8)
    assert (c.grpo.aggregation, c.grpo.clip_low, c.grpo.clip_high) == ("dr_grpo", 0.1, 0.3)
    assert (c.grpo.adv_scale, c.grpo.ref.kind, c.grpo.loss) == ("none", "copy", "ppo")


def test_trl_step_counts_are_optimizer_steps_with_num_iterations():
    """TRL's max_steps (and save/eval/logging/warmup steps) count optimizer steps, num_iterations of
    them per generation: max_steps=100 with num_iterations=2 is 50 rollouts of 2 updates each (100
    updates), not 100 rollouts and 200 updates. Epochs already count rollouts (TRL repeats each
    generation batch num_iterations times within the epoch)."""
    kw = dict(max_steps=100, save_steps=20, eval_strategy="steps", eval_steps=10, logging_steps=5)
    kw.update(log_completions=True, warmup_steps=8, beta=0.0)
    c = GRPOConfig(num_iterations=2, **kw).to_config(n_rows=None, world=1)
    assert (c.train.steps, c.grpo.num_iterations) == (50, 2)
    assert (c.train.save_every, c.train.eval_every, c.train.log_samples_every) == (10, 5, 3)
    assert c.optim.warmup_steps == 4
    one = GRPOConfig(**kw).to_config(n_rows=None, world=1)  # num_iterations 1: unchanged
    assert (one.train.steps, one.train.save_every, one.train.eval_every, one.optim.warmup_steps) == (
        100,
        20,
        10,
        8,
    )
    by_epochs = GRPOConfig(num_iterations=2, num_train_epochs=3).to_config(n_rows=40, world=1)
    assert by_epochs.train.steps == math.ceil(3.0 * 40 / by_epochs.rollout.prompts_per_step)


def _image(color="red"):
    return Image.new("RGB", (32, 24), color)


def test_dataset_conventions_image_slot_and_columns():
    from vlmgrpo.data.hf import MESSAGES_KEY, wrap

    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what colour?"}]
    placed = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}]
    # (two sets: Arrow stores string and list message contents in different columns)
    s0 = wrap(datasets.Dataset.from_dict({"prompt": [chat], "image": [_image()], "answer": ["red"]}))[0]
    s1 = wrap(datasets.Dataset.from_dict({"prompt": [placed], "image": [_image("blue")]}))[0]
    # no placeholder: one image slot first in the first user message, text kept after it
    assert s0[MESSAGES_KEY][1]["content"] == [{"type": "image"}, {"type": "text", "text": "what colour?"}]
    assert s0[MESSAGES_KEY][0] == {"role": "system", "content": "be brief"}
    assert s1[MESSAGES_KEY][0]["content"][1] == {"type": "image"}  # placed by the user: unchanged
    assert len(s1[MESSAGES_KEY][0]["content"]) == 2
    assert s0["answer"] == "red" and s0["images"][0].size == (32, 24)
    strings = wrap(datasets.Dataset.from_dict({"prompt": ["hi"], "images": [[_image(), _image()]]}))
    assert [c["type"] for c in strings[0][MESSAGES_KEY][0]["content"]] == ["image", "image", "text"]
    stream = wrap(
        datasets.Dataset.from_dict(
            {"prompt": ["x", "y"], "image": [_image(), _image()]}
        ).to_iterable_dataset()
    )
    import numpy as np

    rng = np.random.default_rng(0)
    assert {stream.sample(rng)["prompt"] for _ in range(4)} == {"x", "y"}


def _records(prompt, completions, answer):
    return [
        RewardRecord(
            prompt="q",
            completion=c,
            images=[],
            sample={"prompt": prompt, "answer": answer, "id": "0", "images": []},
            group=0,
            index=i,
            extras={"completion_ids": [i, i + 1]},
        )
        for i, c in enumerate(completions)
    ]


def test_a_recipe_time_bound_on_a_trl_reward_is_an_error_not_ignored(tmp_path):
    """`timeout_s` on a recipe entry whose function has TRL's signature: TRL functions run together,
    in-process, so the bound cannot apply; it was silently dropped (an unbounded judge the recipe
    says is bounded). Now one line naming the entry."""
    from vlmgrpo.config import RewardEntry
    from vlmgrpo.rewards.trl_compat import specs_from_entries

    f = tmp_path / "judge.py"
    f.write_text("def judge(completions, **kw):\n    return [1.0 for _ in completions]\n")
    with pytest.raises(ConfigError, match=r"rewards\[1\]\.timeout_s: .*judge.py:judge has TRL's signature"):
        specs_from_entries([RewardEntry(name="length"), RewardEntry(name=f"{f}:judge", timeout_s=30.0)])
    specs = specs_from_entries([RewardEntry(name="length"), RewardEntry(name=f"{f}:judge")])
    assert [s.key for s in specs] == ["length", "trl"]


def _brevity(completions, **kwargs):
    return [-len(c) / 100 for c in completions]


def test_api_rewards_go_through_the_recipe_path_and_config_yaml_names_each_function(tmp_path):
    """The API's reward list becomes recipe entries and then specs through the one function a
    recipe uses (`specs_from_entries`). config.yaml records each TRL function by name (it used to
    record every one as 'trl', so the report titled a run 'trl + trl'), and a 'file.py:fn' string
    as given, so the record resolves again."""
    from vlmgrpo.api import _reward_specs
    from vlmgrpo.report.rundata import RunData

    f = tmp_path / "judge.py"
    f.write_text("def judge(completions, **kw):\n    return [1.0 for _ in completions]\n")
    specs, entries = _reward_specs([_brevity, "length", f"{f}:judge"], [1.0, 0.5, 2.0])
    assert [(e.name, e.label, e.weight) for e in entries] == [
        (f"{__name__}:_brevity", "_brevity", 1.0),
        ("length", "", 0.5),
        (f"{f}:judge", "", 2.0),
    ]
    assert [s.key for s in specs] == ["trl", "length"]
    assert specs[0].kwargs["funcs"][0][1] is _brevity
    assert [(n, w) for n, _, w, _ in specs[0].kwargs["funcs"]] == [("_brevity", 1.0), ("judge", 2.0)]
    run = RunData(tmp_path, "run", config={"rewards": [dataclasses.asdict(e) for e in entries]})
    assert run.reward_title() == f"_brevity + length + {f}:judge"


def test_a_trl_reward_that_raises_stops_the_run_naming_it_a_time_out_is_none():
    """A TRL function that raises failed on the whole batch: a bug (here a misspelled column) that
    TRL's trainer would stop on. It stops the run with one line naming the function and the
    exception, as a native batched reward does; it used to count as None (a warning each step, and
    every update skipped until the run's end). A TimeoutError stays None: the other function scores."""
    from vlmgrpo.rewards.base import RewardError

    def typo(completions, anwser, **kwargs):
        return [1.0 for _ in completions]

    def slow(completions, **kwargs):
        raise TimeoutError("judge did not answer in 30 s")

    def length(completions, **kwargs):
        return [float(len(c)) for c in completions]

    recs = _records("colour?", ["red", "blue"], "red")
    with pytest.raises(RewardError, match=r"TRL reward typo raised TypeError: .*anwser"):
        compute_rewards(
            recs, [trl_spec([("typo", typo, 1.0, {}), ("length", length, 1.0, {})])], RewardContext()
        )
    res = compute_rewards(
        recs, [trl_spec([("slow", slow, 1.0, {}), ("length", length, 1.0, {})])], RewardContext()
    )
    assert res.per_reward["trl"].tolist() == [3.0, 4.0]


def test_a_trl_reward_type_error_says_what_it_was_given():
    """README's accuracy reward reads c[0]["content"]: on a dataset of string prompts TRL (and we)
    pass string completions, and the line was only "string indices must be integers"; a missing
    column said only which argument was missing. Both now name the columns and the completions' form."""
    from vlmgrpo.rewards.base import RewardError

    def accuracy(completions, answer, **kwargs):
        return [float(a in c[0]["content"]) for c, a in zip(completions, answer)]

    def wants_solution(completions, solution, **kwargs):
        return [0.0 for _ in completions]

    recs = _records("colour?", ["red", "blue"], "red")  # a string prompt
    specs = [trl_spec([("accuracy", accuracy, 1.0, {})])]
    with pytest.raises(
        RewardError, match=r"string indices.*completions are strings \(string prompts; a conversation"
    ):
        compute_rewards(recs, specs, RewardContext())
    with pytest.raises(
        RewardError, match=r"'solution'; completions are strings .*; dataset columns: answer, id, images$"
    ):
        compute_rewards(recs, [trl_spec([("wants_solution", wants_solution, 1.0, {})])], RewardContext())
    chat = _records([{"role": "user", "content": "colour?"}], ["red", "blue"], "red")
    assert compute_rewards(chat, specs, RewardContext()).per_reward["trl"].tolist() == [1.0, 0.0]


def test_trl_rewards_get_trl_arguments_none_async_and_mix_with_native():
    seen = {}

    def exact(prompts, completions, completion_ids, answer, **kwargs):
        seen.update(prompts=prompts, completions=completions, ids=completion_ids, answer=answer, kw=kwargs)
        return [1.0 if c[0]["content"] == a else None for c, a in zip(completions, answer)]

    async def slow_len(completions, **kwargs):
        await asyncio.sleep(0)
        return [float(len(c[0]["content"])) for c in completions]

    chat = [{"role": "user", "content": "colour?"}]
    recs = _records(chat, ["red", "blue"], "red")
    spec = trl_spec([("exact", exact, 2.0, {}), ("slow_len", slow_len, 0.5, {})])
    res = compute_rewards(recs, [spec, RewardSpec("length", 1.0)], RewardContext())
    assert seen["prompts"] == [chat, chat]
    assert seen["completions"][1] == [{"role": "assistant", "content": "blue"}]
    assert seen["ids"] == [[0, 1], [1, 2]] and seen["answer"] == ["red", "red"]
    assert "images" in seen["kw"] and "id" in seen["kw"]
    # TRL's rule inside the TRL group: None is absent, the other function still counts
    assert res.per_reward["trl"].tolist() == [2.0 * 1.0 + 0.5 * 3, 0.5 * 4]
    assert res.sub_scores["trl/slow_len"].tolist() == [3.0, 4.0]
    assert math.isnan(res.sub_scores["trl/exact"][1])
    assert "length" in res.per_reward  # the native reward adds to the total
    # every TRL function None: the sample is skipped
    none = trl_spec([("never", lambda completions, **k: [None] * len(completions), 1.0, {})])
    assert all(math.isnan(v) for v in compute_rewards(recs, [none], RewardContext()).total)

    # TRL's extras: trainer_state, log_extra (into the records), log_metric (a logged mean)
    def shaped(completions, trainer_state, log_extra, log_metric, **kwargs):
        log_extra("judge_note", [f"n{i}" for i in range(len(completions))])
        log_metric("progress", trainer_state.global_step / 10)
        return [1.0] * len(completions)

    res = compute_rewards(recs, [trl_spec([("shaped", shaped, 1.0, {})])], RewardContext(step=3))
    assert res.sub_scores["trl/progress"].tolist() == [0.3, 0.3]
    assert [r.extras["judge_note"] for r in recs] == ["n0", "n1"]
    # standard (string) prompts: string completions
    args = call_arguments(_records("plain", ["a"], "a"))
    assert args["completions"] == ["a"] and args["prompts"] == ["plain"]


def test_loaded_model_with_peft_lora_and_mixed_rewards_trains(tiny_vlm_dir, tmp_path):
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    proc = AutoProcessor.from_pretrained(tiny_vlm_dir)
    ds = datasets.Dataset.from_dict({"prompt": ["describe", "name it"], "image": [_image(), _image("green")]})

    def longer(completions, **kwargs):  # spread inside every group: every group has a gradient
        return [len(c) / 10 for c in completions]  # string prompts: string completions

    args = GRPOConfig(
        output_dir=str(tmp_path / "run"),
        learning_rate=0.01,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=1,
        max_grad_norm=0.0,
        use_cpu=True,
        reward_weights=[1.0, 0.5],
    )
    with pytest.raises(ConfigError, match=r"peft_config\.use_dora=True"):
        GRPOTrainer(model, [longer], args=args, train_dataset=ds, peft_config=LoraConfig(use_dora=True))
    tr = GRPOTrainer(
        model,
        [longer, "length"],
        args=args,
        train_dataset=ds,
        processing_class=proc,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters() if p.requires_grad}
    assert before and all("lora" in n for n in before)
    out = tr.train()
    assert out.global_step == 1
    changed = [n for n, p in tr.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["reward/trl/longer/mean"] is not None and row["reward/length/mean"] is not None
    saved = tr.save_model(str(tmp_path / "saved"))
    assert (saved / "adapter_config.json").is_file()


def test_resume_from_checkpoint_continues_the_run(tiny_vlm_dir, tmp_path):
    ds = datasets.Dataset.from_dict(
        {"prompt": ["a", "b", "c"], "image": [_image(), _image("blue"), _image("gray")]}
    )

    def longer(completions, **kwargs):
        return [len(c) / 10 for c in completions]

    def args(steps):
        return GRPOConfig(
            output_dir=str(tmp_path / "run"),
            per_device_train_batch_size=2,
            num_generations=2,
            max_completion_length=6,
            max_steps=steps,
            save_steps=1,
            use_cpu=True,
            learning_rate=1e-3,
        )

    GRPOTrainer(str(tiny_vlm_dir), longer, args=args(1), train_dataset=ds).train()
    full = GRPOTrainer(str(tiny_vlm_dir), longer, args=args(2), train_dataset=ds)
    out = full.train(resume_from_checkpoint=True)
    assert out.global_step == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # step 1 from the first run, step 2 resumed
    assert (tmp_path / "run" / "ckpts" / "ckpt-2" / "COMPLETE").is_file()
    with pytest.raises(ConfigError, match=r"needs an eval_dataset"):
        GRPOTrainer(
            str(tiny_vlm_dir), longer, args=GRPOConfig(eval_strategy="steps", max_steps=1), train_dataset=ds
        )
    with pytest.raises(ConfigError, match=r"no 'completions' parameter"):
        GRPOTrainer(str(tiny_vlm_dir), lambda rec, ctx: 1.0, args=args(1), train_dataset=ds)


def test_a_second_train_into_one_output_dir_keeps_the_first_runs_checkpoints(tiny_vlm_dir, tmp_path):
    """Bug: running a TRL script twice (train() with no resume into the same output_dir) moved the
    first run's metrics aside but wrote its ckpt-N over the first run's (rmtree), and its samples."""
    import hashlib

    ds = datasets.Dataset.from_dict({"prompt": ["a", "b"], "image": [_image(), _image("blue")]})

    def longer(completions, **kwargs):
        return [len(c) / 10 for c in completions]

    run = tmp_path / "run"
    args = GRPOConfig(output_dir=str(run), per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=4, max_steps=1, save_steps=1, use_cpu=True, learning_rate=1e-2,
                      log_completions=True, logging_steps=1, report_to="none")  # fmt: skip

    def digest(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    GRPOTrainer(str(tiny_vlm_dir), longer, args=args, train_dataset=ds).train()
    first = digest(run / "ckpts" / "ckpt-1" / "trainer_state.pt")
    first_samples = (run / "samples" / "step-000001" / "samples.json").read_text()
    GRPOTrainer(str(tiny_vlm_dir), longer, args=args, train_dataset=ds).train()
    assert digest(run / "ckpts" / "prev" / "ckpt-1" / "trainer_state.pt") == first
    assert (run / "ckpts" / "ckpt-1" / "COMPLETE").is_file()  # the second run's own
    assert (run / "samples.prev" / "step-000001" / "samples.json").read_text() == first_samples
    assert (run / "metrics.prev.jsonl").is_file()
    from vlmgrpo.checkpoint import list_checkpoints

    assert [c.name for c in list_checkpoints(run / "ckpts")] == ["ckpt-1"]  # prev/ is not one


def test_global_step_counts_optimizer_steps_as_in_trl(tiny_vlm_dir, tmp_path):
    """TRL's `global_step` (train()'s TrainOutput and the rewards' trainer_state) counts optimizer
    steps; with num_iterations=2 each rollout makes 2 of them. It counted rollouts: max_steps=4
    returned global_step 2, and a reward saw max_steps 2 where TRL passes 4."""
    ds = datasets.Dataset.from_dict({"prompt": ["a", "b"], "image": [_image(), _image("blue")]})
    seen = []

    def longer(completions, trainer_state, **kwargs):
        seen.append((trainer_state.global_step, trainer_state.max_steps))
        return [len(c) / 10 for c in completions]

    args = GRPOConfig(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=4,
        max_steps=4,
        num_iterations=2,
        beta=0.0,
        use_cpu=True,
    )
    out = GRPOTrainer(str(tiny_vlm_dir), longer, args=args, train_dataset=ds).train()
    assert out.global_step == 4  # 2 rollouts x 2 updates
    assert seen == [(0, 4), (2, 4)]


def test_max_prompt_length_skips_longer_prompts_never_truncates(tiny_vlm_dir, tmp_path):
    from transformers import AutoProcessor

    from vlmgrpo.api import prompt_length
    from vlmgrpo.data.hf import wrap

    ds = datasets.Dataset.from_dict(
        {"prompt": ["short", "a much longer prompt " * 8], "image": [_image(), _image()]}
    )
    args = GRPOConfig(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=4,
        max_steps=2,
        save_strategy="no",
        log_completions=True,
        logging_steps=1,
        use_cpu=True,
    )
    cfg = args.to_config(n_rows=2)
    proc = AutoProcessor.from_pretrained(tiny_vlm_dir)
    short, long = (prompt_length(proc, wrap(ds)[i], cfg) for i in range(2))
    assert short < long
    args.max_prompt_length = short  # the long prompt is over the limit: skipped and counted
    tr = GRPOTrainer(
        str(tiny_vlm_dir),
        lambda completions, **kw: [len(c) for c in completions],
        args=args,
        train_dataset=ds,
    )
    tr.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["data/bad_samples"] >= 1
    samples = json.loads((tmp_path / "run" / "samples" / "step-000002" / "samples.json").read_text())
    assert {s["prompt"] for s in samples} == {"short"}  # the prompt the policy saw was never cut


def test_model_init_kwargs_reach_from_pretrained_and_the_config_record():
    args = GRPOConfig(
        model_init_kwargs={"dtype": torch.bfloat16, "revision": "main", "device_map": {"": "cpu"}}
    )
    cfg = args.to_config(n_rows=8)
    assert cfg.model.dtype == "bfloat16"
    assert args.init_kwargs() == {"revision": "main", "device_map": {"": "cpu"}}
    assert cfg.extra["model_init_kwargs"] == {"revision": "main", "device_map": "{'': 'cpu'}"}  # YAML-safe
    auto = GRPOConfig(model_init_kwargs={"torch_dtype": "auto", "attn_implementation": "eager"})
    assert (
        auto.init_kwargs() == {"dtype": "auto"}
        and auto.to_config(n_rows=8).model.attn_implementation == "eager"
    )


def test_importing_the_api_stays_cheap():
    code = (
        "import sys; from vlmgrpo import GRPOConfig, GRPOTrainer; "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'trl') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_readme_table_is_the_mapping():
    readme = (ROOT / "README.md").read_text()
    for field, where in MAPPING.items():
        assert f"| `{field}` | {where} |" in readme, field


def test_trl_variant_fields_map_where_the_schema_has_them_else_error():
    from vlmgrpo.trl_config import VARIANTS, mapped_variants

    mapped = mapped_variants()
    values = {
        "num_iterations": 2,
        "importance_sampling_level": "sequence",
        "mask_truncated_completions": True,
        "top_entropy_quantile": 0.2,
        "delta": 2.0,
        "use_bias_correction_kl": False,
    }
    assert set(values) == set(VARIANTS)
    for name, value in values.items():
        if name in mapped:
            cfg = GRPOConfig(**{name: value}).to_config(n_rows=8)
            native, convert = mapped[name]
            assert getattr(cfg.grpo, native) == convert(value), name
        else:  # this schema lacks the variant: one error naming the TRL field
            with pytest.raises(ConfigError, match=rf"GRPOConfig\.{name}="):
                GRPOConfig(**{name: value})
