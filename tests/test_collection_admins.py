"""Two admins at once on the embedded store: `collections drop lesions v2` by one while the other runs
`collections switch lesions v2`. One of them must lose with a clear error; the name must never be
left pointing at a version that was deleted (measured before switches and drops were serialised:
in 8 of 12 rounds the drop removed v2 after the switch had made it live)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dermground.platform.settings import load_settings
from dermground.platform.store import open_collections
from dermground.platform.store.edge_versions import copy_sparse
from tests.version_homes import home_with_versions

ROUNDS = 5

# One admin: for each home read from stdin, run one operation on it at once and print the outcome.
_ADMIN = """
import sys
from dermground.platform.settings import load_settings
from dermground.platform.store import StoreError, open_collections
print("ready", flush=True)
for line in sys.stdin:
    with open_collections(load_settings(home=line.strip())) as cols:
        try:
            cols.drop("lesions", "v2") if sys.argv[1] == "drop" else cols.switch("lesions", "v2")
            print("ok", flush=True)
        except StoreError as exc:
            print("refused: " + str(exc).replace(chr(10), " "), flush=True)
"""


def test_a_drop_and_a_switch_of_one_version_at_once_never_leave_the_name_on_a_deleted_version(tmp_path: Path) -> None:
    golden = tmp_path / "golden"
    home_with_versions(golden, 2)
    admins = {op: subprocess.Popen([sys.executable, "-c", _ADMIN, op], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True) for op in ("drop", "switch")}
    try:
        for admin in admins.values():
            assert admin.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        for n in range(ROUNDS):
            home = tmp_path / f"round{n}"
            copy_sparse(golden, home)
            for admin in admins.values():  # both start together
                admin.stdin.write(f"{home}\n")  # type: ignore[union-attr]
                admin.stdin.flush()  # type: ignore[union-attr]
            outcome = {op: admin.stdout.readline().strip() for op, admin in admins.items()}  # type: ignore[union-attr]
            with open_collections(load_settings(home=home)) as cols:
                live, versions = cols.live_version("lesions"), cols.versions("lesions")
            assert live in versions, (n, live, versions, outcome)  # the live version was never deleted
            if outcome["drop"] == "ok":
                assert (live, versions) == ("v1", ["v1"]) and "has no version 'v2'" in outcome["switch"], outcome
            else:
                assert outcome["switch"] == "ok" and (live, versions) == ("v2", ["v1", "v2"]), outcome
                assert "live version" in outcome["drop"] or "in use" in outcome["drop"], outcome
    finally:
        for admin in admins.values():
            admin.stdin.close()  # type: ignore[union-attr]
            admin.wait(timeout=60)
