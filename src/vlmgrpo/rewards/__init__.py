"""Rewards: the API (`base`) and the registry of built-in rewards.

Built-in reward modules register themselves on import; the registry lists them lazily here so
that `import vlmgrpo.rewards` imports none of their dependencies.
"""

from vlmgrpo.rewards.base import (
    REWARDS,
    RewardContext,
    RewardFn,
    RewardRecord,
    RewardResult,
    RewardSpec,
    batched,
    compute_rewards,
    register_reward,
    resolve_reward,
)

# name -> "module:function"; modules may also call register_reward themselves for new names
_BUILTIN = {
    "cycle": "vlmgrpo.rewards.cycle:cycle_reward",
    "adversary": "vlmgrpo.rewards.adversary:adversary_reward",
    "geometry_format": "vlmgrpo.rewards.geometry:format_reward",
    "geometry_accuracy": "vlmgrpo.rewards.geometry:accuracy_reward",
    "geometry_grounding": "vlmgrpo.rewards.geometry:grounding_reward",
    "geometry_blind": "vlmgrpo.rewards.geometry:blind_pass_reward",
    "area_correctness": "vlmgrpo.rewards.area:correctness_reward",
    "area_format": "vlmgrpo.rewards.area:area_format_reward",
    "xml_format": "vlmgrpo.rewards.area:xml_format_reward",
    "img2code": "vlmgrpo.rewards.img2code:img2code_reward",
    "length": "vlmgrpo.rewards.simple:length_reward",
    "contains": "vlmgrpo.rewards.simple:contains_reward",
}
for _name, _path in _BUILTIN.items():
    REWARDS.register(_name, _path)

__all__ = [
    "REWARDS",
    "RewardContext",
    "RewardFn",
    "RewardRecord",
    "RewardResult",
    "RewardSpec",
    "batched",
    "compute_rewards",
    "register_reward",
    "resolve_reward",
]
