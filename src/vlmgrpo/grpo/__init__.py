"""GRPO algorithm pieces as small pure tensor functions (`vlmgrpo.grpo.core`).

Import from `vlmgrpo.grpo.core` directly; this package file stays empty so that `import vlmgrpo.grpo`
does not pull in torch.
"""
