"""The exception types the CLI turns into one line: bad input (exit 2) and a diverged run (exit 1).

Raise `UsageError` with a message that says what is wrong and how to fix it; the CLI prints it on one
line and exits with status 2, without a traceback.
"""


class UsageError(Exception):
    """Bad input from the user (a path, a name, a value). The message is shown verbatim."""


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN/inf; the message is one line for the user. The CLI prints it
    and exits with status 1 (the input was valid; the run was not)."""
