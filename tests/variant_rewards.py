"""Rewards for tests/test_grpo_variants.py: groups with and without reward spread, on purpose."""

from __future__ import annotations

import zlib

from vlmgrpo.rewards.base import batched


@batched
def half_flat(records, ctx):
    """1.0 for every completion of a prompt whose id hashes even (a zero-spread group, which
    dynamic sampling drops), a hash of the completion text otherwise (groups with spread)."""
    out = []
    for r in records:
        if zlib.crc32(str(r.sample.get("id")).encode()) % 2 == 0:
            out.append(1.0)
        else:
            out.append((zlib.crc32(r.completion.encode()) % 97) / 97)
    return out


@batched
def flat(records, ctx):
    """The same reward for everything: no group has spread (dynamic sampling's bound is hit)."""
    return [0.5 for _ in records]


@batched
def half_flat_low(records, ctx):
    """`half_flat` with the spread groups' rewards in {0, 0.1}: every group dynamic sampling keeps
    averages at most 0.1, and the all-1.0 groups it drops average 1.0, so a step's reward/mean above
    0.1 shows that the dropped groups were counted."""
    out = []
    for r in records:
        if zlib.crc32(str(r.sample.get("id")).encode()) % 2 == 0:
            out.append(1.0)
        else:
            out.append(0.1 * (zlib.crc32(r.completion.encode()) % 2))
    return out
