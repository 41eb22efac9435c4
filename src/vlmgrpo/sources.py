"""Local path or Hugging Face Hub id: the one rule the model loader, the image embedders and
generators, the `hf` data source and the offline builders (`offline.py`) share, so that a name
means the same thing in every section of a recipe.

- an existing file or folder is local, even when it reads like "org/name" (a `data/charxiv`
  folder in the working directory wins over a Hub repo of that name);
- anything the Hub could not accept as a repo id is local: "./x", "../x", "/x", "~/x", "a/b/c",
  a trailing slash ("org/name/"), a backslash or drive letter ("C:\\x", "x\\y");
- the rest ("org/name", or a bare "name" such as "gpt2" that is not a folder here) is a Hub id.

The repo-id check is huggingface_hub's own (`validate_repo_id`), imported when first asked.
"""

from __future__ import annotations

from pathlib import Path


def is_hub_id(value: str) -> bool:
    """True when `value` has the shape the Hub accepts for a repo id ("name" or "org/name")."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return bool(value)


def is_local_path(value: str) -> bool:
    """True: `value` names a local file or folder (existing or not); False: a Hub id. The module
    docstring has the rule. An empty value is neither; callers reject it before asking."""
    return Path(value).expanduser().exists() or not is_hub_id(value)
