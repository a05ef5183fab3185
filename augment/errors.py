"""The exception `augment` raises for a caller's mistake, and the check that raises it most.

`augment` is a library of its own (it imports nothing of `finetune`), so it has its own error
type. An `AugmentError` names what was wrong, what is allowed, and ends with
`Received: argument=value`. It is a `ValueError`, so code that knows nothing of `augment` can
still catch it as a bad value; `finetune` catches it beside its own `FinetuneError`.
"""


class AugmentError(ValueError):
    """A bad argument or option given to `augment` (a preset, a TTA mode, a range), with the fix in its text."""


def check_choice(argument: str, value, allowed) -> None:
    """Raises an `AugmentError` naming `argument` when `value` is not one of `allowed`.

    Args:
        argument: the name the caller knows the value by, e.g. "tta".
        value: what was given.
        allowed: the values allowed, in the order the message lists them.

    Example:
    >>> check_choice("combine", "median", ("mean", "geometric"))
    Traceback (most recent call last):
    ...
    augment.errors.AugmentError: `combine` must be one of mean, geometric. Received: combine='median'
    """
    if value not in allowed:
        raise AugmentError(
            f"`{argument}` must be one of {', '.join(map(str, allowed))}. Received: {argument}={value!r}"
        )
