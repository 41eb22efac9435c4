"""Small generic rewards, useful for smoke tests and as examples of the reward API."""

from __future__ import annotations

from vlmgrpo.rewards.base import RewardContext, RewardRecord


def length_reward(rec: RewardRecord, ctx: RewardContext, target: int = 0, per_char: float = 0.01) -> float:
    """per_char x length, or minus the distance to `target` characters when target > 0."""
    n = len(rec.completion)
    return -abs(n - target) * per_char if target else n * per_char


def contains_reward(rec: RewardRecord, ctx: RewardContext, word: str = "", field: str = "") -> float:
    """1 if the completion contains `word` (or the sample's `field` value), case-insensitive."""
    needle = str(rec.sample.get(field, "")) if field else word
    return float(bool(needle) and needle.lower() in rec.completion.lower())
