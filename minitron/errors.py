"""The one exception type that the CLI turns into a one-line error and a non-zero exit."""


class MinitronError(Exception):
    """A user-facing error: the message names the field or file at fault and how to fix it."""
