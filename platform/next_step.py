"""The dermground commands that errors and reports tell a user to run next, spelled to act where this run acted.

A user who ran `dermground --home /data/x ingest --qdrant-url http://q:6333 ...` and is told to run
`dermground collections switch lesions v2` would switch the default home's collection, or the
embedded store's: a suggestion must carry the selectors this run was given. The CLI records them
(the root's `--home`; a command's `--qdrant-url`, which other commands take from the environment)
and every suggestion is built here with `next_command`.
"""

from __future__ import annotations

import shlex
from pathlib import Path

# Flags of the root command, in the order given: ("--home", "/data/x").
_root_flags: list[tuple[str, str]] = []
# Settings a command's flag overrode that the suggested command may not take as a flag: set in its environment.
_environment: dict[str, str] = {}


def carry_root_flag(flag: str, value: str | Path | None) -> None:
    """Every later suggestion passes `flag value` to `dermground` (nothing when value is None)."""
    if value is not None:
        _root_flags.append((flag, str(value)))


def carry_setting(variable: str, value: str | None) -> None:
    """Every later suggestion runs with `variable=value` in its environment (nothing when value is None)."""
    if value:
        _environment[variable] = value


def forget_carried() -> None:
    """Suggestions plain again (the CLI calls it at the start and end of each invocation)."""
    _root_flags.clear()
    _environment.clear()


def next_command(args: str) -> str:
    """`dermground ARGS` as the user should type it now: with the home and store this run was given.

    ARGS is the rest of the command line, already quoted where it needs to be
    (`collections switch lesions v2` -> `dermground --home /data/x collections switch lesions v2`)."""
    words = [f"{variable}={shlex.quote(value)}" for variable, value in _environment.items()]
    words.append("dermground")
    words += [f"{flag} {shlex.quote(value)}" for flag, value in _root_flags]
    return " ".join([*words, args])
