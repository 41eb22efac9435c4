"""scripts/demo_attribute_probe.py: the demo's warm start probed at its held-out checks, per attribute."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "demo_attribute_probe.py"


def test_probe_prints_one_line_per_held_out_check_with_shares_in_range():
    sets = ["warmup.target_field=description", "warmup.steps=20", "warmup.eval_every=10",
            "warmup.stop_at_ceiling_fraction=0"]  # fmt: skip
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--seed", "2", *[a for s in sets for a in ("--set", s)]],
        capture_output=True, text=True, timeout=240, check=True,
    ).stdout  # fmt: skip
    checks = [x for x in out.splitlines() if x.startswith("warm start, held-out similarity")]
    assert len(checks) == 2  # steps 10 and 20
    for x in checks:
        shares = dict(re.findall(r"(colour|shape|size|position) ([0-9.]+)", x))
        assert set(shares) == {"colour", "shape", "size", "position"}
        assert all(0.0 <= float(v) <= 1.0 for v in shares.values())
        said = re.search(r"shape words (\{.*\})", x).group(1)
        assert sum(int(n) for n in re.findall(r": (\d+)", said)) == 64 * 4  # every description counted
    assert "stopped after 2 held-out checks" in out
