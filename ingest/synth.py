"""Synthetic SLICE-3D: simulated patients, rendered lesion crops, attributes measured from pixels.

Each image is rendered with numpy (lesion = irregular blob from random Fourier radial
perturbations, with colour gradient and blotches, on textured skin with optional hair, 15 mm
field of view), JPEG-encoded with Pillow at a fixed quality, decoded again, and the 16
attributes are *measured* from the decoded pixels and the mask (`platform.attribute_measure`), so
they are true functions of the image. The generative parameters (size, elongation, irregularity,
darkness, hue, skin tone, texture, blotches, gradient) are drawn independently, so attributes
vary fairly independently too.

Determinism: every image draws from its own generator seeded by (seed, index) and every patient
from (seed, patient), so the output is byte-identical for a seed whatever the worker count.
"""

from __future__ import annotations

import csv
import io
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dermground.platform import isic_format as fmt
from dermground.platform.attribute_measure import lab_to_srgb8, measure
from dermground.platform.attributes import ATTRIBUTES
from dermground.platform.metadata_fields import vocabulary
from dermground.platform.records import DEFAULT_TEST_FRACTION, assign_split

JPEG_QUALITY = 92
CHUNK = 64  # images per worker task: large enough to amortise pickling, small for progress
_PATIENT_STREAM, _IMAGE_STREAM, _ASSIGN_STREAM = 1, 2, 3
_THETA_BINS = 1024  # the radial profile is tabulated, then looked up per pixel


class DataSetExistsError(FileExistsError):
    """`out` already holds a data set and overwrite was not asked for; `found` is the first file found there."""

    def __init__(self, out: Path, found: str) -> None:
        super().__init__(f"{out} already holds a data set ({found}); pass overwrite=True or choose an empty folder")
        self.out, self.found = out, found


@dataclass(frozen=True)
class Patient:
    """What stays the same across one simulated patient's lesions."""

    patient_id: str
    skin_lab: tuple[float, float, float]
    age_approx: int
    sex: str
    hair: float  # expected hair strands per crop
    sites: tuple[str, ...]  # the anatomical sites this patient's lesions favour


@dataclass(frozen=True)
class DatasetSummary:
    """What `generate_dataset` wrote."""

    out: Path
    layout: str
    images: int
    patients: int
    split_counts: dict[str, int]
    attribute_stats: dict[str, tuple[float, float, float]]  # registry name -> (min, median, max)
    seconds: float
    workers: int = 1
    files: tuple[Path, ...] = field(default=())

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")


def make_patient(seed: int, index: int) -> Patient:
    """The simulated patient number `index` (deterministic in seed and index)."""
    rng = np.random.default_rng([seed, _PATIENT_STREAM, index])
    # Skin from very fair to dark: L* 35-80; redness and yellowness vary on their own.
    skin = (float(rng.uniform(35, 80)), float(rng.uniform(4, 18)), float(rng.uniform(8, 26)))
    n_sites = int(rng.integers(1, 4))
    sites = tuple(str(s) for s in rng.choice(vocabulary("anatom_site_general"), size=n_sites, replace=False))
    return Patient(
        patient_id=f"IP_{1_000_000 + index * 7 + seed % 7:07d}",
        skin_lab=skin,
        age_approx=int(rng.integers(4, 18)) * 5,
        sex=str(rng.choice(vocabulary("sex"))),
        hair=float(rng.choice([0.0, 0.0, 1.0, 3.0])),
        sites=sites,
    )


def assign_patients(seed: int, patients: int, images: int) -> np.ndarray:
    """Patient index of each image: every patient gets one lesion first, then skewed counts."""
    rng = np.random.default_rng([seed, _ASSIGN_STREAM])
    if images <= patients:
        return np.arange(images)
    weights = rng.gamma(1.0, 1.0, size=patients)  # some patients have many more lesions
    extra = rng.choice(patients, size=images - patients, p=weights / weights.sum())
    order = np.concatenate([np.arange(patients), extra])
    rng.shuffle(order)
    return order


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise: a random coarse grid upsampled bicubically."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))


