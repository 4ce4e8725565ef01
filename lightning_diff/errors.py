"""One exception type for every mistake a user can fix.

Entry points catch :class:`UserError` and print its message alone (no traceback), so every
raise site must say what was wrong *and* what would be valid.
"""


class UserError(Exception):
    """A configuration, data or file problem the user can fix; the message says how."""


class NonFiniteLossError(UserError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left intact."""
