"""Geometry3K task: data (parquet in the HF schema, InterGPS folders, error paths), the four
rewards, the Vision-SR1 blind pass on a tiny real Qwen2.5-VL (text-only, checked at the token
level), the evaluation helper, and exact resume of the geometry3k recipe with LoRA."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from vlmgrpo.config import RewardEntry, load_config
from vlmgrpo.data import build_dataset
from vlmgrpo.errors import DataError
from vlmgrpo.rewards import RewardContext, RewardRecord, RewardSpec, compute_rewards
from vlmgrpo.rewards import geometry as geo

try:
    import pyarrow  # noqa: F401

    HAS_PYARROW = True
except ImportError:
    HAS_PYARROW = False

ANSWER = "3"
PREFILL_CORRECT = (
    "<scan>Triangle ABC, side AB labeled 3.</scan><think>The diagram shows x = 3.</think><answer>3</answer>"
)


def _png(i: int = 0, size: int = 56) -> bytes:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    d.polygon([(4, size - 4), (size - 4, size - 4), (4 + i % 20, 6)], outline="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _records(n: int = 4, choices: list[str] | None = None) -> list[dict]:
    return [
        {
            "images": [{"bytes": _png(i), "path": f"{i}.png"}],
            "problem": f"<image>Find x. Triangle {i}.",
            "answer": ANSWER,
            "choices": choices or ["3", "5", "7", "9"],
        }
        for i in range(n)
    ]


def write_parquet(
    root: Path, split: str, records: list[dict], shard: int = 0, raw_bytes: bool = False
) -> Path:
    """A parquet file in hiyouga/geometry3k's schema (images: list<struct<bytes, path>>), or with
    images as plain binary (`raw_bytes`), as other exports store them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.binary() if raw_bytes else pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema(
        [
            ("images", pa.list_(image)),
            ("problem", pa.string()),
            ("answer", pa.string()),
            ("choices", pa.list_(pa.string())),
        ]
    )
    (root / "data").mkdir(parents=True, exist_ok=True)
    path = root / "data" / f"{split}-{shard:05d}-of-00002.parquet"
    pq.write_table(pa.Table.from_pylist(records, schema=schema), path)
    return path


def write_intergps(root: Path, split: str, n: int, answer_letter: str = "A") -> Path:
    """InterGPS layout: <split>/<id>/data.json + img_diagram.png; answer is a choice letter."""
    for i in range(n):
        d = root / split / str(i)
        d.mkdir(parents=True)
        data = {"id": i, "problem_text": f"Find x. Triangle {i}.", "choices": ["3", "5", "7", "9"]}
        data["answer"] = answer_letter
        (d / "data.json").write_text(json.dumps(data))
        (d / "img_diagram.png").write_bytes(_png(i))
    return root


def _data_root(tmp_path: Path, layout: str, n: int = 4) -> Path:
    root = tmp_path / f"g3k-{layout}"
    for split in ("train", "test"):
        if layout == "parquet":
            write_parquet(root, split, _records(n))
        else:
            write_intergps(root, "val" if split == "validation" else split, n)
    return root


# ------------------------------------------------------------------------------------------ data


@pytest.mark.skipif(not HAS_PYARROW, reason="pyarrow not installed: parquet cannot be written or read")
def test_parquet_in_the_hf_schema(tmp_path):
    recs = _records(3)
    recs.append({"images": [{"bytes": _png(1), "path": None}], "problem": "<image>No answer", "answer": ""})
    recs.append({"images": [], "problem": "<image>No image", "answer": "4", "choices": None})
    recs.append({"images": [{"bytes": None, "path": None}], "problem": "<image>Empty", "answer": "4"})
    write_parquet(tmp_path, "train", recs)
    raw = [{"images": [_png(9)], "problem": "<image>Raw bytes.", "answer": "5", "choices": None}]
    write_parquet(tmp_path, "train", raw, shard=1, raw_bytes=True)
    ds = build_dataset("geometry3k", {"path": str(tmp_path), "max_side": 32}, "train", 0)
    assert len(ds) == 4 and ds.dropped == 3
    s = ds[0]
    assert s["question"] == "Find x. Triangle 0." and s["problem"].startswith("<image>")
    assert s["answer"] == "3" and s["choices"] == ["3", "5", "7", "9"]
    assert s["choices_text"].startswith("A. 3\nB. 5")
    assert s["images"][0].mode == "RGB" and max(s["images"][0].size) == 32
    assert ds[3]["choices"] is None and max(ds[3]["images"][0].size) == 32
    assert len({ds[i]["id"] for i in range(len(ds))}) == 4


