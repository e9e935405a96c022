"""Listing versions (`collections list`, GET /collections) while another process creates and drops
versions (a `snapshot create` or `check` copies the served version into a scratch version and drops
it): a version dropped between the listing and its details is left out, not an error (GET
/collections answered 503 "collection 'lesions' has no version 'v4'" while `check` ran)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dermground.platform.settings import load_settings
from dermground.platform.store import open_collections
from dermground.platform.store.versions import BUILDING, READY, VersionMeta

LISTINGS = 300

# Another admin: create and drop a scratch version of `lesions`, over and over, until told to stop.
_CHURN = """
import sys, select
from dermground.platform.settings import load_settings
from dermground.platform.store import open_collections
from dermground.platform.store.versions import BUILDING, VersionMeta
with open_collections(load_settings(home=sys.argv[1])) as cols:
    print("ready", flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:
        cols.drop("lesions", cols.create_version("lesions", VersionMeta(source="snapshot of v1", state=BUILDING)))
"""


def test_listing_while_versions_come_and_go_never_fails(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = load_settings(home=home)
    with open_collections(settings) as cols:
        version = cols.create_version("lesions", VersionMeta(state=BUILDING))
        cols.write_meta("lesions", version, VersionMeta(state=READY, points=0))
    churn = subprocess.Popen([sys.executable, "-c", _CHURN, str(home)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert churn.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        with open_collections(settings) as cols:
            for _ in range(LISTINGS):
                listed = cols.list("lesions", count=False)
                assert "v1" in [info.version for info in listed]
    finally:
        churn.stdin.write("stop\n")  # type: ignore[union-attr]
        churn.stdin.close()  # type: ignore[union-attr]
        churn.wait(timeout=60)
