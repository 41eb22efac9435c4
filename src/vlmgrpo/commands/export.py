"""Export a checkpoint as a plain Hugging Face folder (a LoRA checkpoint merged into its base).

    vlmgrpo export --checkpoint runs/geometry3k --out exported/   # the run's latest checkpoint
    vlmgrpo export --checkpoint runs/geometry3k/ckpts/ckpt-500 --out exported/ --base Qwen/...

The folder holds the model (full weights, safetensors) and the processor, and nothing of the
trainer (no optimizer state, no COMPLETE marker): `from_pretrained(out)` and serving stacks load
it as they load the base model. A LoRA adapter is merged into the base named in its
`adapter_config.json` (or `--base`, when that base has moved); the merged weights keep the base's
dtype. The folder is written next to `--out` and renamed into place, so an interrupted export
never leaves a half-written model behind.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from vlmgrpo.errors import ConfigError, ModelLoadError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint", required=True, help="ckpt-N folder, or a run folder (its latest checkpoint)"
    )
    p.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    p.add_argument("--base", help="base model of a LoRA checkpoint (default: the one its adapter names)")


def find_checkpoint(path: Path) -> Path:
    """A checkpoint folder: `path` itself, or the latest complete one of the run folder `path`."""
    from vlmgrpo import checkpoint as ckpt

    if not path.is_dir():
        raise ConfigError(f"{path}: --checkpoint: no such folder")
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return path
    found = ckpt.list_checkpoints(path / "ckpts", warn=True)
    if not found:
        raise ConfigError(
            f"{path}: --checkpoint: neither a model folder nor a run folder with a complete checkpoint"
        )
    return found[-1]


def _auto_class(config: Any) -> Any:
    import transformers

    vision = getattr(config, "vision_config", None) is not None
    return transformers.AutoModelForImageTextToText if vision else transformers.AutoModelForCausalLM


def _processor(*folders: str) -> Any:
    import transformers

    for f in folders:
        for cls in (transformers.AutoProcessor, transformers.AutoTokenizer):
            try:
                return cls.from_pretrained(f)
            except (OSError, ValueError, TypeError):
                continue
    return None


def load_merged(checkpoint: Path, base: str | None = None) -> tuple[Any, Any]:
    """(model, processor) of a checkpoint, a LoRA adapter merged into its base."""
    import transformers

    adapter = checkpoint / "adapter_config.json"
    if not adapter.is_file():
        config = transformers.AutoConfig.from_pretrained(checkpoint)
        model = _auto_class(config).from_pretrained(checkpoint, dtype="auto")
        return model, _processor(str(checkpoint))
    from peft import PeftModel

    base = base or json.loads(adapter.read_text()).get("base_model_name_or_path") or ""
    if not base:
        raise ConfigError(f"{adapter}: names no base model; pass --base")
    from vlmgrpo.sources import is_local_path

    if is_local_path(base) and not Path(base).expanduser().exists():
        # a run records its model path as given: relative to where it trained, not to here
        raise ModelLoadError(
            f"{base}: the adapter's base model folder is not there (a relative path counts from where "
            f"the run trained; this is {Path.cwd()}); pass --base"
        )
    try:
        config = transformers.AutoConfig.from_pretrained(base)
        model = _auto_class(config).from_pretrained(base, dtype="auto")
    except OSError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelLoadError(f"{base}: cannot load the adapter's base model ({first}); pass --base") from None
    model = PeftModel.from_pretrained(model, str(checkpoint)).merge_and_unload()
    return model, _processor(str(checkpoint), base)


def export(checkpoint: Path, out: Path, base: str | None = None) -> Path:
    """Write `checkpoint` (merged if LoRA) to `out` as a plain Hugging Face folder."""
    checkpoint = find_checkpoint(Path(checkpoint))
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: --out exists and is not empty")
    model, proc = load_merged(checkpoint, base)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    from vlmgrpo.checkpoint import save_model

    save_model(model, proc, tmp)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def run(args: argparse.Namespace) -> int:
    # name what was exported: a run folder resolves to its save_model output or latest checkpoint
    checkpoint = find_checkpoint(Path(args.checkpoint))
    out = export(checkpoint, Path(args.out), args.base)
    merged = " (LoRA merged into its base)" if (checkpoint / "adapter_config.json").is_file() else ""
    print(f"exported {checkpoint}{merged} to {out}")
    return 0
