"""The one error type of the data code."""


class DataError(ValueError):
    """Bad input data; the message names the offending file (and line where there is one)."""
