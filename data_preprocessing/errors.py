"""The error types of the data code, and the collector that reports every bad row of an input at once."""

import contextlib

MAX_BAD_ROWS = 20  # rows named in one message; the rest are counted


class DataError(ValueError):
    """Bad input data; the message names the offending file (and line where there is one)."""


class BadRows(DataError):
    """Several bad rows, found in one pass: the first `MAX_BAD_ROWS` named, one per line, the rest counted."""

    def __init__(self, problems: list[str], count: int):
        more = f"\n  ... and {count - len(problems)} more" if count > len(problems) else ""
        super().__init__(f"{count} bad rows; fix them all, then rerun:\n  " + "\n  ".join(problems) + more)


class RowErrors:
    """Gathers the DataError of each bad row (`with errors.row(): ...` around one row's checks), so
    that one run finds them all; `raise_any()` then raises them together as BadRows."""

    def __init__(self):
        self.errors, self.count = [], 0  # the first MAX_BAD_ROWS errors, and how many there were

    @contextlib.contextmanager
    def row(self):
        """Run one row's checks; a DataError they raise is kept and the caller goes on to the next row."""
        try:
            yield
        except DataError as error:
            self.add(error)

    def add(self, error: DataError) -> None:
        """Record one bad row's error (its message is the row's line of the report)."""
        self.count += 1
        if len(self.errors) < MAX_BAD_ROWS:
            self.errors.append(error)

    def raise_any(self) -> None:
        """Raise what was recorded: a single bad row's own error, several as one BadRows."""
        if self.count == 1:
            raise self.errors[0]
        if self.count:
            raise BadRows([str(error) for error in self.errors], self.count)
