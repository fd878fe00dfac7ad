"""User-facing errors: a bad config value, a missing or malformed data file.

The CLI turns a :class:`UserError` into one clear message and exit code 2 (the full traceback is shown when
``HYDRA_FULL_ERROR=1``). Raise it for anything the user can fix; let programming errors propagate.
"""


class UserError(Exception):
    """A mistake the user can fix (config or data). The message names the culprit and the remedy."""


EXIT_USER_ERROR = 2
