"""The ingest pipeline on a two-node Ray cluster builds exactly the collection a single node does.

The cluster run happens in a fresh Python (this test session already holds the shared local Ray):
it starts a `ray.cluster_utils.Cluster` (head with 1 CPU + a worker node with 1 CPU), and runs
`ingest_dataset(..., ray_address=cluster.address)` with two one-CPU actors, so one embeds on each node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dermground.ingest.consistency import check_collection
from dermground.ingest.pipeline import ingest_dataset
from dermground.ingest.synth import generate_dataset
from dermground.platform.catalog import Catalog
from dermground.platform.settings import load_settings
from dermground.platform.store import open_store

N_IMAGES = 24
PARTITION = 8

CLUSTER_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from ray.cluster_utils import Cluster
    import ray

    data, home, model = map(Path, sys.argv[1:4])
    store_mb = 100 * 1024 * 1024
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "object_store_memory": store_mb, "include_dashboard": False})
    cluster.add_node(num_cpus=1, object_store_memory=store_mb)
    cluster.wait_for_nodes()
    from dermground.ingest.pipeline import ingest_dataset
    from dermground.platform.settings import load_settings

    summary = ingest_dataset(data, "lesions", load_settings(home=home), model_dir=model, split="all",
                             partition_size=8, batch_size=4, actors=2, ray_address=cluster.address,
                             progress=False)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    print(json.dumps({"ingested": summary.ingested, "nodes": len(nodes),
                      "cpus": ray.cluster_resources().get("CPU")}))
    ray.shutdown()
    cluster.shutdown()
""")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cluster_data") / "data"
    generate_dataset(out, patients=6, images=N_IMAGES, seed=21, size=112, progress=False, workers=1)
    return out


def _collection(home: Path) -> dict[str, tuple[dict, dict]]:
    with open_store(load_settings(home=home), "lesions") as store:
        return {p.payload["isic_id"]: (p.payload, p.vectors)
                for p in store.iter_points(with_payload=True, with_vectors=True)}


def _catalog_rows(home: Path) -> list[dict]:
    rows = Catalog(home / "catalog").query("SELECT * EXCLUDE (run_id, written_at) FROM lesions ORDER BY isic_id")
    return rows


@pytest.mark.slow
def test_a_two_node_cluster_ingests_exactly_what_a_single_node_does(dataset, tiny_model_dir, ray_session, tmp_path):
    script = tmp_path / "cluster_ingest.py"
    script.write_text(CLUSTER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    done = subprocess.run([sys.executable, str(script), str(dataset), str(tmp_path / "cluster"), str(tiny_model_dir)],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"ingested": N_IMAGES, "nodes": 2, "cpus": 2.0}

    single = ingest_dataset(dataset, "lesions", load_settings(home=tmp_path / "single"), model_dir=tiny_model_dir,
                            split="all", partition_size=PARTITION, batch_size=4, progress=False)
    assert single.ingested == N_IMAGES
    for home in ("cluster", "single"):
        report = check_collection(load_settings(home=tmp_path / home), "lesions")
        assert report.ok, (home, report.findings)

    on_cluster, on_one_node = _collection(tmp_path / "cluster"), _collection(tmp_path / "single")
    assert sorted(on_cluster) == sorted(on_one_node)
    assert len(on_cluster) == N_IMAGES
    for isic_id, (payload, vectors) in on_one_node.items():
        cluster_payload, cluster_vectors = on_cluster[isic_id]
        assert cluster_payload == payload
        assert set(cluster_vectors) == set(vectors)
        for name, vector in vectors.items():
            np.testing.assert_allclose(cluster_vectors[name], vector, atol=1e-5, err_msg=f"{isic_id} {name}")
    assert _catalog_rows(tmp_path / "cluster") == _catalog_rows(tmp_path / "single")
