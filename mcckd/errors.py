"""Errors in what the user gave us, reported without a traceback by the `mcckd` command."""


class InputError(ValueError):
    """Bad user input (a data file, a config): the message names the file and line or key.

    The command prints it as `mcckd: error: ...` and exits with code 2.
    """