def test_intergps_layout(tmp_path):
    write_intergps(tmp_path, "val", 3, answer_letter="B")
    (tmp_path / "val" / "2" / "img_diagram.png").unlink()  # no image: dropped
    ds = build_dataset("geometry3k", {"path": str(tmp_path)}, "validation", 0)
    assert len(ds) == 2 and ds.dropped == 1
    s = ds[1]
    assert s["answer"] == "5" and s["answer_letter"] == "B" and s["question"] == "Find x. Triangle 1."
    assert s["images"][0].size == (56, 56)
    forced = build_dataset("geometry3k", {"path": str(tmp_path), "split": "val", "limit": 1}, "train", 0)
    assert len(forced) == 1 and forced.split == "validation"


def test_data_error_paths(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="Geometry3K folder not found"):
        build_dataset("geometry3k", {"path": str(tmp_path / "nope")}, "train", 0)
    with pytest.raises(DataError, match="no parquet files for split 'test'"):
        build_dataset("geometry3k", {"path": str(tmp_path)}, "test", 0)
    with pytest.raises(DataError, match="unknown split 'dev'"):
        build_dataset("geometry3k", {"path": str(tmp_path)}, "dev", 0)
    (tmp_path / "train-00000-of-00001.parquet").write_bytes(b"not parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match="reading parquet needs pyarrow"):
        build_dataset("geometry3k", {"path": str(tmp_path)}, "train", 0)


def test_hub_errors_are_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"loading 'hiyouga/geometry3k' needs the datasets package"):
        build_dataset("geometry3k", {}, "train", 0)
    fake = types.ModuleType("datasets")

    def offline(*a, **k):
        raise ConnectionError(
            "Couldn't reach 'hiyouga/geometry3k' on the Hub (LocalEntryNotFoundError)\nmore"
        )

    fake.load_dataset = offline  # type: ignore[attr-defined]
    fake.config = types.SimpleNamespace(HF_HUB_OFFLINE=False)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(
        DataError, match=r"cannot load 'hiyouga/geometry3k' split 'test' \(Couldn't reach"
    ) as e:
        build_dataset("geometry3k", {"hf_id": "hiyouga/geometry3k"}, "test", 0)
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------- rewards


def _rec(completion: str, answer: str = ANSWER, choices: list[str] | None = None, **kw) -> RewardRecord:
    sample = {"id": "s", "question": "Find x.", "answer": answer, "choices": choices}
    return RewardRecord(prompt="Find x.", completion=completion, images=[], sample=sample, **kw)


FULL = "<scan>a triangle</scan><think>x is 3</think><answer>3</answer>"


@pytest.mark.parametrize(
    "text,layout",
    [
        (FULL, "scan_think_answer"),
        ("<think>x is 3</think>\n<answer>3</answer>", "think_answer"),
        ("<answer>3</answer>", "answer"),
        ("<think>x</think>", "none"),
        ("<think>x is 3<answer>3</answer>", "answer"),  # think never closed
        ("<answer>3</answer><think>late</think>", "answer"),  # think after the answer
        ("<think>a</think><answer>3</answer><answer>5</answer>", "none"),  # two answers
        ("<think>a</think><scan>late</scan><answer>3</answer>", "think_answer"),
        ("<think>a</think><answer> </answer>", "none"),
    ],
)
def test_format_layouts(text, layout):
    assert geo.structure(text) == layout


def test_format_tiers_and_seed_preset():
    texts = [FULL, "<think>t</think><answer>3</answer>", "<answer>3</answer>", "3"]
    assert [geo.format_reward(_rec(t), RewardContext()) for t in texts] == [1.0, 1.0, 0.0, 0.0]
    seed = load_config("geometry3k-seed-weights")
    kw = next(r.kwargs for r in seed.rewards if r.name == "geometry_format")
    assert [geo.format_reward(_rec(t), RewardContext(), **kw) for t in texts] == [0.1, 0.08, 0.02, 0.0]


