"""The one error type a user can cause; the CLI prints it as one line and exits 2."""

from __future__ import annotations


class XrayError(Exception):
    """A problem with the user's input (file, flag, environment), not a bug.

    The message must say what happened and, where it can, what to do next.
    """

    exit_code = 2


class XrayWarning(UserWarning):
    """Something the user should know that does not stop the work; the CLI prints it as one line."""
