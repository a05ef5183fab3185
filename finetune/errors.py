"""The exceptions a user sees.

A `FinetuneError` carries a message that names what was wrong, what is allowed and how to fix
it. The CLI prints it without a traceback and exits with status 2; everything else is a bug.
`augment`, a library of its own, raises its own `AugmentError`; `USER_ERRORS` holds both.
"""

import contextlib

from augment.errors import AugmentError


class FinetuneError(Exception):
    """A problem with the user's input (a folder, a file, an argument), with the fix in its text."""


# What the CLI and the app catch as a user's mistake (a message to show, not a bug): the errors
# of `finetune` and of the `augment` library it drives, which cannot know `FinetuneError`.
USER_ERRORS = (FinetuneError, AugmentError)


def check_choice(argument: str, value, allowed) -> None:
    """Raises a `FinetuneError` naming `argument` when `value` is not one of `allowed`."""
    if value not in allowed:
        raise FinetuneError(
            f"`{argument}` must be one of {', '.join(map(str, allowed))}. Received: {argument}={value!r}"
        )


@contextlib.contextmanager
def as_finetune_error():
    """Re-raises an `AugmentError` from the block as a `FinetuneError`: the type finetune's API raises."""
    try:
        yield
    except AugmentError as error:
        raise FinetuneError(str(error)) from None