def test_accuracy_reward_and_letters():
    ctx = RewardContext()
    assert geo.accuracy_reward(_rec(FULL), ctx) == {"score": 1.0, "extracted": 1.0}
    assert geo.accuracy_reward(_rec("<answer>5</answer>"), ctx)["score"] == 0.0
    assert geo.accuracy_reward(_rec("<think>so</think> \\boxed{3}"), ctx)["score"] == 1.0
    assert geo.accuracy_reward(_rec("<think>so</think> \\boxed{3}"), ctx, lenient=False)["score"] == 0.0
    letter = _rec("<answer>A</answer>", choices=["3", "5", "7", "9"])
    assert geo.accuracy_reward(letter, ctx)["score"] == 0.0  # the prompt did not show choices
    assert geo.accuracy_reward(letter, ctx, use_choices=True)["score"] == 1.0
    assert geo.accuracy_reward(_rec("nothing"), ctx, wrong=-1.0) == {"score": -1.0, "extracted": 0.0}


def test_grounding_is_weighted_capped_and_only_when_correct():
    ctx = RewardContext()
    text = "<think>In the diagram, angle ABC and the triangle's side are marked.</think><answer>3</answer>"
    # diagram 2 + marked 2 + angle 1 + triangle 1 + side 0.5 = 6.5 points
    assert geo.grounding_score(text) == 6.5
    assert geo.grounding_reward(_rec(text), ctx) == pytest.approx(0.65)
    assert geo.grounding_reward(_rec(text), ctx, per_point=0.02, cap=0.2) == pytest.approx(0.13)
    many = text.replace("marked", "marked, with a circle, radius, chord, tangent, arc and parallel lines")
    assert geo.grounding_reward(_rec(many), ctx, per_point=0.02, cap=0.2) == pytest.approx(0.2)
    assert geo.grounding_reward(_rec(text.replace(">3<", ">4<")), ctx) == 0.0
    assert geo.grounding_reward(_rec(text.replace(">3<", ">4<")), ctx, only_when_correct=False) > 0
    assert geo.grounding_score("angle angle angle angle") == 1.0  # repetition earns nothing


class ScriptedPolicy:
    """A policy handle that answers from a script and records what it was asked."""

    def __init__(self, answers: list[str]) -> None:
        self.answers, self.calls = answers, []

    def generate(self, messages, images=None, **kw):
        self.calls.append((messages, images, kw))
        return self.answers[: len(messages)]


def test_blind_pass_scores_and_batches():
    recs = [
        _rec(FULL, group=0, index=0),  # correct + scan: blind correct
        _rec(FULL.replace("a triangle", "two lines"), group=0, index=1),  # correct + scan: blind wrong
        _rec(FULL.replace(">3<", ">4<"), group=1, index=0),  # wrong: no blind pass
        _rec("<think>t</think><answer>3</answer>", group=1, index=1),  # no scan: no blind pass
    ]
    policy = ScriptedPolicy(["<think>t</think><answer>3</answer>", "<answer>7</answer>"])
    out = geo.blind_pass_reward(recs, RewardContext(policy=policy), temperature=0.7)
    assert [o["score"] for o in out] == [1.0, -0.5, 0.0, 0.0]
    assert [o["attempted"] for o in out] == [1.0, 1.0, 0.0, 0.0]
    assert "success" not in out[2] and out[0]["success"] == 1.0
    assert len(policy.calls) == 1  # one batched call for the whole batch
    messages, images, kw = policy.calls[0]
    assert images == [[], []] and kw == {"temperature": 0.7}
    for m in messages:
        assert all(isinstance(turn["content"], str) for turn in m)  # no image slots at all
        assert "Find x." in m[-1]["content"] and "<image>" not in m[-1]["content"]
    assert "a triangle" in messages[0][-1]["content"] and "two lines" in messages[1][-1]["content"]
    assert recs[1].extras["blind_correct"] is False and "blind_completion" in recs[0].extras
    # seed preset through compute_rewards: format 0.1 + accuracy 1 + blind 1 for the first record
    cfg = load_config("geometry3k-seed-weights")
    specs = [RewardSpec(r.name, r.weight, r.kwargs, r.label) for r in cfg.rewards]
    policy = ScriptedPolicy(["<answer>3</answer>", "<answer>7</answer>"])
    res = compute_rewards(recs, specs, RewardContext(policy=policy))
    assert res.total.tolist() == pytest.approx([2.1, 0.6, 0.1, 1.08])
    assert res.metrics()["reward/blind/success/mean"] == 0.5


