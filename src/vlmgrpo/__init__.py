"""vlmgrpo: GRPO post-training for vision-language models.

Importing the package is cheap: torch, transformers and every heavy backend are imported inside
the modules that need them, so `import vlmgrpo` and the CLI's `--help` stay fast.
"""

__version__ = "0.1.0"
