"""One "is this a number" test (`vlmgrpo/numeric.py`) for reward values, the run log and the
trackers: a table of inputs, and the three places agreeing on it."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from vlmgrpo.numeric import as_number
from vlmgrpo.rewards.base import _checked
from vlmgrpo.runlog import RunLog

NAN = float("nan")
# value -> as_number(value), as_number(value, finite=True)
TABLE = [
    (3, 3.0, 3.0),
    (True, 1.0, 1.0),
    (0.25, 0.25, 0.25),
    (NAN, NAN, None),
    (float("inf"), math.inf, None),
    (Fraction(1, 4), 0.25, 0.25),
    (np.float32(0.5), 0.5, 0.5),
    (np.int64(7), 7.0, 7.0),
    (np.bool_(True), 1.0, 1.0),
    (np.float64(NAN), NAN, None),
    (np.array([2.0]), 2.0, 2.0),
    (torch.tensor(1.5), 1.5, 1.5),
    (torch.tensor([-1.0]), -1.0, -1.0),
    (torch.tensor(float("-inf")), -math.inf, None),
    (np.array([1.0, 2.0]), None, None),
    (torch.tensor([1.0, 2.0]), None, None),
    (1 + 2j, None, None),
    ("0.5", None, None),
    (None, None, None),
    ([1.0], None, None),
]


def _same(a, b) -> bool:
    return (a is None and b is None) or (
        a is not None and b is not None and (a == b or (math.isnan(a) and math.isnan(b)))
    )


@pytest.mark.parametrize("value,num,finite", TABLE)
def test_table(value, num, finite):
    got, got_finite = as_number(value), as_number(value, finite=True)
    assert _same(got, num) and _same(got_finite, finite), (got, got_finite)
    assert got is None or type(got) is float


@pytest.mark.parametrize("value,num,finite", TABLE)
def test_reward_check_and_run_log_agree(value, num, finite, tmp_path):
    # a reward's return value: the number, or a TypeError naming what came back (None: skipped)
    if value is None:
        assert _checked(value) is None
    elif num is None:
        with pytest.raises(TypeError):
            _checked(value)
    else:
        assert _same(_checked(value), num) and _same(_checked({"x": value})["x"], num)
    # the run log: finite numbers as numbers, NaN/inf as null, non-numbers unchanged
    if num is None and value is not None and not isinstance(value, str | list):
        return  # arrays and complex numbers are not JSON: not a metric
    row = RunLog(tmp_path).log(1, "grpo", {"m": value})
    back = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["m"]
    assert back == row["m"]
    if num is None:
        assert back == value
    else:
        assert _same(back, finite)
