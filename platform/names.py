"""Names that become paths: collection names and record ids.

A collection name is a folder under HOME (the embedded store, snapshots) and a key in the catalog;
an isic_id in the folder layout is a file name inside the data folder. Both are checked where they
enter (CLI flag, environment, API settings, snapshot, reader), so `../../x`, an absolute path or
a name with a separator can never reach the file system.
"""

from __future__ import annotations

import re
import unicodedata

# Also the settings' pattern for DERMGROUND_COLLECTION (platform/settings.py).
COLLECTION_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"
_COLLECTION = re.compile(COLLECTION_PATTERN)
# Plain file names: no separator, no NUL or other control character, not "." / "..", not hidden.
_MAX_FILE_NAME = 200
_FORBIDDEN_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")


class InvalidNameError(ValueError):
    """A name that cannot be used where it would become a path; the message says what is allowed."""


def check_collection_name(name: object) -> str:
    """The name when it is a valid collection name (1-64 of A-Z a-z 0-9 _ -); InvalidNameError otherwise."""
    if not isinstance(name, str) or not _COLLECTION.fullmatch(name):
        raise InvalidNameError(f"invalid collection name {name!r}: use 1-64 letters, digits, '_' or '-' "
                               "(a collection name becomes a folder name under HOME)")
    return name


def check_plain_file_name(name: str, what: str = "name") -> str:
    """`name` when it is a plain file name (no folder part, not absolute, not hidden, no control
    characters, at most 200 characters); InvalidNameError naming `what` otherwise."""
    if (not name or len(name) > _MAX_FILE_NAME or _FORBIDDEN_CHARS.search(name) or name.startswith(".")
            or name != name.strip()):
        raise InvalidNameError(f"{what} {name[:80]!r} is not a plain file name: no '/', '\\', leading '.', "
                               f"control characters or surrounding spaces, at most {_MAX_FILE_NAME} characters")
    return name


def unicode_spellings(name: str) -> list[str]:
    """`name`, then its composed (NFC) and decomposed (NFD) spellings where they differ: one text on
    screen, but a CSV may hold one (as typed) and file names the other (macOS and zip archives made
    there write names decomposed), or a stored id one and a typed query the other."""
    if name.isascii():
        return [name]
    spellings = [name]
    for form in ("NFC", "NFD"):
        spelled = unicodedata.normalize(form, name)
        if spelled not in spellings:
            spellings.append(spelled)
    return spellings
