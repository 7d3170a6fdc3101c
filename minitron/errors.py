"""The one exception type that the CLI turns into a one-line error and a non-zero exit."""


class MinitronError(Exception):
    """A user-facing error: the message names the field or file at fault and how to fix it."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
