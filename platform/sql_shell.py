"""`dermground sql` without a query: an interactive shell over the catalog views.

Statements end with `;` and may span lines; each one runs through the same read-only guard as a
one-shot query (run_readonly_sql). Input history is kept in a file (readline) when stdin is a
terminal. Dot commands: .tables, .schema [VIEW], .help, .quit. Piped input (`dermground sql
< queries.sql`) runs the same way, without prompts, and stops at the first refused statement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import duckdb

from dermground.platform.sql_tokens import token_starts

PROMPT, CONTINUE = "sql> ", "  -> "
HELP = """Statements end with ';' and may span several lines. Only SELECT (and WITH ... SELECT) runs.
  .tables          list the views
  .schema [VIEW]   columns with type, unit and meaning (all views without a name)
  .help            this text
  .quit            leave (also Ctrl-D)"""


def split_statements(text: str) -> list[str]:
    """The statements of `text` as DuckDB parses them (a `;` inside a string does not split).
    Text that does not parse comes back whole, so the guard reports the parse error."""
    try:
        parts = [s.query.strip().rstrip(";").rstrip() for s in duckdb.extract_statements(text)]
        return [part for part in parts if part]
    except duckdb.Error:
        return [text.strip()]


def complete(buffer: str) -> bool:
    """True when the buffered text is one or more statements ended by `;`: a comment may follow it
    (`SELECT 1; -- why`), and a `;` in a comment or a string does not count."""
    try:
        tokens = [start for start, kind in token_starts(buffer) if kind != duckdb.token_type.comment]
    except duckdb.Error:
        return buffer.rstrip().endswith(";")
    return bool(tokens) and buffer[tokens[-1]] == ";"


CANCEL = "\x03"  # a line that drops the statement being typed (Ctrl-C at the prompt)


def statements(lines: Iterable[str]) -> Iterator[str]:
    """Group input lines into statements and dot commands (a dot command is one line)."""
    buffer = ""
    for line in lines:
        if line == CANCEL:
            buffer = ""
            continue
        if not buffer.strip() and line.strip().startswith("."):
            yield line.strip()
            continue
        buffer += line if line.endswith("\n") else line + "\n"
        if complete(buffer):
            yield from split_statements(buffer)
            buffer = ""
    if buffer.strip():
        yield from split_statements(buffer)


def run(items: Iterable[str], *, execute: Callable[[str], str], views: Callable[[], list[str]],
        schema: Callable[[str | None], str], echo: Callable[[str], None],
        error: Callable[[str], None], stop_on_error: bool) -> int:
    """Run statements and dot commands; returns the exit status (1 when a statement failed).

    `execute` returns the rendered result or raises ValueError with a message for the user.
    """
    status = 0
    for item in items:
        if item.startswith("."):
            # `.schema lesions;`: users end a dot command with ';' as they end every statement.
            command, _, argument = item.rstrip().rstrip(";").partition(" ")
            if command in (".quit", ".exit"):
                break
            if command == ".help":
                echo(HELP)
            elif command == ".tables":
                echo("  ".join(views()))
            elif command == ".schema":
                try:
                    echo(schema(argument.strip() or None))
                except ValueError as exc:
                    error(str(exc))
                    status = 1
            else:
                error(f"unknown command {command}; .help lists them")
                status = 1
        else:
            try:
                echo(execute(item))
            except ValueError as exc:
                error(str(exc))
                status = 1
        if status and stop_on_error:
            break
    return status


def terminal_lines(history_file: Path) -> Iterator[str]:
    """Lines typed at the terminal, with readline editing and a persistent history."""
    try:
        import readline
    except ImportError:  # not on every platform: the shell still works, without history
        readline = None  # type: ignore[assignment]
    keep_history = readline is not None
    if readline is not None:
        readline.set_history_length(2000)
        try:
            history_file.parent.mkdir(parents=True, exist_ok=True)
            if history_file.exists():
                readline.read_history_file(history_file)
        except OSError as exc:  # another user's home, a read-only mount: the shell works without it
            _history_not_kept(history_file, exc)
            keep_history = False
    prompt = PROMPT
    buffered = False
    try:
        while True:
            try:
                line = input(prompt)
            except EOFError:
                print()
                return
            except KeyboardInterrupt:  # Ctrl-C drops the statement being typed, as psql does
                print()
                prompt, buffered = PROMPT, False
                yield CANCEL
                continue
            buffered = buffered or bool(line.strip())
            yield line
            if line.strip().startswith(".") and prompt == PROMPT:
                continue
            ended = complete(line)
            prompt = PROMPT if ended or not buffered else CONTINUE
            buffered = buffered and not ended
    finally:
        if keep_history:
            try:
                readline.write_history_file(history_file)
            except OSError as exc:
                _history_not_kept(history_file, exc)


def _history_not_kept(history_file: Path, exc: OSError) -> None:
    import sys

    print(f"note: the shell's history is not kept: {history_file}: {exc.strerror or exc} (the shell works; "
          "statements typed now are not remembered for the next session)", file=sys.stderr)