# ------------------------------------------------------------------------- tiny model, end to end


def _tiny_cfg(recipe: str, model_dir: Path, data: Path, out: Path, extra: list[str] | None = None):
    cfg = load_config(
        recipe,
        [
            f"model.name_or_path={model_dir}",
            "model.dtype=float32",
            f"data.kwargs={{path: '{data}'}}",
            f"train.output_dir={out}",
            "train.device=cpu",
            "train.threads=1",
            "train.tensorboard=false",
            "train.eval_every=0",
            "train.log_samples_every=0",
            "rollout.max_new_tokens=6",
            "eval.max_new_tokens=6",
            *(extra or []),
        ],
    )
    return cfg


class BlindCalls(list):
    """(prompts, encoding) per blind `generate` call; `.kwargs` holds each call's sampling kwargs."""

    def __init__(self) -> None:
        super().__init__()
        self.kwargs: list[dict] = []


@contextlib.contextmanager
def spy_blind_generation(monkeypatch):
    """Record every prompt the blind pass sends through the real rollout path, and its encoding."""
    from vlmgrpo.rollout import hf as hf_rollout
    from vlmgrpo.sampling import PolicyHandle

    seen = BlindCalls()
    state = {"blind": False}
    real_generate, real_encode = PolicyHandle.generate, hf_rollout.encode_prompts

    def generate(self, messages, images=None, **kw):
        seen.kwargs.append(kw)
        state["blind"] = True
        try:
            return real_generate(self, messages, images, **kw)
        finally:
            state["blind"] = False

    def encode(proc, prompts, repeat, device):
        enc, rows = real_encode(proc, prompts, repeat, device)
        if state["blind"]:
            seen.append((prompts, enc))
        return enc, rows

    monkeypatch.setattr(PolicyHandle, "generate", generate)
    monkeypatch.setattr(hf_rollout, "encode_prompts", encode)
    yield seen


