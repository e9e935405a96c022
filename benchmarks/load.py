"""Search latency per mode (tiny model), hierarchical cold vs cached, and a bounded HTTP load test.

    python benchmarks/load.py [--home DIR] [--images 400] [--requests 2000] [--concurrency 16]

Builds (or reuses) HOME with the tiny model and a synthetic collection, measures `search()` in
process per mode, then serves the API on 127.0.0.1 (loopback only, a free port) and sends
`--requests` searches from `--concurrency` concurrent clients, printing errors, p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import threading
import time
from pathlib import Path

from harness import machine_line, percentiles_ms  # first: the offline environment

API_KEY = "bench-read-key"


def build_home(home: Path, images: int, patients: int) -> None:
    """Tiny model + synthetic data + full collection (image + 16 q_) + image-only copy."""
    from dermground.ingest.synth import generate_dataset
    from dermground.platform.embed import Embedder
    from dermground.platform.model.loading import load_backbone
    from dermground.platform.model.tiny import save_tiny_model
    from dermground.platform.records import LesionRecord, read_records
    from dermground.platform.store import DEFAULT_VECTOR_NAMES, CollectionSpec, StorePoint, build_payload, point_id
    from dermground.platform.store.edge import EdgeStore

    if (home / "qdrant" / "lesions" / "collection.json").exists():
        return
    model_dir = save_tiny_model(home / "models" / "base", seed=0, preset="tiny", image_size=112)
    generate_dataset(home / "data", patients=patients, images=images, seed=11, size=112, progress=False)
    backbone = load_backbone(model_dir, device="cpu", dtype="float32")
    records = [r for r in read_records(home / "data") if isinstance(r, LesionRecord)]
    started = time.perf_counter()
    emb = Embedder(backbone).embed([r.load_image() for r in records])
    print(f"embedded {len(records)} images in {time.perf_counter() - started:.1f} s")
    spec = CollectionSpec(dim=backbone.hidden_size, fingerprint=backbone.fingerprint, vector_names=DEFAULT_VECTOR_NAMES)
    for name, full in (("lesions", True), ("lesions_image_only", False)):
        with EdgeStore(home / "qdrant" / name, name) as store:
            store.ensure_collection(spec)
            points = []
            for i, r in enumerate(records):
                row = {"isic_id": r.isic_id, "patient_id": r.patient_id, "split": r.split, "image_ref": r.image_ref,
                       **r.attributes, **r.metadata}
                vectors = {"image": emb.h_im[i]} | ({f"q_{a}": m[i] for a, m in emb.h_im_a.items()} if full else {})
                points.append(StorePoint(point_id(r.isic_id), vectors, build_payload(row, backbone.fingerprint)))
            store.upsert(points)


def _ms(seconds: list[float]) -> str:
    p = percentiles_ms(seconds, (50, 99))
    return f"p50 {p[50]:7.1f} ms  p99 {p[99]:7.1f} ms  (n={len(seconds)})"


def per_mode_latency(home: Path, repeats: int) -> None:
    from dermground.platform.embed import Embedder
    from dermground.platform.model.loading import load_backbone
    from dermground.platform.embedder_provider import EmbedderProvider
    from dermground.platform.records import LesionRecord, read_records
    from dermground.platform.search import search
    from dermground.platform.search_request import SearchMode, SearchRequest
    from dermground.platform.settings import Settings
    from dermground.platform.store.edge import EdgeStore

    settings = Settings(home=home)
    backbone = load_backbone(home / "models" / "base", device="cpu", dtype="float32")
    provider = EmbedderProvider.of(Embedder(backbone))
    records = [r for r in read_records(home / "data") if isinstance(r, LesionRecord)]
    query_image = records[0].load_image()
    ids = [r.isic_id for r in records]
    area = ("areaMM2",)
    print(f"\n## search() in process, {len(records)} points, tiny model, 2-core CPU")
    with EdgeStore(home / "qdrant" / "lesions", "lesions") as store:
        cases = [("image", SearchMode.image, ()), ("image_text", SearchMode.image_text, area),
                 ("prefetch b=200", SearchMode.prefetch, area),
                 ("hierarchical b=200 (q_ stored)", SearchMode.hierarchical, area),
                 ("image_text 3 attributes", SearchMode.image_text, ("areaMM2", "deltaL", "norm_color"))]
        for label, mode, attrs in cases:
            for query_kind in ("isic_id", "upload"):
                times = []
                for i in range(repeats):
                    kwargs = {"isic_id": ids[i % len(ids)]} if query_kind == "isic_id" else {"image": query_image}
                    started = time.perf_counter()
                    search(SearchRequest(mode, attributes=attrs, k=5, b=200, **kwargs), store=store,
                           embedder=provider, settings=settings)
                    times.append(time.perf_counter() - started)
                print(f"{label:32s} by {query_kind:7s}: {_ms(times)}")
    # Hierarchical on an image-only collection: cold re-embeds b images, cached reads them back.
    scratch = home / "qdrant" / "scratch_image_only"
    for b in (50, 200):
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(home / "qdrant" / "lesions_image_only", scratch)
        with EdgeStore(scratch, "scratch") as store:
            request = SearchRequest(SearchMode.hierarchical, attributes=area, isic_id=ids[1], k=5, b=b, cache_vectors=True)
            started = time.perf_counter()
            cold = search(request, store=store, embedder=provider, settings=settings)
            cold_s = time.perf_counter() - started
            warm_times = []
            for _ in range(repeats):
                started = time.perf_counter()
                warm = search(request, store=store, embedder=provider, settings=settings)
                warm_times.append(time.perf_counter() - started)
        same = [h.isic_id for h in cold.hits] == [h.isic_id for h in warm.hits]
        print(f"hierarchical image-only b={b:3d}: cold {cold_s * 1000:7.1f} ms ({cold.reembedded} re-embedded), "
              f"cached {statistics.median(warm_times) * 1000:6.1f} ms median ({warm.reembedded} re-embedded); "
              f"cold/cached = {cold_s / statistics.median(warm_times):.0f}x; same ranking: {same}")
    shutil.rmtree(scratch, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_test(home: Path, requests: int, concurrency: int) -> None:
    import httpx
    import uvicorn

    from dermground.platform.api import create_app
    from dermground.platform.records import LesionRecord, read_records
    from dermground.platform.settings import Settings

    settings = Settings(home=home, api_read_key=API_KEY)
    ids = [r.isic_id for r in read_records(home / "data") if isinstance(r, LesionRecord)]
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           limit_concurrency=256))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    # Searches by isic_id (stored vectors: the store and the HTTP stack, not the model), mixed modes.
    bodies = []
    for i in range(requests):
        mode = ("image", "image_text", "prefetch", "hierarchical")[i % 4]
        body = {"isic_id": ids[i % len(ids)], "mode": mode, "k": 10, "b": 100,
                "filters": {"split": "train"} if i % 2 else {}, "exclude_query_patient": bool(i % 3 == 0)}
        if mode != "image":
            body["attributes"] = ["areaMM2"]
        bodies.append(body)

    async def run() -> tuple[list[float], list[str], float]:
        latencies: list[float] = []
        errors: list[str] = []
        queue: asyncio.Queue = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": API_KEY},
                                     limits=limits, timeout=60) as client:
            async def worker() -> None:
                while not queue.empty():
                    body = queue.get_nowait()
                    started = time.perf_counter()
                    try:
                        response = await client.post("/search", json=body)
                        if response.status_code != 200 or not response.json()["hits"]:
                            errors.append(f"{response.status_code}: {response.text[:200]}")
                    except httpx.HTTPError as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return latencies, errors, time.perf_counter() - started

    latencies, errors, wall = asyncio.run(run())
    server.should_exit = True
    thread.join(timeout=10)
    print(f"\n## HTTP load: {requests} POST /search (by isic_id, 4 modes mixed, k=10, b=100), concurrency {concurrency}, "
          f"{len(ids)} points")
    print(f"errors {len(errors)}  {_ms(latencies)}  throughput {requests / wall:.0f} req/s  wall {wall:.1f} s")
    for error in errors[:5]:
        print("  error:", error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("/tmp/dermground-load-bench"))
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.concurrency < 1 or args.requests < 1:
        parser.error("--requests and --concurrency must be >= 1")
    print(machine_line())
    build_home(args.home, args.images, args.patients)
    per_mode_latency(args.home, args.repeats)
    load_test(args.home, args.requests, args.concurrency)


if __name__ == "__main__":
    main()
