"""DuckDB's tokens of a statement with their start as an index into the Python string.

duckdb.tokenize counts UTF-8 bytes: after a non-ASCII character ('Zoë', 'Zürich') its offsets
point past the characters they mean, and `sql[offset]` reads the wrong one or fails.
"""

from __future__ import annotations

import duckdb


def token_starts(sql: str) -> list[tuple[int, duckdb.token_type]]:
    """duckdb.tokenize(sql) with each start as a character index (raises duckdb.Error as it does)."""
    tokens = duckdb.tokenize(sql)
    if sql.isascii():
        return tokens
    char_at: dict[int, int] = {}  # byte offset of each character's start -> its index
    offset = 0
    for index, char in enumerate(sql):
        char_at[offset] = index
        offset += len(char.encode("utf-8"))
    char_at[offset] = len(sql)
    return [(char_at[start], kind) for start, kind in tokens]