def render_lesion(rng: np.random.Generator, skin_lab: tuple[float, float, float], hair: float,
                  size: int) -> tuple[np.ndarray, np.ndarray]:
    """One crop: sRGB uint8 (size, size, 3) and the boolean lesion mask."""
    mm = fmt.FIELD_OF_VIEW_MM / size
    coords = ((np.arange(size) + 0.5) * mm - fmt.FIELD_OF_VIEW_MM / 2).astype(np.float32)
    x, y = np.meshgrid(coords, coords)

    # --- shape: ellipse x Fourier radial profile, area-preserving elongation, rotation
    diameter = math.exp(rng.uniform(math.log(1.0), math.log(12.0)))
    aspect = float(rng.uniform(1.0, 2.2))
    rotation = float(rng.uniform(0, math.pi))
    irregular = float(rng.uniform(0, 1)) ** 1.3
    jagged = float(rng.uniform(0, 1)) ** 2
    ks = np.arange(2, 21)
    amps = np.where(ks <= 8, 0.5 * irregular * ks**-0.7, 0.12 * jagged * ks**-0.5)
    amps = amps * rng.uniform(0.3, 1.0, size=ks.size)
    amps *= min(1.0, 0.75 / amps.sum())  # keep the radius positive everywhere
    phases = rng.uniform(0, 2 * math.pi, size=ks.size)
    table_theta = np.linspace(-math.pi, math.pi, _THETA_BINS, endpoint=False)
    profile = 1.0 + (amps[:, None] * np.cos(ks[:, None] * table_theta + phases[:, None])).sum(0)
    semi_major = diameter / 2 * math.sqrt(aspect)
    # Keep the lesion inside the field of view with a margin of skin around it.
    scale = min(1.0, 6.6 / (semi_major * profile.max()))
    shift = min(1.2, max(0.0, 6.6 - scale * semi_major * profile.max()))
    cx, cy = (float(c) for c in rng.uniform(-shift, shift, size=2))
    a_axis = diameter / 2 * math.sqrt(aspect) * scale
    b_axis = diameter / 2 / math.sqrt(aspect) * scale
    cos_r, sin_r = math.cos(rotation), math.sin(rotation)
    u = ((x - cx) * cos_r + (y - cy) * sin_r) / a_axis
    v = (-(x - cx) * sin_r + (y - cy) * cos_r) / b_axis
    rho = np.hypot(u, v)
    theta_idx = ((np.arctan2(v, u) + math.pi) * (_THETA_BINS / (2 * math.pi))).astype(np.int64)
    radius = profile.astype(np.float32)[np.minimum(theta_idx, _THETA_BINS - 1)]
    rel = rho / radius  # < 1 inside the lesion, 0 at its centre
    mask = rel < 1.0
    if np.count_nonzero(mask) < 4:  # a tiny lesion that fell between pixel centres
        mask = rel <= np.partition(rel.ravel(), 4)[4]

    # --- skin: the patient's tone, site jitter, lighting gradient, texture, fine grain
    lab = np.empty((size, size, 3), dtype=np.float32)
    skin = (np.asarray(skin_lab) + rng.normal(0, [2.0, 1.0, 1.0])).astype(np.float32)
    texture = float(rng.uniform(0.3, 5.0))
    lighting = [float(v) / 7.5 for v in rng.normal(0, 1.5, size=2)]
    lab[...] = skin
    lab[..., 0] += texture * _smooth_noise(rng, size, 10) + lighting[0] * x + lighting[1] * y
    lab[..., 0] += rng.normal(0, 0.2 + 0.25 * texture, size=(size, size)).astype(np.float32)
    lab[..., 1] += 0.4 * texture * _smooth_noise(rng, size, 6)

    # --- lesion colour: darkness and hue independent of skin; gradient and blotches inside
    darkness = float(rng.uniform(3, 45))
    lesion = np.array([skin[0] - darkness, skin[1] + rng.uniform(-1, 16), skin[2] + rng.uniform(-14, 12)])
    lesion[0] = max(lesion[0], 8.0)
    gradient = float(rng.uniform(-14, 14))  # L* change from centre to rim
    lesion_lab = np.broadcast_to(lesion, lab.shape).astype(np.float32).copy()
    lesion_lab[..., 0] += gradient * (np.clip(rel, 0, 1) - 0.5)
    blotch_strength = float(rng.uniform(0, 1)) ** 1.5 * 18
    for _ in range(int(rng.integers(0, 6))):
        angle, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.8)
        bx = cx + dist * (a_axis * math.cos(angle) * cos_r - b_axis * math.sin(angle) * sin_r)
        by = cy + dist * (a_axis * math.cos(angle) * sin_r + b_axis * math.sin(angle) * cos_r)
        sigma = rng.uniform(0.15, 0.45) * b_axis * 1.5
        weight = np.exp(((x - bx) ** 2 + (y - by) ** 2) * np.float32(-0.5 / sigma**2))
        direction = rng.normal(0, 1, size=3) * [1.0, 0.6, 0.6]
        direction /= max(1e-6, float(np.linalg.norm(direction)))
        lesion_lab += weight[..., None] * (blotch_strength * direction).astype(np.float32)
    edge_mm = float(rng.uniform(0.03, 0.3))  # soft border width
    alpha = np.clip((1.0 - rel) * (a_axis + b_axis) / 2 / edge_mm + 0.5, 0.0, 1.0)[..., None]
    lab = lab * (1 - alpha) + (lesion_lab + (lab - skin)) * alpha  # keep skin texture on top

    # --- hair: thin dark strands crossing the crop
    for _ in range(int(rng.poisson(hair))):
        px, py = rng.uniform(-7.5, 7.5, size=2)
        angle = rng.uniform(0, math.pi)
        distance = np.abs((x - px) * math.sin(angle) - (y - py) * math.cos(angle))
        width = rng.uniform(0.06, 0.14)
        strand = np.clip(1.0 - distance / width, 0.0, 1.0)[..., None]
        lab = lab * (1 - strand) + np.array([18.0, 4.0, 8.0], dtype=np.float32) * strand

    rgb = lab_to_srgb8(lab)
    return rgb, mask


