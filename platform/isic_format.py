"""The ISIC 2024 / SLICE-3D on-disk format: file names, CSV columns, body-site locations.

A data folder holds `train-metadata.csv` and the images either in `train-image.hdf5`
(one dataset per isic_id holding the JPEG bytes) or as `train-image/image/<isic_id>.jpg`.
The synthetic generator writes exactly this format, so a real download drops in unchanged. The
metadata columns a lesion keeps, and their vocabularies, are declared in platform/metadata_fields.py.
"""

from __future__ import annotations

from typing import Literal

from dermground.platform.attributes import ATTRIBUTES

METADATA_FILE = "train-metadata.csv"
HDF5_FILE = "train-image.hdf5"
IMAGE_FOLDER = "train-image/image"
FIELD_OF_VIEW_MM = 15.0  # every SLICE-3D crop covers 15 mm x 15 mm

Layout = Literal["hdf5", "folder"]
LAYOUTS: tuple[str, ...] = ("hdf5", "folder")

# The full column set of the ISIC 2024 challenge `train-metadata.csv`, in its order.
METADATA_COLUMNS: tuple[str, ...] = (
    "isic_id", "target", "patient_id", "age_approx", "sex", "anatom_site_general",
    "clin_size_long_diam_mm", "image_type", "tbp_tile_type",
    "tbp_lv_A", "tbp_lv_Aext", "tbp_lv_B", "tbp_lv_Bext", "tbp_lv_C", "tbp_lv_Cext",
    "tbp_lv_H", "tbp_lv_Hext", "tbp_lv_L", "tbp_lv_Lext",
    "tbp_lv_areaMM2", "tbp_lv_area_perim_ratio", "tbp_lv_color_std_mean",
    "tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL", "tbp_lv_deltaLB", "tbp_lv_deltaLBnorm",
    "tbp_lv_eccentricity", "tbp_lv_location", "tbp_lv_location_simple", "tbp_lv_minorAxisMM",
    "tbp_lv_nevi_confidence", "tbp_lv_norm_border", "tbp_lv_norm_color", "tbp_lv_perimeterMM",
    "tbp_lv_radial_color_std_max", "tbp_lv_stdL", "tbp_lv_stdLExt", "tbp_lv_symm_2axis",
    "tbp_lv_symm_2axis_angle", "tbp_lv_x", "tbp_lv_y", "tbp_lv_z",
    "attribution", "copyright_license", "lesion_id",
    "iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4", "iddx_5",
    "mel_mitotic_index", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence",
)

# ISIC column -> registry name for the 16 attributes (the registry is the source of truth).
ATTRIBUTE_COLUMNS: dict[str, str] = {a.isic_column: a.name for a in ATTRIBUTES}

# Columns a data set must have to be read at all.
REQUIRED_COLUMNS: tuple[str, ...] = ("isic_id", "patient_id", *ATTRIBUTE_COLUMNS)

# anatom_site_general -> (tbp_lv_location_simple choices, tbp_lv_location choices), as the
# synthetic generator draws them; the sites themselves are the registry's vocabulary.
SITE_LOCATIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "anterior torso": (("Torso Front",), ("Torso Front Top Half", "Torso Front Bottom Half")),
    "head/neck": (("Head & Neck",), ("Head & Neck",)),
    "lower extremity": (("Left Leg", "Right Leg"),
                        ("Left Leg - Upper", "Left Leg - Lower", "Right Leg - Upper", "Right Leg - Lower")),
    "posterior torso": (("Torso Back",),
                        ("Torso Back Top Third", "Torso Back Middle Third", "Torso Back Bottom Third")),
    "upper extremity": (("Left Arm", "Right Arm"),
                        ("Left Arm - Upper", "Left Arm - Lower", "Right Arm - Upper", "Right Arm - Lower")),
}
