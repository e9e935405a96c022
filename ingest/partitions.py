"""Deterministic partitions of the reader's record stream.

A partition is `size` consecutive rows in reader order (good records and rejected rows alike).
Its id is its index plus a hash of the row keys it holds, so a rerun over the same data and
partition size finds the same partitions and can skip the ones the ledger says are committed,
while a partition whose rows changed gets a new id and is ingested again (an overwrite: point
ids are uuid5 of isic_id).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from dermground.platform.records import LesionRecord, RejectedRecord

DEFAULT_PARTITION_SIZE = 256


def ids_hash(isic_ids: Sequence[str]) -> str:
    """sha256 (hex, 32 chars) of an ordered list of isic_ids: what the ledger records per partition."""
    digest = hashlib.sha256()
    for isic_id in isic_ids:
        digest.update(isic_id.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class Partition:
    """`size` consecutive rows of the stream: the records to embed and the rows already rejected."""

    index: int
    records: tuple[LesionRecord, ...]
    rejected: tuple[RejectedRecord, ...]

    @property
    def row_keys(self) -> tuple[str, ...]:
        # Rejected rows count too (marked), so fixing a bad row changes the partition's id.
        return tuple(r.isic_id for r in self.records) + tuple(f"!{r.isic_id}:{r.field}" for r in self.rejected)

    @property
    def partition_id(self) -> str:
        return f"p{self.index:06d}-{ids_hash(self.row_keys)[:16]}"

    def __len__(self) -> int:
        return len(self.records) + len(self.rejected)


def partition_records(stream: Iterable[LesionRecord | RejectedRecord], size: int = DEFAULT_PARTITION_SIZE,
                      ) -> Iterator[Partition]:
    """Group the reader's stream into partitions of `size` rows, in order (the last may be smaller)."""
    if size < 1:
        raise ValueError(f"partition size must be at least 1, got {size}")
    records: list[LesionRecord] = []
    rejected: list[RejectedRecord] = []
    index = 0
    for item in stream:
        if isinstance(item, RejectedRecord):
            rejected.append(item)
        else:
            records.append(item)
        if len(records) + len(rejected) == size:
            yield Partition(index, tuple(records), tuple(rejected))
            index += 1
            records, rejected = [], []
    if records or rejected:
        yield Partition(index, tuple(records), tuple(rejected))
