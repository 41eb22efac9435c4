"""Loading policies by Hugging Face id or local folder, with optional LoRA.

VLMs load through `AutoProcessor` + `AutoModelForImageTextToText`; text-only policies (the
adversary, blind-pass solvers) through `AutoTokenizer` + `AutoModelForCausalLM`. Tests and the
demo use the same path on tiny models saved by `vlmgrpo.models.tiny`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from vlmgrpo.config import ModelConfig
from vlmgrpo.errors import ModelLoadError
from vlmgrpo.sources import is_local_path

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _check_source(name: str) -> None:
    """Fail early, in one line, on a local path that is not a saved model."""
    if not name:
        raise ModelLoadError("model.name_or_path: empty; give a Hugging Face id or a local folder")
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"{name}: folder has no config.json; is it a saved Hugging Face model?")
    elif is_local_path(name):  # not a Hub id (vlmgrpo/sources.py), and not there
        raise ModelLoadError(f"{name}: model folder does not exist")


def _hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached (None: a TCP connection to it, or to the HTTPS
    proxy, opens within `timeout_s`). HF_HUB_OFFLINE=1 counts as unreachable. Without this check
    a missing network costs huggingface_hub's retries on every file: minutes and a page of log."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        return f"{'the proxy ' if proxy else ''}{host}:{port} cannot be reached ({e.strerror or e})"
    return None


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def hub_files_only(name: str) -> bool:
    """For a Hugging Face id: True to load from the local cache only (no network, but cached);
    one ModelLoadError line when it is neither reachable nor cached. Local folders: False."""
    if is_local_path(name):
        return False
    why = _hub_unreachable()
    if why is None:
        return False
    if not _in_hub_cache(name):
        raise ModelLoadError(
            f"{name}: not in the local Hugging Face cache, and the Hub is out of reach ({why}); "
            f"download it where there is network (hf download {name}) or give a local folder"
        )
    return True


def load_policy(cfg: ModelConfig, device: Any = "cpu") -> tuple[Any, Any]:
    """(model, processor_or_tokenizer) on `device`, LoRA-wrapped when `cfg.lora.enabled`."""
    import torch
    import transformers

    _check_source(cfg.name_or_path)
    local_only = hub_files_only(cfg.name_or_path)
    dtype = getattr(torch, DTYPES[cfg.dtype])
    try:
        if cfg.text_only:
            proc = transformers.AutoTokenizer.from_pretrained(cfg.name_or_path, local_files_only=local_only)
            auto = transformers.AutoModelForCausalLM
        else:
            proc = transformers.AutoProcessor.from_pretrained(cfg.name_or_path, local_files_only=local_only)
            auto = transformers.AutoModelForImageTextToText
        model = auto.from_pretrained(
            cfg.name_or_path,
            dtype=dtype,
            attn_implementation=cfg.attn_implementation,
            local_files_only=local_only,
        )
    except OSError as e:  # missing files, no hub access
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"{cfg.name_or_path}: cannot load model ({first[:200]}); "
            "give a local folder, or a hub id on a machine that can download it"
        ) from None
    return prepare_policy(model, proc, cfg, device)


def ready_processor(proc: Any) -> Any:
    """A pad token, and left padding: generation appends on the right."""
    tok = getattr(proc, "tokenizer", proc)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return proc


def prepare_policy(model: Any, proc: Any, cfg: ModelConfig, device: Any = "cpu") -> tuple[Any, Any]:
    """Make a loaded model and processor ready to train: on `device`, batched vision attention,
    left padding, frozen tower, gradient checkpointing and LoRA as `cfg` says. The Python API
    hands a user's own loaded model through here; `load_policy` hands the loaded one."""
    model.to(device)
    if cfg.vision_attention == "batched":
        from vlmgrpo.models.vision_attn import use_segment_attention

        use_segment_attention(model)
    ready_processor(proc)
    if cfg.freeze_vision:
        for name, p in model.named_parameters():
            if "visual" in name:
                p.requires_grad_(False)
    if cfg.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name; the old one warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, lcfg)
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
    return model, proc


def unwrap(model: Any) -> Any:
    """The underlying transformers model (through DDP/FSDP wrappers and peft)."""
    m = getattr(model, "module", model)
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return m
