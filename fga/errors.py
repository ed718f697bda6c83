"""User-facing errors: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input the user can fix: the message names the file or key and the fix."""
