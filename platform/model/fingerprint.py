"""A stable identity for a set of vectors: backbone files + adapter files + prompt version.

Computed from the files on disk, not from the loaded model, so the same checkpoint gives the same
fingerprint on any device and dtype. Ingest stamps every vector set with it and refuses to mix.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from dermground.platform.model.prompts import PROMPT_VERSION

# Files whose bytes define what the backbone computes (weights, architecture, tokenisation, pixels).
_BACKBONE_PATTERNS = ("config.json", "*.safetensors", "pytorch_model*.bin", "tokenizer.json",
                      "preprocessor_config.json", "processor_config.json")
_ADAPTER_PATTERNS = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
# Without tokenizer.json, transformers builds the tokenizer from these (checkpoint_check accepts
# such a folder). Only then are they part of the identity, so the fingerprints of folders that
# have tokenizer.json (every hub checkpoint, and every collection built so far) stay as they were.
_SLOW_TOKENIZER_PATTERNS = ("vocab.json", "merges.txt", "tokenizer_config.json")


def fingerprint(model_dir: str | Path, adapter_dir: str | Path | None = None,
                prompt_version: str = PROMPT_VERSION) -> str:
    """Hex digest (16 chars) of the backbone's files, the adapter's files (or none) and the prompt version."""
    folder = Path(model_dir)
    patterns = _BACKBONE_PATTERNS
    if not (folder / "tokenizer.json").is_file():
        patterns += _SLOW_TOKENIZER_PATTERNS
    identity = {
        "backbone": files_digest(folder, patterns),
        "adapter": None if adapter_dir is None else files_digest(Path(adapter_dir), _ADAPTER_PATTERNS),
        "prompt_version": prompt_version,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def files_digest(folder: Path, patterns: tuple[str, ...]) -> str:
    """sha256 over (name, content hash) of the files in `folder` matching `patterns`."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    for path in files:
        stat = path.stat()
        digest.update(path.name.encode() + b"\0" + _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns).encode())
    return digest.hexdigest()


@lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the cache key so a rewritten file is hashed again; a 7B
    # checkpoint (~15 GB) is hashed once per process.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()
