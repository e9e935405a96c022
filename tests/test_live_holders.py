"""The records that name the process holding something (an embedded store's owner file), as the
commands that run beside it read them: a holder that died is never taken for a running one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dermground.platform.store import CollectionSpec, VersionMeta
from dermground.platform.store.edge_versions import EdgeCollections
from dermground.platform.store.versions import READY, physical_name

DIM = 8

# Opens the version's store and ends without closing it (as a killed process does): its owner
# file stays behind, naming a pid that is gone.
_DIE_HOLDING = """
import os, sys
from dermground.platform.store.edge import EdgeStore
EdgeStore(sys.argv[1], sys.argv[2])
os._exit(0)
"""


def _version(cols: EdgeCollections, name: str) -> str:
    version = cols.create_version(name, VersionMeta(source="test"))
    with cols.open_version(name, version) as store:
        store.ensure_collection(CollectionSpec(dim=DIM, fingerprint="fp"))
    cols.write_meta(name, version, VersionMeta(source="test", state=READY, points=0))
    return version


def test_a_dead_holder_whose_pid_now_names_another_process_is_not_taken_for_a_holder(tmp_path: Path) -> None:
    cols = EdgeCollections(tmp_path / "store")
    version = _version(cols, "c")
    folder = cols.store_dir / physical_name("c", version)
    dead = subprocess.run([sys.executable, "-c", _DIE_HOLDING, str(folder), physical_name("c", version)],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert dead.returncode == 0, dead.stderr
    owner_file = folder / "owner.json"
    owner = json.loads(owner_file.read_text())
    assert owner["pid"] != os.getpid()
    assert cols.holder("c", version) is None  # its pid is gone
    # The pid is reused: it now names a running process (this one), which started at another time.
    owner_file.write_text(json.dumps({**owner, "pid": os.getpid()}))
    assert cols.holder("c", version) is None
    assert not cols.held_elsewhere("c", version)
    # The record itself still counts while its process runs: this process holding the version.
    with cols.open_version("c", version):
        assert cols.holder("c", version) is not None
