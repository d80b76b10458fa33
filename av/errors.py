"""User-facing errors: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class AvError(Exception):
    """Bad input or an unusable environment, explained in one line for the user.

    Raise it with a message that names the file or option and the problem, e.g.
    ``AvError(f"{path}: not valid JSON (line 3)")``. Programming errors stay ordinary exceptions.
    """
