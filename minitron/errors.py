"""The one exception type that the CLI turns into a one-line error and a non-zero exit."""

import re


class MinitronError(Exception):
    """A user-facing error: the message names the field or file at fault and how to fix it."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# Exception classes (by name, so that this base module imports nothing) and message fragments that mean "the
# Hugging Face Hub could not be reached", from huggingface_hub, datasets and requests.
_HUB_ERRORS = frozenset({"OfflineModeIsEnabled", "LocalEntryNotFoundError"})
_HUB_WORDS = ("Couldn't reach", "offline mode is enabled", "We couldn't connect to",
              "cannot find the requested files in the local cache", "outgoing traffic has been disabled")
_HUB_NAME = re.compile(r"(?:Couldn't reach|Couldn't find|repo(?:sitory)?|dataset)[^']*'(?!https?:)([^'\s]+)'",
                       re.IGNORECASE)


def hub_problem(err: BaseException, wanted: str | None = None) -> str | None:
    """A one-line message when `err` (or what caused it) means the Hub is unreachable, else None.

    It names the dataset or model that was wanted (`wanted`, else read from the messages) and says how to get it:
    hub access, or a local copy.
    """
    seen: set[int] = set()
    chain: list[BaseException] = []
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for e in chain:
        names = {c.__name__ for c in type(e).__mro__}
        text = str(e)
        if names & _HUB_ERRORS or any(w.lower() in text.lower() for w in _HUB_WORDS):
            found = wanted or next((m.group(1) for c in chain if (m := _HUB_NAME.search(str(c)))), None)
            what = f"'{found}'" if found else "a dataset or model"
            return (f"cannot download {what} from the Hugging Face Hub (no hub access: {type(e).__name__}: "
                    f"{first_line(e)[:160]}); give this machine hub access, or copy it into the Hugging Face cache "
                    "(HF_HOME) from a machine that has access, or point at a local copy")
    return None
