"""The one exception type for bad user input. The CLI turns it into a one-line message and exit 2."""


class InputError(ValueError):
    """Bad input: names the file or argument, what was expected and what was found."""


class CheckpointError(InputError):
    """A checkpoint directory that is missing, truncated, tampered with or of an unknown format."""


class NonFiniteError(InputError):
    """Training produced a non-finite loss for ``train.max_nonfinite`` consecutive steps."""
