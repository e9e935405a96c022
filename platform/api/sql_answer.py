"""POST /sql's answer, built row by row under a byte cap: the rows as JSON values, and a refusal as
soon as their JSON passes the cap, so a query that selects a huge text cannot make the API hold (and
send) an answer of any size."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

# The rule of the refusal of an answer over the cap (POST /sql).
SQL_ANSWER_RULE = "sql_answer_limit"


class SqlAnswerTooLarge(Exception):
    """The rows read so far already make an answer over the cap; the message says what to do."""

    def __init__(self, max_bytes: int, rows_read: int) -> None:
        super().__init__(
            f"the answer to the query is over the limit of {max_bytes} bytes of JSON (DERMGROUND_SQL_MAX_ANSWER_BYTES), "
            f"passed at row {rows_read}: select fewer rows (LIMIT, WHERE) or fewer or shorter columns, or export it "
            "with the CLI, which writes a file of any size: dermground sql \"SELECT ...\" --out FILE.parquet")


class SqlAnswer:
    """Collects up to `max_rows` rows as JSON values (`add`, given each row as it is read) and raises
    SqlAnswerTooLarge once their JSON passes `max_bytes`; rows past `max_rows` (read only to learn
    that the answer is truncated) are not sent, so they do not count."""

    def __init__(self, max_bytes: int, max_rows: int, cell: Callable[[object], object]) -> None:
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self.rows: list[list[object]] = []
        self._cell = cell
        self._bytes = 0

    def add(self, row: Sequence[object]) -> None:
        if len(self.rows) >= self.max_rows:
            return
        values = [self._cell(value) for value in row]
        # As the response writes it (compact, UTF-8), plus the comma between rows.
        self._bytes += len(json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode()) + 1
        if self._bytes > self.max_bytes:
            raise SqlAnswerTooLarge(self.max_bytes, len(self.rows) + 1)
        self.rows.append(values)
