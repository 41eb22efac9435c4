"""vlmgrpo: GRPO post-training for vision-language models.

Importing the package is cheap: torch, transformers and every heavy backend are imported inside
the modules that need them, so `import vlmgrpo` and the CLI's `--help` stay fast.
"""

__version__ = "0.1.0"

# The public Python API, imported on first use (torch loads only with the trainer):
#   GRPOConfig, GRPOTrainer  TRL's names (vlmgrpo.trl_config, vlmgrpo.api; README "Coming from TRL")
#   Trainer, Components      the native trainer and what it trains on (vlmgrpo.trainer)
#   Config, load_config      the native schema and recipe loading (vlmgrpo.config)
_LAZY = {
    "GRPOConfig": "vlmgrpo.trl_config",
    "GRPOTrainer": "vlmgrpo.api",
    "Trainer": "vlmgrpo.trainer",
    "Components": "vlmgrpo.trainer",
    "Config": "vlmgrpo.config",
    "load_config": "vlmgrpo.config",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlmgrpo' has no attribute {name!r}")
