"""The one exception type a user sees.

A `FinetuneError` carries a message that names what was wrong, what is allowed and how to fix
it. The CLI prints it without a traceback and exits with status 2; everything else is a bug.
"""


class FinetuneError(Exception):
    """A problem with the user's input (a folder, a file, an argument), with the fix in its text."""


def check_choice(argument: str, value, allowed) -> None:
    """Raises a `FinetuneError` naming `argument` when `value` is not one of `allowed`."""
    if value not in allowed:
        raise FinetuneError(
            f"`{argument}` must be one of {', '.join(map(str, allowed))}. Received: {argument}={value!r}"
        )
