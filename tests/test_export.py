"""`vlmgrpo export`: a LoRA checkpoint merged into its base as a plain Hugging Face folder whose
greedy output equals the adapter model's; a full-weight checkpoint copied clean."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmgrpo.config import load_config
from vlmgrpo.errors import ConfigError
from vlmgrpo.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _train(model_dir, out, *extra):
    cfg = load_config(
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
            "data.kwargs={n: 8, size: 56}",
            "data.eval_kwargs={n: 4, size: 56}",
            "rollout.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=8",
            "optim.grad_accum=1",
            "optim.lr=0.05",
            "optim.max_grad_norm=0",
            "rewards=[{name: length}]",
            *extra,
        ],
    )
    Trainer(cfg).fit()
    return out / "ckpts" / "ckpt-1"


def _inputs(proc):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}
    ]
    text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return proc(text=[text], images=[Image.new("RGB", (56, 56), "red")], return_tensors="pt")


def test_lora_checkpoint_exports_merged_with_the_adapter_models_greedy_output(tiny_vlm_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    ckpt = _train(tiny_vlm_dir, tmp_path / "run", "model.lora.enabled=true", "model.lora.dropout=0.0")
    assert (ckpt / "adapter_config.json").is_file()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlmgrpo.cli",
            "export",
            "--checkpoint",
            str(tmp_path / "run"),
            "--out",
            str(tmp_path / "x"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "x"
    assert not (out / "adapter_config.json").exists() and not (out / "trainer_state.pt").exists()
    merged = AutoModelForImageTextToText.from_pretrained(out).eval()
    adapter = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir), str(ckpt)
    ).eval()
    base = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir).eval()
    inputs = _inputs(AutoProcessor.from_pretrained(out))
    with torch.no_grad():
        lm, la, lb = (m(**inputs).logits for m in (merged, adapter, base))
        gm = merged.generate(**inputs, max_new_tokens=12, do_sample=False)
        ga = adapter.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert (la - lb).abs().max() > 1e-3  # the adapter changed the model: the comparison is not vacuous
    assert torch.allclose(lm, la, atol=1e-4), (lm - la).abs().max()
    assert torch.equal(gm, ga)


def test_full_checkpoint_exports_clean_and_bad_paths_are_one_line(tiny_vlm_dir, tmp_path):
    from safetensors.torch import load_file

    from vlmgrpo.commands.export import export

    ckpt = _train(tiny_vlm_dir, tmp_path / "run")
    out = export(ckpt, tmp_path / "x")
    assert (
        sorted(p.name for p in out.iterdir() if p.suffix in (".pt", "")) == []
    )  # no trainer state, no marker
    a, b = load_file(str(ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match=r"--out exists and is not empty"):
        export(ckpt, tmp_path / "x")
    with pytest.raises(ConfigError, match=r"no such folder"):
        export(tmp_path / "nope", tmp_path / "y")


def test_an_adapter_whose_relative_base_is_not_here_says_so(tmp_path, monkeypatch):
    """A LoRA run trained with --model ../tiny, exported from another folder: the line quoted the
    Hub's repo-id rules ("Repo id must use alphanumeric chars ...: '../tiny'")."""
    from vlmgrpo.commands.export import load_merged
    from vlmgrpo.errors import ModelLoadError

    ckpt = tmp_path / "ckpt-1"
    ckpt.mkdir()
    (ckpt / "adapter_config.json").write_text('{"base_model_name_or_path": "../tiny"}')
    monkeypatch.chdir(ckpt)
    with pytest.raises(
        ModelLoadError, match=r"^\.\./tiny: the adapter's base model folder is not there .*pass --base$"
    ):
        load_merged(ckpt)


def _modes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): oct(p.stat().st_mode & 0o777) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_weights_follow_the_umask_like_every_other_file(tmp_path, umask):
    """safetensors writes its files 0600: a checkpoint's model.safetensors (and an export's, and a
    tiny model's) was readable by its owner only, unlike the config and trainer state beside it."""
    import transformers

    from vlmgrpo.checkpoint import save_checkpoint
    from vlmgrpo.commands.export import export
    from vlmgrpo.models.tiny import build_tiny_text_lm

    old = os.umask(umask)
    try:
        tiny = build_tiny_text_lm(tmp_path / "tiny")
        model = transformers.AutoModelForCausalLM.from_pretrained(tiny)
        tok = transformers.AutoTokenizer.from_pretrained(tiny)
        ckpt = save_checkpoint(tmp_path / "ckpts", 1, {"": (model, tok), "adversary": (model, tok)}, {})
        out = export(ckpt, tmp_path / "export")
    finally:
        os.umask(old)
    want = oct(0o666 & ~umask)
    for root in (tiny, ckpt, out):
        modes = _modes(root)
        assert "model.safetensors" in modes and set(modes.values()) == {want}, (root, modes)


@pytest.mark.parametrize("builder", ["build_tiny_dinov2", "build_tiny_clip", "build_tiny_flux"])
def test_tiny_reward_models_follow_the_umask(tmp_path, builder):
    """The reward-model builders (DINOv2, CLIP, FLUX) saved their weights 0600 like safetensors
    does, while the configs beside them followed the umask."""
    if builder == "build_tiny_flux":
        pytest.importorskip("diffusers")
    from vlmgrpo.models import tiny_reward_models

    old = os.umask(0o022)
    try:
        out = getattr(tiny_reward_models, builder)(tmp_path / "m")
    finally:
        os.umask(old)
    modes = _modes(out)
    assert any(k.endswith(".safetensors") for k in modes) and set(modes.values()) == {"0o644"}, modes
