"""The one exception type for user mistakes.

A :class:`LaminaError` carries a one-line message naming the problem and the fix. The CLI prints it as
``error: <message>`` and exits with status 2, without a traceback.
"""

__all__ = ["LaminaError"]


class LaminaError(ValueError):
    """A user-facing error (bad model, site, study, text or option) with a one-line message."""
