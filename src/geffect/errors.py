"""The one exception type for bad input.

Raise `UsageError` with a message that says what is wrong and how to fix it; the CLI prints it on one
line and exits with status 2, without a traceback.
"""


class UsageError(Exception):
    """Bad input from the user (a path, a name, a value). The message is shown verbatim."""
