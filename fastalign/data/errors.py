"""The one error type of the data pipeline: malformed input, located precisely enough to fix it."""


class DataFormatError(ValueError):
    """Malformed training data, e.g. ``data.jsonl line 7: expected a string in column 'completion', got int``.

    Args:
        source: the file (or "dataset" for an in-memory `datasets.Dataset`) the problem is in.
        location: where in it, e.g. "line 7" (JSON Lines) or "row 3" (0-based dataset rows are reported 1-based).
        problem: what is wrong, phrased so the user knows what to change.
    """

    def __init__(self, source: str, location: str | None, problem: str):
        self.source = source
        self.location = location
        self.problem = problem
        where = f"{source} {location}" if location else source
        super().__init__(f"{where}: {problem}")