def encode_jpeg(rgb: np.ndarray) -> bytes:
    """JPEG bytes with fixed settings, so the same pixels always give the same bytes."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=2, optimize=False)
    return buffer.getvalue()


def _fmt(value: float, decimals: int = 4) -> str:
    return f"{value:.{decimals}f}"


def synth_image(seed: int, index: int, patient: Patient, size: int) -> tuple[str, bytes, dict[str, str]]:
    """Render, encode, decode, measure: (isic_id, JPEG bytes, CSV row) of image `index`."""
    rng = np.random.default_rng([seed, _IMAGE_STREAM, index])
    rgb, mask = render_lesion(rng, patient.skin_lab, patient.hair, size)
    jpeg = encode_jpeg(rgb)
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    m = measure(decoded, mask, fmt.FIELD_OF_VIEW_MM / size)
    isic_id = f"ISIC_{index + 1:07d}"

    site = str(rng.choice(patient.sites))
    simple_choices, location_choices = fmt.SITE_LOCATIONS[site]
    # Malignancy is rare and, as in the real data, likelier for irregular, varied lesions.
    risk = 0.004 + 0.03 * m.attributes["norm_border"] / 10 + 0.03 * m.attributes["norm_color"] / 10
    target = int(rng.uniform() < risk)
    row: dict[str, str] = {c: "" for c in fmt.METADATA_COLUMNS}
    row.update({
        "isic_id": isic_id,
        "target": str(target),
        "patient_id": patient.patient_id,
        "age_approx": str(patient.age_approx),
        "sex": patient.sex,
        "anatom_site_general": site,
        "image_type": str(vocabulary("image_type")[0]),
        "tbp_tile_type": str(rng.choice(vocabulary("tbp_tile_type"))),
        "tbp_lv_location": str(rng.choice(location_choices)),
        "tbp_lv_location_simple": str(rng.choice(simple_choices)),
        "tbp_lv_nevi_confidence": _fmt(rng.uniform(0, 100) if not target else rng.uniform(0, 30)),
        "tbp_lv_symm_2axis": _fmt(rng.uniform(0.1, 0.6)),
        "tbp_lv_symm_2axis_angle": str(int(rng.integers(0, 36)) * 5),
        "tbp_lv_x": _fmt(rng.uniform(-300, 300)),
        "tbp_lv_y": _fmt(rng.uniform(0, 1800)),
        "tbp_lv_z": _fmt(rng.uniform(-150, 150)),
        "tbp_lv_dnn_lesion_confidence": _fmt(rng.uniform(50, 100)),
        "attribution": "dermground synthetic",
        "copyright_license": "CC-0",
        "iddx_full": "Malignant::Malignant melanocytic proliferations (Melanoma)::Melanoma, NOS"
        if target else "Benign",
        "iddx_1": "Malignant" if target else "Benign",
    })
    if target:
        row.update({"lesion_id": f"IL_{index + 1:07d}", "iddx_2": "Malignant melanocytic proliferations (Melanoma)",
                    "iddx_3": "Melanoma, NOS", "mel_thick_mm": _fmt(rng.uniform(0.1, 2.0), 2)})
    for attribute in ATTRIBUTES:
        row[attribute.isic_column] = _fmt(m.attributes[attribute.name])
    for column, value in m.extras.items():
        row[column] = _fmt(value)
    return isic_id, jpeg, row


def _render_chunk(task: tuple[int, int, int, int, list[Patient]]) -> list[tuple[str, bytes, dict[str, str]]]:
    seed, start, stop, size, patients = task
    return [synth_image(seed, i, patients[i - start], size) for i in range(start, stop)]


def _chunks(seed: int, size: int, owners: np.ndarray, table: list[Patient]) -> Iterator[tuple]:
    for start in range(0, len(owners), CHUNK):
        stop = min(start + CHUNK, len(owners))
        yield seed, start, stop, size, [table[p] for p in owners[start:stop]]


def generate_dataset(out: Path, patients: int, images: int, seed: int, size: int = 128,
                     layout: str = "hdf5", progress: bool = True, workers: int | None = None,
                     overwrite: bool = False,
                     test_fraction: float = DEFAULT_TEST_FRACTION) -> DatasetSummary:
    """Write a synthetic data set in the ISIC 2024 format to `out` and summarise it."""
    if layout not in fmt.LAYOUTS:
        raise ValueError(f"layout must be one of {fmt.LAYOUTS}, got {layout!r}")
    if patients < 1 or images < 1:
        raise ValueError("patients and images must both be at least 1")
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    out = Path(out)
    csv_path, h5_path, image_dir = out / fmt.METADATA_FILE, out / fmt.HDF5_FILE, out / fmt.IMAGE_FOLDER
    existing = [p for p in (csv_path, h5_path, image_dir) if p.exists()]
    if existing and not overwrite:
        raise DataSetExistsError(out, existing[0].name)
    out.mkdir(parents=True, exist_ok=True)
    if layout == "folder":
        image_dir.mkdir(parents=True, exist_ok=True)
    elif h5_path.exists():
        h5_path.unlink()

    started = time.perf_counter()
    owners = assign_patients(seed, patients, images)
    # Only the patients that get an image (all of them unless --patients exceeds --images): building a
    # table of millions for a handful of images took minutes.
    table = [make_patient(seed, p) for p in range(min(patients, images))]
    workers = max(1, min(workers or os.cpu_count() or 1, math.ceil(images / CHUNK)))
    tasks = _chunks(seed, size, owners, table)

    import h5py  # imported here: only writers need it
    from dermground.platform.progress import progress_bar

    values: dict[str, list[float]] = {a.name: [] for a in ATTRIBUTES}
    split_counts = {"train": 0, "test": 0}
    h5 = h5py.File(h5_path, "w", libver=("earliest", "v110"), track_order=False) if layout == "hdf5" else None
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(_render_chunk, tasks) if pool else map(_render_chunk, tasks)
        with open(csv_path, "w", newline="", encoding="utf-8") as handle, \
                progress_bar(total=images, unit="img", desc="synth", disable=not progress) as bar:
            writer = csv.DictWriter(handle, fieldnames=fmt.METADATA_COLUMNS, lineterminator="\n")
            writer.writeheader()
            for chunk in results:
                for isic_id, jpeg, row in chunk:
                    if h5 is not None:
                        # Opaque bytes, no timestamps: the same data gives the same file bytes.
                        h5.create_dataset(isic_id, data=np.void(jpeg), track_times=False)
                    else:
                        (image_dir / f"{isic_id}.jpg").write_bytes(jpeg)
                    writer.writerow(row)
                    split_counts[assign_split(row["patient_id"], test_fraction)] += 1
                    for attribute in ATTRIBUTES:
                        values[attribute.name].append(float(row[attribute.isic_column]))
                bar.update(len(chunk))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if h5 is not None:
            h5.close()
    if layout == "folder" and h5_path.exists():
        # The replaced data set's images: readers take train-image.hdf5 before train-image/ (records.detect_layout),
        # so left here it would give the new rows the old images. Removed once the new ones are all written.
        h5_path.unlink()
    seconds = time.perf_counter() - started
    stats = {name: (min(v), statistics.median(v), max(v)) for name, v in values.items()}
    files = (csv_path, h5_path if layout == "hdf5" else image_dir)
    return DatasetSummary(out=out, layout=layout, images=images, patients=min(patients, images),
                          split_counts=split_counts, attribute_stats=stats, seconds=seconds,
                          workers=workers, files=files)