def _assert_text_only(seen, proc) -> None:
    tok = proc.tokenizer
    vision = {tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>")}
    assert seen, "the blind pass never ran"
    for prompts, enc in seen:
        assert all(p.images == [] for p in prompts)
        assert "pixel_values" not in enc and "image_grid_thw" not in enc
        assert not (set(enc["input_ids"].flatten().tolist()) & vision)
        text = tok.decode(enc["input_ids"][0])
        assert "[Visual description]" in text and "side AB labeled 3" in text and "Find x." in text


@pytest.mark.parametrize("layout", ["parquet", "intergps"])
def test_sr1_trains_end_to_end_with_a_text_only_blind_pass(layout, tiny_vlm_dir, tmp_path, monkeypatch):
    if layout == "parquet" and not HAS_PYARROW:
        pytest.skip("pyarrow not installed: parquet cannot be written or read")
    from vlmgrpo.runlog import read_metrics
    from vlmgrpo.trainer import Trainer

    data = _data_root(tmp_path, layout)
    cfg = _tiny_cfg(
        "geometry3k-sr1",
        tiny_vlm_dir,
        data,
        tmp_path / "run",
        ["train.steps=1", "train.eval_every=1", "train.log_samples_every=1"],
    )
    # A random tiny policy never answers correctly; a prefill that already holds a correct
    # scan/think/answer makes every pass-1 completion eligible, so the blind pass must run.
    cfg.prompt.prefill = PREFILL_CORRECT
    with spy_blind_generation(monkeypatch) as seen:
        trainer = Trainer(cfg)
        trainer.fit()
    _assert_text_only(seen, trainer.proc)
    # calls: eval at step 0, the training step, eval at step 1; each batched into one generate
    n_train = cfg.rollout.group_size * cfg.rollout.prompts_per_step
    assert [len(p) for p, _ in seen] == [4, n_train, 4]
    assert [kw["temperature"] for kw in seen.kwargs] == [0.0, 0.9, 0.0]  # eval greedy, train as rollout
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    row = [r for r in rows if r["step"] == 1][0]
    assert row["reward/blind/attempted/mean"] == 1.0 and row["reward/blind/failed"] == 0
    assert row["reward/accuracy/mean"] == 1.0 and row["reward/format/mean"] == 1.0
    assert -0.5 <= row["reward/blind/mean"] <= 1.0
    assert row["eval/blind/attempted/mean"] == 1.0 and "eval/blind/success/mean" in row
    logged = json.loads((tmp_path / "run/samples/step-000001/samples.json").read_text())
    assert all(isinstance(e["blind_completion"], str) and e["correct"] is True for e in logged)


def test_evaluate_geometry_on_a_tiny_vlm(tiny_vlm_dir, tmp_path, monkeypatch):
    from vlmgrpo.models import load_policy
    from vlmgrpo.tasks.geometry_eval import evaluate_geometry

    data = _data_root(tmp_path, "intergps", n=3)
    cfg = _tiny_cfg("geometry3k-sr1", tiny_vlm_dir, data, tmp_path / "run")
    items = [build_dataset("geometry3k", cfg.data.kwargs, "test", 0)[i] for i in range(3)]
    model, proc = load_policy(cfg.model)
    report = evaluate_geometry(model, proc, items, cfg)  # random policy: nothing correct
    assert report["n"] == 3 and report["accuracy"] == 0.0 and report["blind_attempts"] == 0
    assert report["blind_success_rate"] is None
    json.dumps(report, allow_nan=False)  # strict JSON for the eval results file
    cfg.prompt.prefill = PREFILL_CORRECT
    with spy_blind_generation(monkeypatch) as seen:
        report = evaluate_geometry(model, proc, items, cfg)
    _assert_text_only(seen, proc)
    assert report["accuracy"] == 1.0 and report["format_rate"] == 1.0 and report["grounding_rate"] == 1.0
    assert report["blind_attempts"] == 3 and 0.0 <= report["blind_success_rate"] <= 1.0
    ctx = types.SimpleNamespace(samples=lambda: items, cfg=cfg)  # `vlmgrpo eval`'s calling form
    assert evaluate_geometry(model, proc, ctx)["pass@1"] == 1.0
    pred = report["predictions"][0]
    assert pred["prediction"] == "3" and pred["correct"] and pred["format"] == "scan_think_answer"
    assert isinstance(pred["blind_completion"], str) and isinstance(pred["blind_correct"], bool)


# ----------------------------------------------------------------------------------------- resume


def _adapter(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(ckpt / "adapter_model.safetensors"))


def test_resume_equals_uninterrupted_training(tiny_vlm_dir, tmp_path):
    """4 steps == 2 steps, checkpoint, resume, 2 more: same losses, rewards and LoRA weights; with
    grad_accum 2 (fit() accumulating over two rollouts per update, as the seed recipes do)."""
    from vlmgrpo.runlog import read_metrics
    from vlmgrpo.trainer import Trainer

    data = _data_root(tmp_path, "intergps", n=6)

    def cfg(out: Path, steps: int):
        c = _tiny_cfg(
            "geometry3k",
            tiny_vlm_dir,
            data,
            out,
            [f"train.steps={steps}", "optim.lr=1e-3", "optim.grad_accum=2"],
        )
        # a random policy never earns the geometry rewards: a length term gives GRPO a signal
        c.rewards.append(RewardEntry(name="length", weight=1.0, kwargs={"per_char": 0.01}))
        return c

    Trainer(cfg(tmp_path / "full", 4)).fit()
    Trainer(cfg(tmp_path / "split", 2)).fit()
    Trainer(cfg(tmp_path / "split", 4), resume="ckpt-2").fit()

    def rows(run: str) -> dict[int, dict]:
        return {r["step"]: r for r in read_metrics(tmp_path / run / "metrics.jsonl") if r["phase"] == "grpo"}

    full, split = rows("full"), rows("split")
    assert sorted(full) == sorted(split) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        for key in ("loss", "reward/mean", "grad_norm", "completion/len_mean"):
            assert full[step][key] == split[step][key], (step, key)
    assert any(full[s]["loss"] != 0 for s in full)  # the updates did something
    assert all(full[s]["update/micro_batches"] == 2 for s in full)  # both rollouts of a step in each update
    a, b = _adapter(tmp_path / "full/ckpts/ckpt-4"), _adapter(tmp_path / "split/ckpts/ckpt-4")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    mid = _adapter(tmp_path / "split/ckpts/ckpt-2")
    assert any(not torch.equal(a[k], mid[k]) for k in a)  # steps 3-4 changed the weights
