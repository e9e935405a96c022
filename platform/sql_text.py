"""One text form per DuckDB type in every text output of `dermground sql` (table, CSV, JSON,
`--out` .csv and .json) and POST /sql, so that a value reads the same wherever it is printed:

    BOOLEAN        true / false (JSON: its own booleans)
    BLOB           as DuckDB writes it: printable ASCII as is, every other byte (and " ' \\) as \\xHH
    BIT            as DuckDB writes it: 0101
    TIME           ISO 8601: 10:11:12, 10:11:12.500000 (TIME WITH TIME ZONE: 10:11:12+02:00)

Times, dates and intervals: platform/analyst.py (json_value, interval_text, writable_columns).
"""

from __future__ import annotations

import functools
import unicodedata

# Bytes DuckDB writes as themselves when it casts a BLOB to text: printable ASCII but the quotes
# and the backslash (measured with duckdb 2.0 over all 256 bytes).
_PLAIN = frozenset(range(0x20, 0x7F)) - {0x22, 0x27, 0x5C}


def blob_text(data: bytes | bytearray | memoryview) -> str:
    """A BLOB as DuckDB's CAST(... AS VARCHAR) writes it: 'ab\\x00c', '\\xAA\\xFF'."""
    return "".join(chr(b) if b in _PLAIN else f"\\x{b:02X}" for b in bytes(data))


def scalar_text(value: object) -> object:
    """A BOOLEAN or BLOB cell in its text form (table and CSV); any other value as it is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | bytearray | memoryview):
        return blob_text(value)
    return value


def iso_time_sql(column: str, kind_id: str) -> str | None:
    """SQL giving a TIME (or TIME WITH TIME ZONE) column's ISO 8601 text as the printed outputs
    write it (Python's isoformat: whole seconds without a fraction, else six digits; the offset as
    +HH:MM), for the `--out` files; None for other types. DuckDB's own text differs ('10:11:12.5',
    '+02'), and an Arrow TIME has no offset at all."""
    if kind_id not in ("time", "time with time zone"):
        return None
    local = f"(DATE '2000-01-01' + CAST({column} AS TIME))"
    clock = (f"CASE WHEN microsecond({local}) % 1000000 = 0 THEN strftime({local}, '%H:%M:%S') "
             f"ELSE strftime({local}, '%H:%M:%S.%f') END")
    if kind_id == "time":
        return clock
    hours, minutes = f"extract('timezone_hour' FROM {column})", f"extract('timezone_minute' FROM {column})"
    sign = f"CASE WHEN {hours} < 0 OR {minutes} < 0 THEN '-' ELSE '+' END"
    return (f"{clock} || {sign} || lpad(CAST(abs({hours}) AS VARCHAR), 2, '0') || ':' || "
            f"lpad(CAST(abs({minutes}) AS VARCHAR), 2, '0')")


def table_text(text: str) -> str:
    """A cell of the table format on one line: a line break or tab inside a value (a quarantine
    reason, someone's note) as \\n, \\r, \\t, so that each row stays one line of the grid."""
    if text.isprintable():
        return text
    return "".join(_ESCAPES.get(c, c if c.isprintable() else f"\\x{ord(c):02X}" if ord(c) < 0x100 else c)
                   for c in text)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def display_width(text: str) -> int:
    """The columns `text` takes in a terminal: a wide character (CJK, most emoji) two, a combining
    mark none; len() counts characters, so a column of such ids was padded short."""
    if text.isascii():
        return len(text)
    return len(text) + sum((_char_width(c) - 1) * text.count(c) for c in set(text) if ord(c) > 0x7F)


@functools.lru_cache(maxsize=4096)
def _char_width(char: str) -> int:
    return 0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1

