"""`DataError`: bad market data, naming the file and line (or request) it came from."""

from __future__ import annotations

import os


class DataError(ValueError):
    """Bad market data, naming where it came from (file and line, or request) and the problem."""

    def __init__(
        self, problem: str, *, source: str | os.PathLike[str] | None = None, line: int | None = None
    ):
        self.problem = problem
        self.source = None if source is None else str(source)
        self.line = line
        where = self.source or ""
        if line is not None:
            where = f"{where}, line {line}" if where else f"line {line}"
        super().__init__(f"{where}: {problem}" if where else problem)
