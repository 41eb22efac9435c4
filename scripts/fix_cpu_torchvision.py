"""Make PyPI's torchvision import next to a CPU-only torch build.

Why: on machines that install torch's CPU wheel, the only torchvision on offer is the CUDA build,
whose `_meta_registrations.py` registers two fake kernels (`nms`, `qnms`) without first checking
that its compiled ops loaded, so `import torchvision` fails with "operator torchvision::nms does
not exist". vlmgrpo needs torchvision only because transformers' Qwen-VL processors require a
video processor. Guarding those two registrations makes it import (transforms work; nms and
image decoding do not, and vlmgrpo uses neither). Idempotent; does nothing when torchvision
already imports, so it is a no-op on a user's GPU machine.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

GUARD = "(lambda f: f) if not torchvision.extension._has_ops() else "


def main() -> int:
    ok = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True)
    if ok.returncode == 0:
        return 0
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return 0  # not installed: nothing to fix
    path = Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    for op in ("nms", "qnms"):
        old = f'@torch.library.register_fake("torchvision::{op}")'
        new = f'@({GUARD}torch.library.register_fake("torchvision::{op}"))'
        if old in text:
            text = text.replace(old, new)
    path.write_text(text)
    check = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    if check.returncode != 0:
        print(f"torchvision still fails to import: {check.stderr.strip().splitlines()[-1]}")
        return 1
    print(f"patched {path} so that torchvision imports beside a CPU-only torch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
