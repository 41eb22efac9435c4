"""User-facing errors: one clear line, no traceback.

Raise `VlmgrpoError` (or a subclass) for anything the user can fix: a bad recipe key, a missing
file, a corrupt image. The CLI prints `error: <message>` and exits with status 2; programming
errors keep their traceback.
"""


class VlmgrpoError(Exception):
    """An error whose message is meant for the user, naming the file or key and what is wrong."""


class ConfigError(VlmgrpoError):
    """A recipe, override or config value is invalid."""


class DataError(VlmgrpoError):
    """An input file (image, JSON, parquet) is missing or unreadable."""


class ModelLoadError(VlmgrpoError):
    """A model path or id cannot be loaded."""


class ServiceError(VlmgrpoError):
    """A remote service (generator, judge) failed past its retry budget."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """ "Type: first line of the message" (at most `limit` characters of it) for one-line reports."""
    text = (str(e).strip().splitlines() or [""])[0][:limit]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
