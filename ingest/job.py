"""One ingest run, described once: what to read, where to write it, and how to embed.

    job = IngestJob.build(Path("data"), "lesions", load_settings(), model_dir=Path("models/base"))
    summary = run_ingest(job)

The CLI builds the job (checking every value before anything is written) and each level of the
pipeline reads what it needs from it, instead of a bundle of arguments handed down.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from dermground.ingest.partitions import DEFAULT_PARTITION_SIZE
from dermground.platform.model.patch_dtype import PatchDtype, model_patch_dtype
from dermground.platform.names import check_collection_name
from dermground.platform.records import Split
from dermground.platform.settings import Settings
from dermground.platform.store.indexing import check_index_min_points

# Which records an ingest reads: one side of the patient split (platform.records.Split) or all.
SplitSelection = Literal["train", "test", "all"]


@dataclass(frozen=True)
class IngestOptions:
    """How the pipeline runs (saved with the run in the catalog's ingest_runs)."""

    split: SplitSelection = "train"
    partition_size: int = DEFAULT_PARTITION_SIZE
    batch_size: int = 8
    actors: int = 1
    cpus_per_actor: float | None = None  # None: the cluster's CPUs shared evenly by the actors
    gpus_per_actor: float = 0.0
    device: str = "auto"
    dtype: str = "auto"


@dataclass(frozen=True)
class IngestJob:
    """A checked ingest request with every default resolved from the settings.

    `settings` is the run's environment (home, store, catalog, Ray, image limits) with the
    job's index threshold applied, so the store opened for the run indexes accordingly.
    """

    data_dir: Path
    collection: str
    settings: Settings
    model_dir: Path
    adapter_dir: Path | None
    options: IngestOptions
    ray_address: str | None = None
    new_version: bool = False
    version: str | None = None

    @classmethod
    def build(cls, data_dir: Path, collection: str, settings: Settings, *, model_dir: Path | None = None,
              adapter_dir: Path | None = None, split: SplitSelection = "train", partition_size: int = DEFAULT_PARTITION_SIZE,
              batch_size: int = 8, actors: int = 1, cpus_per_actor: float | None = None,
              gpus_per_actor: float = 0.0, ray_address: str | None = None, new_version: bool = False,
              version: str | None = None, index_min_points: int | None = None) -> IngestJob:
        """Check the request (ValueError / InvalidNameError naming the value) and fill in defaults.

        model_dir / adapter_dir default to the settings' model and adapter; ray_address to the
        settings' cluster; index_min_points (0 = never build the index) to
        settings.store_index_min_points."""
        check_collection_name(collection)  # before anything is written under HOME
        if split not in get_args(SplitSelection):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        if actors < 1 or batch_size < 1:
            raise ValueError("actors and batch_size must be at least 1")
        if partition_size < 1:
            raise ValueError(f"partition size must be at least 1, got {partition_size}")
        if index_min_points is not None:
            settings = settings.model_copy(update={"store_index_min_points": check_index_min_points(index_min_points)})
        options = IngestOptions(split, partition_size, batch_size, actors, cpus_per_actor, gpus_per_actor,
                                settings.device, settings.dtype)
        return cls(data_dir=Path(data_dir), collection=collection, settings=settings,
                   model_dir=Path(model_dir or settings.base_model_dir),
                   adapter_dir=adapter_dir if adapter_dir is not None else settings.adapter_dir,
                   options=options, ray_address=ray_address or settings.ray_address,
                   new_version=new_version, version=version)

    @property
    def source(self) -> str:
        """The data folder as recorded in the catalog and the version's metadata."""
        return str(self.data_dir.resolve())

    @property
    def reader_split(self) -> Split | None:
        return None if self.options.split == "all" else self.options.split

    def actor_arguments(self, fingerprint: str, threads: int) -> dict[str, object]:
        """The embedding actor's constructor arguments (plain values: they travel to Ray workers)."""
        return {"model_dir": str(self.model_dir), "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None,
                "expected_fingerprint": fingerprint, "device": self.options.device, "dtype": self.options.dtype,
                "batch_size": self.options.batch_size, "num_threads": max(1, threads),
                "patch_dtype": self.patch_dtype}

    def prep_arguments(self) -> dict[str, object]:
        """The CPU stage's constructor arguments (ingest/image_prep.py): where the image processor
        is, the image gate's pixel limit and the dtype the patches travel in."""
        return {"model_dir": str(self.model_dir), "max_pixels": self.settings.max_image_pixels,
                "patch_dtype": self.patch_dtype}

    @property
    def patch_dtype(self) -> PatchDtype:
        """The dtype the CPU stage sends image patches in: the actors' model's (patch_dtype.py)."""
        return model_patch_dtype(self.options.device, self.options.dtype, self.options.gpus_per_actor)
