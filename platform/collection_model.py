"""The model a collection's version was built with, found from the versions' records (for the API).

Each version records the LoRA adapter its ingest used (VersionMeta.adapter). When a running API
follows a switch to a version built with another adapter, its loaded model's fingerprint no longer
matches the collection's; `model_settings_for` finds, among the adapters the collection's versions
record (and no adapter), the one that gives the wanted fingerprint with the served base model.
"""

from __future__ import annotations

from pathlib import Path

from dermground.platform.settings import Settings


def model_settings_for(settings: Settings, wanted: str) -> Settings | None:
    """`settings` with the adapter whose model has fingerprint `wanted`, or None when no version records one."""
    from dermground.platform.model.fingerprint import fingerprint
    from dermground.platform.store import open_collections

    candidates: list[str | None] = []
    with open_collections(settings) as collections:
        for version in reversed(collections.versions(settings.collection)):  # the newest first
            adapter = collections.read_meta(settings.collection, version).adapter
            if adapter not in candidates:
                candidates.append(adapter)
    if None not in candidates:
        candidates.append(None)
    for adapter in candidates:
        if adapter is not None and not Path(adapter).is_dir():
            continue  # moved or deleted since the ingest
        if fingerprint(settings.base_model_dir, adapter) == wanted:
            return settings.model_copy(update={"adapter_dir": Path(adapter) if adapter is not None else None})
    return None


__all__ = ["model_settings_for"]
