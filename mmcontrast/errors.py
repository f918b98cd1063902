"""Errors a user can cause. Programs print their message as one line, never a stack trace."""


class UserError(Exception):
    """Bad input from the user: a path, a config key, a value. The message says what to do."""
