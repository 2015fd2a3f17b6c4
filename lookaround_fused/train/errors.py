"""The one exception type for bad input to the training command."""


class UsageError(Exception):
    """Bad input (flags, data, checkpoint): reported as one line on stderr with exit code 2."""
