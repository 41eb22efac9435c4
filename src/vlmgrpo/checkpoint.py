"""Atomic checkpoints and exact resume.

A checkpoint is written to `ckpts/.tmp-ckpt-N/`, every file fsynced, a `COMPLETE` marker written
last, then the folder is renamed to `ckpts/ckpt-N/` (rename is atomic on one filesystem). A folder
without the marker, or a leftover `.tmp-*`, is a write that was interrupted: it is ignored with a
warning and never loaded.

    ckpt-N/            the policy in Hugging Face format (full weights, or the LoRA adapter)
                       plus the processor, so `from_pretrained(ckpt-N)` works
    ckpt-N/trainer_state.pt   optimiser, scheduler, RNG states, step, sampler state, extra state
    ckpt-N/<name>/     extra models (e.g. the adversary) in the same format
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmgrpo.errors import VlmgrpoError

log = logging.getLogger(__name__)
MARKER = "COMPLETE"
_CKPT_RE = re.compile(r"^ckpt-(\d+)$")


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _umask() -> int:
    """This process's umask, read without setting it where Linux says it (`os.umask` sets it, and
    another thread may be creating a file meanwhile)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_modes(root: Path) -> None:
    """Give every file under `root` the mode a plain `open()` gets (0o666 less the umask): the
    safetensors library writes its files 0600 (safetensors 0.8), so a checkpoint's weights were
    readable by their owner only while every other file of it followed the umask."""
    mode = 0o666 & ~_umask()
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, mode)


def save_model(model: Any, proc: Any, out: Path, state_dict: dict | None = None) -> None:
    """HF format: full weights, or only the adapter for a peft model. `state_dict` overrides the
    module's own (the gathered full weights of an FSDP2-sharded model). File modes follow the
    umask, as for any other file (`plain_modes`)."""
    model = getattr(model, "module", model)
    if state_dict is not None:
        model.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
    else:
        model.save_pretrained(out, safe_serialization=True)
    if proc is not None:
        proc.save_pretrained(out)
    plain_modes(Path(out))


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    models: dict[str, tuple[Any, Any]],
    trainer_state: dict[str, Any],
    keep_last: int = 0,
    fault_hook: Any = None,
) -> Path:
    """Write ckpt-`step` atomically. `models` maps "" (the policy, at the top) or a sub-folder name
    to (model, processor) or (model, processor, full_state_dict). `fault_hook(stage)` lets tests kill the process mid-write."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"ckpt-{step}"
    tmp = ckpt_root / f".tmp-ckpt-{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, entry in models.items():
        model, proc, *sd = entry  # (model, processor[, full state dict])
        save_model(model, proc, tmp / name if name else tmp, sd[0] if sd else None)
    if fault_hook:
        fault_hook("after-weights")
    torch.save({**trainer_state, "rng": rng_state(), "step": step}, tmp / "trainer_state.pt")
    if fault_hook:
        fault_hook("before-marker")
    (tmp / MARKER).write_text(str(step))
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    fd = os.open(ckpt_root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if keep_last > 0:
        for old in list_checkpoints(ckpt_root)[:-keep_last]:
            # the marker goes first: a kill mid-delete leaves an incomplete folder, never one that
            # claims to be complete with files missing
            (old / MARKER).unlink(missing_ok=True)
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path, warn: bool = False) -> list[Path]:
    """Complete checkpoints, oldest first; incomplete ones are skipped (with a warning if `warn`)."""
    if not ckpt_root.is_dir():
        return []
    found = []
    for p in ckpt_root.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and (p / MARKER).is_file():
            found.append((int(m.group(1)), p))
        elif warn and (p.name.startswith(".tmp-ckpt-") or m):
            log.warning("ignoring %s: its write was interrupted (no %s marker)", p, MARKER)
    return [p for _, p in sorted(found)]


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot load (None: its header parses and its data is all there).
    Layout: 8-byte little-endian header length, JSON header with each tensor's data_offsets, data."""
    import json
    import struct

    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return f"{path.name}: truncated ({size} bytes; its header alone claims {n})"
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError):
        return f"{path.name}: not a safetensors file (its header does not parse)"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        return f"{path.name}: truncated ({size} bytes of {8 + n + end})"
    return None


def weights_problem(path: Path) -> str | None:
    """Why the weights of checkpoint `path` cannot load (None: every .safetensors file under it has
    a parsing header and all its data). Reads the headers only."""
    for f in sorted(path.rglob("*.safetensors")):
        why = _safetensors_problem(f)
        if why:
            return str(f.relative_to(path).parent / why) if f.parent != path else why
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint `path` cannot be resumed from (None: it looks intact). Cheap: reads the
    safetensors headers and the trainer state's zip directory, not the tensors."""
    import zipfile

    why = weights_problem(path)
    if why:
        return why
    state = path / "trainer_state.pt"
    if not state.is_file():
        return "trainer_state.pt is missing"
    try:
        with zipfile.ZipFile(state) as z:  # torch.save writes a zip; a cut one has no directory
            z.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        return f"trainer_state.pt is damaged ({e})"
    return None


def _intact_or_fail(p: Path, ckpt_root: Path) -> Path:
    """`p` if it looks intact, else one line naming it and the newest intact checkpoint before it."""
    why = checkpoint_problem(p)
    if why is None:
        return p
    older = [c for c in list_checkpoints(ckpt_root) if checkpoint_step(c) < checkpoint_step(p)]
    good = next((c for c in reversed(older) if checkpoint_problem(c) is None), None)
    hint = (
        f"resume from the newest intact one with --resume-from {good.name}"
        if good
        else "no intact checkpoint precedes it; start over with --overwrite"
    )
    raise VlmgrpoError(f"{p}: checkpoint is damaged ({why}); {hint}")


def resolve_resume(ckpt_root: Path, resume: str | None) -> Path | None:
    """The checkpoint `--resume` names: None (no resume), "latest" (the newest complete one under
    `ckpt_root`, None with a warning if there is none), a folder path, or a name under `ckpt_root`.
    A damaged one (a file cut short after its COMPLETE marker: a disk full, a copy) is one line
    naming it and the newest intact checkpoint to resume from instead."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(ckpt_root, warn=True)
        if not found:
            log.warning("--resume: no complete checkpoint in %s; starting from step 0", ckpt_root)
        return _intact_or_fail(found[-1], ckpt_root) if found else None
    p = Path(resume) if Path(resume).exists() else ckpt_root / resume
    if not (p / MARKER).is_file():
        raise VlmgrpoError(f"{p}: not a complete checkpoint (no {MARKER} marker)")
    return _intact_or_fail(p, p.parent)


def checkpoint_step(path: Path) -> int:
    m = _CKPT_RE.match(path.name)
    return int(m.group(1)) if m else 0


def load_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)


def fault_hook(step: int) -> Any:
    """Fault injection for the crash tests: VLMGRPO_FAULT="<stage>:<step>" SIGKILLs this process at
    that stage of writing ckpt-<step> (stages: after-weights, before-marker)."""
    spec = os.environ.get("VLMGRPO_FAULT", "")
    if not spec:
        return None
    stage, _, at = spec.partition(":")

    def hook(now: str) -> None:
        if now == stage and int(at) == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook
